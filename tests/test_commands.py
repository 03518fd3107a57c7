"""Every command the README, config/README.md and `make help` show, run as a user types it.

The make targets run in a fresh copy of the repository (what `git clone` gives: the tracked files, no
results/, no resources/), its `.venv` the one these tests run in, without the network: the hub's
address is one that never resolves (`.invalid`), so a download fails as it does offline. The
README's `snakemake` commands run in the same copy, with `-n` where a dry run proves what the
command does (a whole run is the shared runs' job, tests/runs.py). `test_every_documented_command_is_run`
keeps the list honest: a command added to the docs without a test here fails it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA, WEATHER_CSV, need
from helpers import BIN, not_ignored
from test_demo import TOKENIZER_SHA256
from test_resources import fill_cache
from timekd_embed.planning import visible_gpus
from timekd_embed.records import sha256_file
from timekd_embed.resources import KNOWN_DATASETS

NO_NETWORK = {"HF_ENDPOINT": "https://hub.invalid", "HF_HUB_OFFLINE": "0"}


def fresh_clone(folder: Path) -> Path:
    """The repository's files as a clone has them (modification times kept: `make` then finds the
    test environment's `.venv` up to date and does not reinstall it), with that `.venv` linked in."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    (folder / ".venv").symlink_to(Path(sys.executable).parents[1])
    (folder / ".cloned").write_text("\n".join(filter(None, listed)))   # for not_ignored: what was there
    return folder


def left_in_the_tree(clone: Path) -> list[str]:
    """What the commands wrote in the clone that .gitignore does not cover (the test's own files aside)."""
    return not_ignored(clone, set((clone / ".cloned").read_text().splitlines()) | {".cloned", ".venv", ".hub-cache/"})


# Not in a user's shell: the test run's own (MAKELEVEL and friends: `make test` runs these tests).
NOT_A_USERS = ("PYTHONPATH", "MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")


def make(clone: Path, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    # A user's shell: no PYTHONPATH of the test run, an empty hub cache, no network.
    environment = {key: value for key, value in os.environ.items() if key not in NOT_A_USERS}
    environment |= {"HF_HUB_CACHE": str(clone / ".hub-cache")} | NO_NETWORK | (env or {})
    return subprocess.run(["make", *args], cwd=clone, capture_output=True, text=True, timeout=timeout,
                          env=environment)


def snakemake_in(clone: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in NOT_A_USERS}
    environment |= {"HF_HUB_CACHE": str(clone / ".hub-cache")} | NO_NETWORK
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=clone, capture_output=True, text=True,
                          timeout=timeout, env=environment)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    return fresh_clone(tmp_path_factory.mktemp("clone"))


@pytest.fixture(scope="module")
def clone_with_weather(tmp_path_factory, weather_csv) -> Path:
    folder = fresh_clone(tmp_path_factory.mktemp("clone-weather"))
    (folder / "resources").mkdir(exist_ok=True)
    shutil.copy(weather_csv, folder / "resources" / "weather.csv")
    return folder


def help_targets(text: str) -> list[str]:
    return re.findall(r"^make (\S+)", text, flags=re.M)


def test_make_help_lists_every_target_and_make_alone_prints_it(clone):
    shown = make(clone)
    assert shown.returncode == 0, shown.stderr
    assert help_targets(shown.stdout) == ["demo", "preflight", "run", "test", "test-data", "lint", "format", "bench",
                                          "bootstrap", "wheelhouse"]
    declared = re.search(r"^\.PHONY: (.*)$", (clone / "Makefile").read_text(), flags=re.M).group(1).split()
    assert set(help_targets(shown.stdout)) <= set(declared)
    for target in help_targets(shown.stdout):      # each parses as make reads it
        dry = make(clone, "-n", target)
        assert dry.returncode == 0, (target, dry.stderr)
    # make format as typed: the committed Snakemake files are formatted already, so nothing changes
    before = {path: path.read_bytes() for path in [clone / "Snakefile", *(clone / "workflow" / "rules").glob("*.smk")]}
    formatted = make(clone, "format")
    assert formatted.returncode == 0, formatted.stderr
    assert {path: path.read_bytes() for path in before} == before


def test_make_preflight_without_network_ends_in_the_sentences_that_say_what_to_fetch(clone):
    began = time.monotonic()
    run = make(clone, "preflight")
    took = time.monotonic() - began
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "FileNotFoundError" not in output and "Traceback" not in output
    tail = run.stderr.rstrip().splitlines()[-4:]    # the failed jobs' sentences come last; then make's line
    assert tail[0] == "2 job(s) failed:", run.stderr[-3000:]
    data, model = sorted(tail[1:3])      # in the order they failed
    assert data.startswith("- get_data (log: results/weather/logs/get_data.log): resources/weather.csv not found")
    assert "download https://huggingface.co/datasets/thuml/Time-Series-Library/blob/main/weather/weather.csv" \
        in data and "cannot be reached" in data
    assert model.startswith("- get_model (log: results/weather/logs/get_model.log): model gpt2")
    assert "set model.name_or_path to it" in model
    assert tail[3].startswith("make: ***")
    # no retries against an unreachable hub (huggingface_hub alone retries for about 25 s)
    assert "Retrying" not in output and took < 120
    assert left_in_the_tree(clone) == []       # the failed jobs' logs under results/ are ignored by git


