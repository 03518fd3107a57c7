# Two commands on a fresh machine: `make run` and `make test` (README "Quick start").
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SNAKEMAKE_ARGS ?= --cores 8 --resources gpu=2

.PHONY: run test lint format bench bootstrap preflight

bootstrap: $(VENV)/.installed

# Reinstall whenever the pins change.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,export]'
	touch $@

# Before `make run`: speed, memory, ETA and fp32 parity on a few windows per horizon, on this
# machine's GPUs (README "Quick start"); results/<name>/preflight.{json,md}. CONFIG=my.yaml for another.
CONFIG ?= config/config.yaml
preflight: bootstrap
	$(BIN)/timekd-embed preflight --configfile $(CONFIG)

run: bootstrap
	$(BIN)/snakemake $(SNAKEMAKE_ARGS)

test: bootstrap lint
	$(BIN)/python -m pytest

lint: bootstrap
	$(BIN)/snakemake --lint --configfile tests/data/lint-config.yaml
	$(BIN)/snakefmt --check Snakefile workflow/rules

format: bootstrap
	$(BIN)/snakefmt Snakefile workflow/rules

# Speed and memory on this machine, written to docs/benchmarks.md and .json (see that file).
# On a GPU: make bench BENCH_ARGS="--device cuda --precision fp16"
BENCH_ARGS ?=
bench: bootstrap
	$(BIN)/python -m timekd_embed.bench --out docs/benchmarks.md $(BENCH_ARGS)
