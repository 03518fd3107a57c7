# On a fresh machine, in order: make demo (offline), make preflight, make run, make test (README "Quick start").
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SNAKEMAKE_ARGS ?= --cores 8 --resources gpu=2

.PHONY: help run test test-data lint format bench gpu-check bootstrap wheelhouse preflight demo demo-run

# The first target: plain `make` lists the others (tests/test_commands.py runs each as listed here).
help:
	@echo "make demo        the whole workflow offline on a synthetic CSV and a tiny GPT-2 (a few minutes)"
	@echo "make preflight   speed, memory, ETA and fp32 parity on a few windows (CONFIG=my.yaml for another config)"
	@echo "make run         snakemake \$$SNAKEMAKE_ARGS ($(SNAKEMAKE_ARGS)) on config/config.yaml"
	@echo "make test        ruff, snakemake --lint, snakefmt --check and pytest (TEST_WORKERS=2, PYTEST_ARGS=...)"
	@echo "make test-data   fetch the data the tests read into \$$TIMEKD_TEST_DATA (default ~/.cache/timekd-embed/test-data)"
	@echo "make lint        ruff, snakemake --lint, snakefmt --check"
	@echo "make format      snakefmt on the Snakemake files"
	@echo "make bench       speed and memory on this machine into docs/benchmarks.md (BENCH_ARGS=...)"
	@echo "make gpu-check   every GPU check and figure on this machine, offline, into results/gpu-check/ (README)"
	@echo "make bootstrap   .venv with the pinned packages (every target does it first; WHEELHOUSE=, SITE_TORCH=1)"
	@echo "make wheelhouse  every pin as wheels, for a machine without internet (README)"

# The extras of pyproject.toml that bootstrap installs and make wheelhouse downloads.
EXTRAS ?= test,export,demo
# WHEELHOUSE=<dir>: install from those wheels alone (pip --no-index; see make wheelhouse). SITE_TORCH=1:
# use the torch this Python already has (a venv with --system-site-packages; a site's CUDA build, e.g.
# after `module load pytorch`) and install every other pin. The venv remembers both, so that a later
# `make run` neither reaches for an index nor swaps the site's torch for the pin.
WHEELHOUSE ?= $(shell cat $(VENV)/.wheelhouse 2>/dev/null)
SITE_TORCH ?= $(shell cat $(VENV)/.site-torch 2>/dev/null)
PIP_INSTALL = $(BIN)/python -m pip install --quiet $(if $(WHEELHOUSE),--no-index --find-links $(abspath $(WHEELHOUSE)))

bootstrap: $(VENV)/.installed
	@test -z "$(SITE_TORCH)" -o -f $(VENV)/.site-torch || { echo "SITE_TORCH=1: $(VENV) was made with the \
	pinned torch; remove it (rm -rf $(VENV)) and run this again." >&2; exit 1; }

# Reinstall whenever the pins change.
$(VENV)/.installed: pyproject.toml
ifeq ($(SITE_TORCH),)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.$(if $(EXTRAS),[$(EXTRAS)])'
else
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python tools/pins.py site-torch
	$(PIP_INSTALL) --upgrade pip
	$(BIN)/python tools/pins.py requirements --without-torch --extras '$(EXTRAS)' > $(VENV)/requirements.txt
	$(PIP_INSTALL) -r $(VENV)/requirements.txt
	$(PIP_INSTALL) --no-deps -e .
	echo 1 > $(VENV)/.site-torch
	@$(BIN)/python tools/pins.py site-torch
endif
	echo '$(if $(WHEELHOUSE),$(abspath $(WHEELHOUSE)))' > $(VENV)/.wheelhouse
	touch $@

# On a machine with network, for one without (README "On a GPU node without internet"): every pin
# of EXTRAS and all they need, as wheels in WHEELHOUSE (default wheelhouse/) for the node's
# PYTHON_VERSION (default: this Python's) and PLATFORM (default: x86_64 Linux with glibc 2.28 or
# newer; the older manylinux tags are added). Source-only pure-Python packages are built here.
# torch comes from TORCH_INDEX when set (e.g. https://download.pytorch.org/whl/cu128 or .../cpu),
# else from pip's index (on Linux a CUDA build: several GB); SITE_TORCH=1 leaves torch out.
PYTHON_VERSION ?= $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PLATFORM ?= manylinux_2_28_x86_64
TORCH_INDEX ?=
wheelhouse:
	$(PYTHON) tools/pins.py wheelhouse --dest $(or $(WHEELHOUSE),wheelhouse) --extras '$(EXTRAS)' \
	  --python-version $(PYTHON_VERSION) --platform $(PLATFORM) $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX)) \
	  $(if $(SITE_TORCH),--without-torch)

# Before `make run`: speed, memory, ETA and fp32 parity on a few windows per horizon, on this
# machine's GPUs (README "Quick start"); results/<name>/preflight.{json,md}. CONFIG=my.yaml for another.
CONFIG ?= config/config.yaml
# The target before --configfile: --configfile takes every word after it (a target too) as a file.
# --keep-going: both downloads run, so that an offline first run names both files to fetch.
preflight: bootstrap
	$(BIN)/snakemake --cores 1 --keep-going fetch --configfile $(CONFIG)
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
	@echo "Demo finished. Look at, under $(abspath $(DEMO_DIR)):"
	@echo "  report.html                                the report: open it in a browser"
	@echo "  results/demo/embeddings/<P>/<split>.safetensors   the embeddings (P = 24, 48; train, val)"
	@echo "  results/demo/validation/                   shapes.json, parity_<P>.json, summary.html"
	@echo "  results/demo/MANIFEST.json                 every artifact's sha256: timekd-embed verify results/demo"

# The data the tests read (tests/fetch_data.py): nothing to do when ../shared/data lies beside the
# clone, else fetched once into $TIMEKD_TEST_DATA (default ~/.cache/timekd-embed/test-data).
test-data: bootstrap
	$(BIN)/python tests/fetch_data.py

# pytest-xdist workers, a test module at a time (tests/conftest.py); TEST_WORKERS=0 runs in one process.
# PYTEST_ARGS: pytest's own arguments, e.g. PYTEST_ARGS="tests/test_windows.py -k sha256" for some tests.
# The data is fetched first if it can be; offline, the tests that need it skip (one line says how to get it).
TEST_WORKERS ?= 2
PYTEST_ARGS ?=
test: bootstrap lint
	-$(BIN)/python tests/fetch_data.py
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint --configfile tests/data/lint-config.yaml
	$(BIN)/snakefmt --check Snakefile workflow/rules

format: bootstrap
	$(BIN)/snakefmt Snakefile workflow/rules

# Speed and memory on this machine, written to docs/benchmarks.md and .json (see that file);
# benchmarks/run.py runs from the repository root, with the package installed by bootstrap.
# On a GPU: make bench BENCH_ARGS="--device cuda --precision fp16". One section into an earlier run's report:
# BENCH_ARGS="--only families" (the teacher families; --family-layers, --family-windows bound its CPU time).
BENCH_ARGS ?=
bench: bootstrap
	$(BIN)/python -m benchmarks.run --out docs/benchmarks.md $(BENCH_ARGS)

# Every GPU path on this machine in one command (README "GPU check"), offline: preflight's GPU checks
# and the benchmark's GPU sections, fp16 and bf16, on a GPT-2-small with random weights; one report,
# $(GPU_CHECK_DIR)/gpu-check.md and .json. Without CUDA: small sizes, the GPU checks "not run".
GPU_CHECK_DIR ?= results/gpu-check
gpu-check: bootstrap
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.gpu_check --out $(GPU_CHECK_DIR)
