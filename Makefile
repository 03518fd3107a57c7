# On a fresh machine, in order: make demo (offline), make preflight, make run, make test (README "Quick start").
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SNAKEMAKE_ARGS ?= --cores 8 --resources gpu=2

.PHONY: run test lint format bench bootstrap preflight demo demo-run

bootstrap: $(VENV)/.installed

# Reinstall whenever the pins change.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,export,demo]'
	touch $@

# Before `make run`: speed, memory, ETA and fp32 parity on a few windows per horizon, on this
# machine's GPUs (README "Quick start"); results/<name>/preflight.{json,md}. CONFIG=my.yaml for another.
CONFIG ?= config/config.yaml
preflight: bootstrap
	$(BIN)/snakemake --cores 1 --configfile $(CONFIG) fetch
	$(BIN)/timekd-embed preflight --configfile $(CONFIG)

run: bootstrap
	$(BIN)/snakemake $(SNAKEMAKE_ARGS)

# The whole workflow offline on .test/config.yaml (a synthetic CSV, a tiny random GPT-2 built by a
# rule, the real tokenizer): windows, two horizons, bf16 with its fp32 parity, the report, the manifest.
# DEMO_DIR: the working directory (results/ and resources/ go there; it needs .test/data/demo.csv).
DEMO_DIR ?= .
DEMO_ARGS ?= --cores 2 --resources gpu=1
DEMO_SNAKEMAKE = HF_HUB_OFFLINE=1 $(BIN)/snakemake -s $(CURDIR)/Snakefile -d $(DEMO_DIR) --configfile $(CURDIR)/.test/config.yaml

demo: bootstrap
	$(MAKE) demo-run

demo-run:
	$(DEMO_SNAKEMAKE) $(DEMO_ARGS)
	$(DEMO_SNAKEMAKE) --report report.html
	@echo
	@echo "Demo finished. Look at, under $(DEMO_DIR):"
	@echo "  report.html                                the report: open it in a browser"
	@echo "  results/demo/embeddings/<P>/<split>.safetensors   the embeddings (P = 24, 48; train, val)"
	@echo "  results/demo/validation/                   shapes.json, parity_<P>.json, summary.html"
	@echo "  results/demo/MANIFEST.json                 every artifact's sha256: timekd-embed verify results/demo"

# pytest-xdist workers, a test module at a time (tests/conftest.py); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: bootstrap lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint --configfile tests/data/lint-config.yaml
	$(BIN)/snakefmt --check Snakefile workflow/rules

format: bootstrap
	$(BIN)/snakefmt Snakefile workflow/rules

# Speed and memory on this machine, written to docs/benchmarks.md and .json (see that file);
# benchmarks/run.py runs from the repository root, with the package installed by bootstrap.
# On a GPU: make bench BENCH_ARGS="--device cuda --precision fp16"
BENCH_ARGS ?=
bench: bootstrap
	$(BIN)/python -m benchmarks.run --out docs/benchmarks.md $(BENCH_ARGS)
