"""What reruns, with the real snakemake CLI: content decides, timestamps alone never do.

Each case runs in a copy of the project's files (new timestamps, like a fresh clone) that
received the results of the shared uninterrupted run (tests/runs.py: real weather.csv, a tiny
random GPT-2 with the real tokenizer) as README "Copying results" says.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from conftest import ROOT, make_model_dir
from helpers import planned_jobs, snakemake_command, timekd_embed, weather_rows
from runs import MODEL, uninterrupted_run

# RUN_CONFIG's jobs: two horizons, two ranges each; fp32 runs have no parity job.
EVERY_JOB = {"windows": 1, "sca": 1, "extract": 4, "gather": 2, "validate": 1}


def fresh_copy(target: Path) -> Path:
    """The project's files (tracked and not ignored) copied without their times: a fresh clone."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / name)
    return target


def receive(run: Path, project: Path, *folders: str) -> None:
    """README "Copying results": `folders` of `run` and its .snakemake/metadata, times kept (cp -a)."""
    for folder in (*folders, ".snakemake/metadata"):
        (project / folder).mkdir(parents=True, exist_ok=True)    # a clone has results/ and resources/ already
        subprocess.run(["cp", "-a", f"{run / folder}/.", str(project / folder)], check=True)


def snakemake(project: Path, *args: str) -> subprocess.CompletedProcess:
    """The plain command in `project`: its own Snakefile, so its own profiles/default applies."""
    return snakemake_command([*args, "-d", str(project), "--configfile", str(project / "config.yaml"),
                              "--cores", "2", "--resources", "gpu=2"], snakefile=project / "Snakefile")


def planned(project: Path) -> dict[str, int]:
    """Jobs `snakemake -n` plans, per rule ({} for "Nothing to be done"); the last two rules left out."""
    result = snakemake(project, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    return planned_jobs(result)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir, weather_csv):
    """A fresh copy that received the finished uninterrupted run: its results, its resources (all of
    weather.csv, 7.2 MB: above the 1 MB up to which Snakemake compares inputs by checksum itself,
    and the model folder) and its config."""
    run = uninterrupted_run(tmp_path_factory, tiny_model_dir, weather_csv)
    base = tmp_path_factory.mktemp("reruns")
    project = fresh_copy(base / "a")
    receive(run, project, "results", "resources")
    shutil.copy(run / "config.yaml", project / "config.yaml")
    assert planned(project) == {}
    return base, project, project / MODEL


def test_touching_the_csv_and_the_model_plans_nothing(finished):
    _, project, model = finished
    for path in [project / "resources" / "weather.csv", *model.iterdir()]:
        path.touch()                                     # same bytes, newer than every output
    assert planned(project) == {}


def test_a_comment_in_a_workflow_script_plans_nothing(finished):
    _, project, _ = finished
    for script in ("extract.py", "parity.py", "sca.py", "windows.py", "gather.py", "validate.py"):
        path = project / "workflow" / "scripts" / script
        path.write_text(path.read_text() + "# a comment\n")
    assert planned(project) == {}


def test_a_fresh_clone_that_receives_the_results_plans_nothing(finished):
    base, project, _ = finished
    clone = fresh_copy(base / "b")                       # every file of the workflow newer than the results
    shutil.copy(project / "config.yaml", clone / "config.yaml")
    receive(project, clone, "results/weather", MODEL)    # the model folder goes along (README)
    assert planned(clone) == {}                          # without the CSV: the windows files stand in
    shutil.copyfile(project / "resources" / "weather.csv", clone / "resources" / "weather.csv")  # new time
    assert planned(clone) == {}


def test_a_changed_csv_plans_everything(finished):
    _, project, _ = finished
    csv = project / "resources" / "weather.csv"
    original = csv.read_bytes()
    lines = original.split(b"\r\n")
    fields = lines[5].split(b",")
    fields[1] = b"999.99"                                # p (mbar) of data row 5, inside window 0
    lines[5] = b",".join(fields)
    csv.write_bytes(b"\r\n".join(lines))
    try:
        assert planned(project) == EVERY_JOB
    finally:
        csv.write_bytes(original)
    assert planned(project) == {}


def test_other_weights_in_the_model_folder_plan_the_extraction_onward(finished):
    base, project, model = finished
    weights = model / "model.safetensors"
    original = weights.read_bytes()
    other = make_model_dir(base / "other-model", seed=1)  # same shape, other values
    shutil.copyfile(other / "model.safetensors", weights)
    try:
        assert planned(project) == {"extract": 4, "gather": 2, "validate": 1}
    finally:
        weights.write_bytes(original)
    assert planned(project) == {}