@pytest.mark.skipif(visible_gpus() > 0, reason="this machine has a GPU: make run would plan for it")
def test_make_run_on_the_cpu_stops_at_plan_time_with_the_estimate_and_the_ways_forward(clone_with_weather):
    run = make(clone_with_weather, "run")
    assert run.returncode != 0
    lines = run.stderr.rstrip().splitlines()
    assert lines[-1].startswith("make: ***")
    assert lines[-2].startswith("Error: the extraction on the CPU would take about ")
    assert "days" in lines[-2] and "allow_slow_cpu: true" in lines[-2] and "limit_windows=4" in lines[-2]
    assert "Estimate for all 209,523 windows" in lines[-3]        # weather: 5 horizons x train, val
    assert not (clone_with_weather / "results" / "weather" / "logs").exists()     # no job started


def test_readme_smoke_run_plans_on_the_cpu_with_its_estimate(clone_with_weather):
    # README: "A smoke run: `snakemake --cores 2 --config limit_windows=4`" (dry run: -n)
    plan = snakemake_in(clone_with_weather, "--cores", "2", "--config", "limit_windows=4", "-n")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "Estimate for all 40 windows (5 horizon(s), 21 variables" in plan.stderr
    assert "in 8 job(s): about 46 min" in plan.stderr            # as the README says
    assert "get_model" in plan.stdout and "extract" in plan.stdout


def test_a_target_after_config_is_refused_in_one_sentence_and_before_it_runs(clone_with_weather):
    # The trap config/README.md names: every word after --config (or --configfile) is one of its values.
    trapped = snakemake_in(clone_with_weather, "--cores", "8", "--config", "limit_windows=4", "export_timekd", "-n")
    assert trapped.returncode != 0 and "Unparsable value: 'export_timekd'" in trapped.stdout + trapped.stderr
    # README: snakemake --cores 8 export_timekd --config limit_windows=4 (dry run: -n)
    ordered = snakemake_in(clone_with_weather, "--cores", "8", "export_timekd", "--config", "limit_windows=4", "-n")
    assert ordered.returncode == 0, ordered.stderr[-3000:]
    assert "rule export_h5" in ordered.stdout


def test_the_example_configs_plan_as_the_readme_shows(clone_with_weather):
    # README "Other datasets": snakemake --cores 8 --resources gpu=2 --configfile config/examples/ETTh1.yaml
    plan = snakemake_in(clone_with_weather, "--cores", "8", "--resources", "gpu=2", "--configfile",
                        "config/examples/ETTh1.yaml", "--config", "allow_slow_cpu=true", "-n")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "rule get_data" in plan.stdout or "localrule get_data" in plan.stdout


def pytest_in(clone: Path, data: Path, *args: str) -> subprocess.CompletedProcess:
    """pytest in the clone as a user runs it, outside CI, with TIMEKD_TEST_DATA=data."""
    environment = {key: value for key, value in os.environ.items() if key not in (*NOT_A_USERS, "CI")}
    return subprocess.run([str(BIN / "python"), "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *args],
                          cwd=clone, capture_output=True, text=True, timeout=600,
                          env=environment | {"TIMEKD_TEST_DATA": str(data)})


def test_make_test_data_fetches_the_pinned_files_once_and_the_tests_read_them(clone, tmp_path):
    # The clone has no ../shared/data beside it, like a user's: the tests skip with one line saying how to get it,
    data = tmp_path / "test-data"
    absent = pytest_in(clone, data, "-rs", "tests/test_windows.py", "-k", "sha256 or irregularities")
    assert absent.returncode == 0 and "1 passed, 2 skipped" in absent.stdout, absent.stdout[-3000:]
    skips = [line for line in absent.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 1 and "run `make test-data` once" in skips[0] and str(data) in skips[0]
    # make test-data without the network: one sentence naming what to download and where to put it,
    offline = make(clone, "test-data", env={"TIMEKD_TEST_DATA": str(data)})
    assert offline.returncode != 0
    errors = [line for line in offline.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and f"{data}/weather/weather.csv not found" in errors[0] and "sha256" in errors[0]
    # and from the hub (here its cache, filled as huggingface_hub lays it out) every file, checked by sha256.
    shared = clone.parent / "hub"
    fill_cache(shared, "datasets--thuml--Time-Series-Library",
               {"weather/weather.csv": need(WEATHER_CSV), "ETT-small/ETTh1.csv": need(SHARED_DATA / "ETT-small" /
                                                                                   "ETTh1.csv"),
                "ETT-small/ETTm1.csv": need(SHARED_DATA / "ETT-small" / "ETTm1.csv")})
    fetched = make(clone, "test-data", env={"TIMEKD_TEST_DATA": str(data), "HF_HUB_CACHE": str(shared),
                                            "HF_HUB_OFFLINE": "1"})
    assert fetched.returncode == 0, fetched.stderr
    assert sha256_file(data / "weather" / "weather.csv") == KNOWN_DATASETS["weather"]["sha256"]
    assert sha256_file(data / "ETT-small" / "ETTm1.csv") == KNOWN_DATASETS["ETTm1"]["sha256"]
    assert sha256_file(data / "gpt2-tokenizer" / "vocab.json") == TOKENIZER_SHA256["vocab.json"]
    again = make(clone, "test-data", env={"TIMEKD_TEST_DATA": str(data)})       # once: nothing more to fetch
    assert again.returncode == 0 and "complete, nothing to fetch" in again.stdout
    present = pytest_in(clone, data, "tests/test_windows.py", "-k", "sha256 or irregularities")
    assert present.returncode == 0 and "3 passed" in present.stdout, present.stdout[-3000:]