def test_another_width_plans_the_sca_too(finished):
    base, project, model = finished
    config = yaml.safe_load((project / "config.yaml").read_text())
    wider = make_model_dir(base / "wider-model", n_embd=128)
    (project / "config.yaml").write_text(yaml.safe_dump(config | {"model": {"name_or_path": str(wider)}}))
    try:
        assert planned(project) == {"sca": 1, "extract": 4, "gather": 2, "validate": 1}
    finally:
        (project / "config.yaml").write_text(yaml.safe_dump(config))


def test_a_package_version_bump_plans_the_extraction(finished):
    _, project, _ = finished
    init = project / "workflow" / "timekd_embed" / "__init__.py"
    original = init.read_text()
    version = original.split('__version__ = "')[1].split('"')[0]
    init.write_text(original.replace(f'__version__ = "{version}"', '__version__ = "99.0.0"'))
    try:
        # The windows and the SCA are the package's output too: all of it is recomputed.
        assert planned(project) == EVERY_JOB
    finally:
        init.write_text(original)
    assert planned(project) == {}


def test_a_same_size_csv_with_its_timestamp_kept_plans_everything_and_verify_advice_fixes_it(finished):
    """The issue's case: weather.csv replaced by another file of the same size with its timestamp kept
    (`touch -r`) planned "Nothing to be done", and so did verify's advice, "rerun the workflow"."""
    base, project, _ = finished
    copy = fresh_copy(base / "same-size")
    receive(project, copy, "results", "resources")
    shutil.copy(project / "config.yaml", copy / "config.yaml")
    csv = copy / "resources" / "weather.csv"
    # The dry run that fills the cache, more than 2 s after the copy (README: an entry hashed within 2 s of the
    # file's last change is not trusted): its entry is trusted, as a dry run long after a download is.
    time.sleep(max(0.0, (csv.stat().st_ctime_ns - time.time_ns()) / 1e9 + 2.1))
    assert planned(copy) == {}
    original = csv.read_bytes()
    lines = original.split(b"\r\n")
    fields = lines[5].split(b",")
    fields[1] = fields[1][:-1] + (b"1" if fields[1][-1:] != b"1" else b"2")  # p (mbar) of row 5: one digit
    lines[5] = b",".join(fields)
    subprocess.run(["cp", "-p", str(csv), str(base / "reference.csv")], check=True)
    csv.write_bytes(b"\r\n".join(lines))
    subprocess.run(["touch", "-r", str(base / "reference.csv"), str(csv)], check=True)
    assert csv.stat().st_size == len(original) and csv.read_bytes() != original
    assert csv.stat().st_mtime_ns == (base / "reference.csv").stat().st_mtime_ns
    assert planned(copy) == EVERY_JOB

    stale = timekd_embed("verify", "results/weather", cwd=copy)
    assert stale.returncode == 1 and "the input changed since the run: rerun the workflow" in stale.stderr
    rerun = snakemake(copy)                              # the advice, followed
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    fixed = timekd_embed("verify", "results/weather", cwd=copy)
    assert fixed.returncode == 0, fixed.stderr


def test_a_damaged_sha256_cache_is_a_missing_one_with_one_line(finished):
    """The issue's case: .snakemake/timekd-embed/sha256.json holding [] stopped every command, -n too,
    with an AttributeError in common.smk."""
    _, project, _ = finished
    cache = project / ".snakemake" / "timekd-embed" / "sha256.json"
    cache.write_text("[]")
    result = snakemake(project, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned_jobs(result) == {}
    said = [line for line in (result.stdout + result.stderr).splitlines() if "sha256.json" in line]
    assert said == [".snakemake/timekd-embed/sha256.json: it does not hold path -> {size, times, sha256} entries; "
                    "ignoring it and hashing the files again (it is only a cache)."]
    assert isinstance(json.loads(cache.read_text()), dict)


def test_a_csv_that_grew_needs_one_rerun(tmp_path, weather_csv, tiny_model_dir):
    """Issue case: 1,500 rows, then 100 more. Split rule (70/10/20 %, val starts seq_len rows early):
    1,500 rows: train int(1050.0) = 1050, test int(300.0) = 300, val 150 -> 150 + 96 = 246 rows,
    246 - 96 - 24 + 1 = 127 windows at P = 24; 1,600 rows: train 1120, test 320, val 160 ->
    256 rows, 137 windows. With ranges of 128 windows: one range, then a second one, 128-137."""
    project = fresh_copy(tmp_path / "project")
    csv = project / "resources" / "weather.csv"
    weather_rows(csv, 1500, columns=[0, 21])           # date, OT: one variable keeps it quick
    config = {"dataset": {"name": "weather", "csv": "resources/weather.csv"}, "pred_lens": [24], "splits": ["val"],
              "model": {"name_or_path": str(tiny_model_dir)}, "precision": "fp32", "shard_windows": 128}
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    target = "results/weather/embeddings/24/val.safetensors"

    def windows_in_final_file() -> tuple[int, int, int]:
        with safe_open(str(project / target), "pt") as f:
            return tuple(f.get_slice("embeddings").get_shape())

    first = snakemake(project, target)
    assert first.returncode == 0, first.stderr[-3000:]
    assert windows_in_final_file() == (127, 1, 64)

    grown = weather_rows(tmp_path / "grown.csv", 1600, columns=[0, 21])
    shutil.copyfile(grown, csv)
    rerun = snakemake(project, target)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert windows_in_final_file() == (137, 1, 64)
    assert "start=128, stop=137" in rerun.stdout + rerun.stderr   # the ranges come from the grown CSV


def test_the_plan_follows_the_csv_not_older_windows_files(tmp_path, weather_csv):
    """1,500 rows planned as 127 val windows at P = 24 (test_a_csv_that_grew_needs_one_rerun); windows files
    of another CSV beside it do not count while the CSV is there, and are read from their footers when it is not."""
    from timekd_embed.shards import planned_windows, split_rows
    from timekd_embed.table import load_csv
    from timekd_embed.windows import write_windows

    old = weather_rows(tmp_path / "old.csv", 1600, columns=[0, 21])
    windows = {s: str(tmp_path / f"{s}.parquet") for s in ("train", "val", "test")}
    write_windows(load_csv(old, target="OT", layout="custom"), "custom", 96, [24], windows)
    csv = weather_rows(tmp_path / "weather.csv", 1500, columns=[0, 21])
    assert planned_windows(split_rows(csv, windows, 96, "custom")["val"], 96, 24, None) == 127
    csv.unlink()
    assert planned_windows(split_rows(csv, windows, 96, "custom")["val"], 96, 24, None) == 137


def test_current_inputs_name_what_the_config_points_at_now(tmp_path, tiny_model_dir):
    """The one answer to "did the inputs change", for the rules' params and for verify alike."""
    from timekd_embed.fingerprint import Sha256Cache, current_inputs
    from timekd_embed.model_files import model_source

    csv = weather_rows(tmp_path / "weather.csv", 200)
    source = model_source({"name_or_path": str(tiny_model_dir), "revision": None})
    found = current_inputs(csv, source, Sha256Cache(tmp_path / "cache.json"))
    assert found.csv_sha256 == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert found.weights_sha256 == hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert found.model_files == {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                                 for path in tiny_model_dir.iterdir()}
    assert found.notes == () and found.damaged == ()
    hub = current_inputs(tmp_path / "absent.csv", model_source({"name_or_path": "gpt2", "revision": None}, tmp_path),
                         Sha256Cache(None), tmp_path)
    assert hub.csv_sha256 is None and hub.weights_sha256 is None and hub.model_files == {}  # nothing there yet
    assert len(hub.notes) == 2 and hub.damaged == ()


def dry_run_says_nothing_to_do(project: Path) -> bool:
    result = snakemake(project, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    return "Nothing to be done" in result.stdout + result.stderr


def test_moving_the_csv_and_the_model_folder_plans_nothing(finished):
    """The issue's case: `mv data.csv inputs/weather.csv` with dataset.csv updated reran every job ("Set of
    input files has changed"), and so did moving the model folder: hours of work for a `mv`."""
    base, project, model = finished
    config_file = project / "config.yaml"
    original = config_file.read_text()
    config = yaml.safe_load(original)
    csv, moved_csv = project / "resources" / "weather.csv", project / "inputs" / "weather.csv"
    moved_model = base / "elsewhere" / "gpt2"
    moved_csv.parent.mkdir(exist_ok=True)
    moved_model.parent.mkdir(exist_ok=True)
    csv.rename(moved_csv)
    model.rename(moved_model)
    config_file.write_text(yaml.safe_dump(config | {"dataset": config["dataset"] | {"csv": "inputs/weather.csv"},
                                                    "model": config["model"] | {"name_or_path": str(moved_model)}}))
    try:
        assert dry_run_says_nothing_to_do(project)       # not even the manifest
        # What the moved files hold still decides: one digit of the CSV, then the model's weights.
        data = moved_csv.read_bytes()
        lines = data.split(b"\r\n")
        lines[5] = b",".join([lines[5].split(b",")[0], b"999.99", *lines[5].split(b",")[2:]])  # p (mbar), row 5
        moved_csv.write_bytes(b"\r\n".join(lines))
        assert planned(project) == EVERY_JOB
        moved_csv.write_bytes(data)
        weights = moved_model / "model.safetensors"
        original_weights = weights.read_bytes()
        shutil.copyfile(make_model_dir(base / "other-weights", seed=1) / "model.safetensors", weights)
        assert planned(project) == {"extract": 4, "gather": 2, "validate": 1}
        weights.write_bytes(original_weights)
    finally:
        moved_csv.rename(csv)
        moved_model.rename(model)
        config_file.write_text(original)
    assert planned(project) == {}


def test_dropping_a_horizon_reruns_no_extraction_and_verify_says_what_is_left_over(finished):
    """The issue's case: pred_lens [24, 48] -> [24] re-extracted 24 into byte-identical files, and the 48 files
    then made verify fail for ever ("not in the manifest; remove it or rerun": rerunning never helped)."""
    base, project, _ = finished
    copy = fresh_copy(base / "dropped")
    receive(project, copy, "results", "resources")
    config = yaml.safe_load((project / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump(config | {"pred_lens": [24]}))
    results = copy / "results" / "weather"
    kept = results / "embeddings" / "24" / "train.safetensors"
    before = (kept.read_bytes(), kept.stat().st_mtime_ns)
    assert planned(copy) == {"validate": 1}              # the report's pages list the horizons
    run = snakemake(copy)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (kept.read_bytes(), kept.stat().st_mtime_ns) == before  # not rerun at all

    verified = timekd_embed("verify", "results/weather", cwd=copy)
    assert verified.returncode == 0, verified.stderr
    notes = [line for line in verified.stderr.splitlines() if "left over" in line]
    assert len(notes) == 1 and "embeddings/48/train.safetensors" in notes[0] and "3 file(s)" in notes[0]
    assert "`timekd-embed clean results/weather` removes them" in notes[0]
    (results / "notes.txt").write_text("mine")           # the user's own file: never removed
    cleaned = timekd_embed("clean", "results/weather", cwd=copy)
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (results / "embeddings" / "48").exists()
    assert not (results / "validation" / "report" / "48_train.html").exists()
    assert (results / "notes.txt").read_text() == "mine" and (kept.read_bytes(), kept.stat().st_mtime_ns) == before
    (results / "notes.txt").unlink()
    again = timekd_embed("verify", "results/weather", cwd=copy)
    assert again.returncode == 0 and "left over" not in again.stderr, again.stderr

    # Adding it back runs its own jobs only.
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    assert planned(copy) == {"extract": 2, "gather": 1, "validate": 1}


def test_with_shared_jobs_dropping_a_horizon_reruns_nothing_and_adding_one_runs_only_its_own(tmp_path,
                                                                                           tiny_model_dir):
    """share_horizons (the default) computes every horizon of a window range in one job: the job's horizons
    were a param, so dropping one reran every range's job and rewrote the others' files; a new horizon in a
    finished run gets jobs of its own instead of the shared ones, which would compute the others again."""
    project = fresh_copy(tmp_path / "project")
    weather_rows(project / "resources" / "weather.csv", 1500, columns=[0, 21])  # date, OT: one variable
    config = {"dataset": {"name": "weather", "csv": "resources/weather.csv"}, "pred_lens": [24, 48],
              "splits": ["val"], "model": {"name_or_path": str(tiny_model_dir)}, "precision": "fp32",
              "limit_windows": 2, "shard_windows": 2}
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    first = snakemake(project)
    assert first.returncode == 0, first.stderr[-3000:]
    kept = project / "results" / "weather" / "embeddings" / "24" / "val.safetensors"
    before = (kept.read_bytes(), kept.stat().st_mtime_ns)

    (project / "config.yaml").write_text(yaml.safe_dump(config | {"pred_lens": [24]}))
    assert planned(project) == {"validate": 1}
    (project / "config.yaml").write_text(yaml.safe_dump(config | {"pred_lens": [24, 48, 96]}))
    plan = snakemake(project, "-n")
    assert planned_jobs(plan) == {"extract": 1, "gather": 1, "validate": 1}
    assert "wildcards: pred_len=96, split=val, start=0, stop=2" in plan.stdout
    assert (kept.read_bytes(), kept.stat().st_mtime_ns) == before
