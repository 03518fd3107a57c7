"""MANIFEST.json and `timekd-embed verify` on finished tiny runs; copied results stay up to date.

Two real runs of the same config in two working folders (tests/runs.py: real weather.csv, a tiny
GPT-2 folder copied into each, offline, fp32 on the CPU), one of them interrupted and resumed:
their artifacts must be byte-identical, and each verifies against the other's manifest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_model_dir
from helpers import snakemake, timekd_embed
from runs import MODEL, NAME, OFFLINE, resumed_run, uninterrupted_run
from timekd_embed.config import config_hash
from timekd_embed.errors import InputError
from timekd_embed.manifest import MANIFEST, build
from timekd_embed.verify import verify

# Every artifact of rule all, relative to results/<name>, with the rule that makes it: the
# same bytes for the same inputs, config and versions.
EXPECTED = {
    "windows/train.parquet": "windows", "windows/val.parquet": "windows", "windows/test.parquet": "windows",
    "sca.safetensors": "sca",
    "embeddings/24/train.safetensors": "gather", "embeddings/48/train.safetensors": "gather",
    # fp32: no parity job and no histogram (nothing to compare)
    "validation/shapes.json": "validate",
}
# The run records outside logs/ and benchmarks/: they hold wall times, speeds and host names.
RECORDS = {"embeddings/24/train.json": "gather", "embeddings/48/train.json": "gather",
           "validation/summary.html": "validate", "validation/report/24_train.html": "validate",
           "validation/report/48_train.html": "validate"}
# One log and one benchmark per job but the manifest's own (written while and after it is made).
JOBS = ["windows", "sca", "extract_24_train_0-2", "extract_24_train_2-3", "extract_48_train_0-2",
        "extract_48_train_2-3", "gather_24_train", "gather_48_train", "validate"]  # fp32: no parity job
LOGS_AND_BENCHMARKS = {f"logs/{job}.log" for job in JOBS} | {f"benchmarks/{job}.tsv" for job in JOBS}


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir, weather_csv) -> Path:
    return uninterrupted_run(tmp_path_factory, tiny_model_dir, weather_csv)


@pytest.fixture(scope="module")
def second_work(tmp_path_factory, tiny_model_dir, weather_csv) -> Path:
    """The same config once more: stopped by Ctrl-C and kill -9, then resumed (tests/test_faults.py)."""
    resumed = resumed_run(tmp_path_factory, tiny_model_dir, weather_csv)
    assert resumed["rerun"].returncode == 0, resumed["rerun"].stderr[-3000:]
    return resumed["work"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_cli(folder: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return timekd_embed("verify", str(folder), *args, cwd=cwd)


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error: ")]


def test_an_offline_run_with_a_local_model_lists_artifacts_and_run_records_apart(work):
    results = work / "results" / NAME
    manifest = json.loads((results / MANIFEST).read_text())
    assert {a["path"]: a["rule"] for a in manifest["artifacts"]} == EXPECTED
    assert {r["path"]: r["rule"] for r in manifest["run_records"]} == RECORDS | dict.fromkeys(LOGS_AND_BENCHMARKS)
    for entry in manifest["artifacts"] + manifest["run_records"]:
        path = results / entry["path"]
        assert entry["sha256"] == sha256(path) and entry["size"] == path.stat().st_size
    config = manifest["config"]
    # The documented hash: sha256 of the config as sorted JSON, its first 16 hex digits.
    assert manifest["config_hash"] == hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    # Only the keys that decide the artifacts: not the runtime ones (device, gpus_per_job, placement,
    # batch_tokens, export_root), not where the CSV or the model folder lies.
    assert set(config) == {"dataset", "seq_len", "pred_lens", "splits", "model", "precision", "fidelity", "seed",
                           "limit_windows", "shard_windows", "share_horizons", "parity"}
    assert "csv" not in config["dataset"] and config["limit_windows"] == 3 and config["precision"] == "fp32"
    assert manifest["inputs"] == {"csv": "resources/weather.csv", "model": MODEL}
    assert config["model"] == {"name": "local folder", "revision": None, "layers": None}
    assert config["pred_lens"] == [24, 48]
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["timekd-embed"] and manifest["versions"]["python"]


def test_verify_passes_on_a_fresh_run(work):
    result = verify_cli(work / "results" / NAME)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{work / 'results' / NAME}: all {len(EXPECTED)} artifacts match " \
                            f"{work / 'results' / NAME / MANIFEST}.\n"
    assert result.stderr == ""


def test_two_identical_fp32_runs_have_byte_identical_artifacts_and_verify_against_each_other(work, second_work,
                                                                                          tmp_path):
    """verify against the other run's MANIFEST.json used to fail on the stats and the report's timings."""
    first, second = work / "results" / NAME, second_work / "results" / NAME
    for relative in EXPECTED:  # embeddings, Parquet, SCA and shapes (fp32: no parity, no PNG): the same bytes
        assert sha256(first / relative) == sha256(second / relative), relative
    # The run records hold wall times: two runs never write the same stats file.
    assert json.loads((first / "embeddings/24/train.json").read_text())["wall_s"] \
        != json.loads((second / "embeddings/24/train.json").read_text())["wall_s"]

    # The case as filed: the other run's manifest in this run's folder.
    copy = tmp_path / "results" / NAME
    shutil.copytree(first, copy)
    shutil.copy(second / MANIFEST, copy / MANIFEST)
    result = verify_cli(copy)
    assert result.returncode == 0, result.stderr
    assert errors(result) == []
    assert result.stdout.startswith(f"{copy}: all {len(EXPECTED)} artifacts match {copy / MANIFEST}; ")
    notes = [line for line in result.stderr.splitlines() if "run record(s) differ" in line]
    assert len(notes) == 1 and "embeddings/24/train.json" in notes[0] and "validation/summary.html" in notes[0]
    assert "not a problem" in notes[0] and "in logs/" in notes[0] and "in benchmarks/" in notes[0]

    # The same with --manifest naming the other run's file where it lies.
    other = verify_cli(first, "--manifest", str(second / MANIFEST))
    assert other.returncode == 0 and errors(other) == [], other.stderr
    assert other.stdout.startswith(f"{first}: all {len(EXPECTED)} artifacts match {second / MANIFEST}; ")
    assert "embeddings/24/train.json" in other.stderr and "validation/summary.html" in other.stderr
    assert "was made with" not in other.stderr  # the same config and versions


def test_verify_against_another_manifest_names_its_other_config_and_versions(work, tmp_path):
    results = work / "results" / NAME
    manifest = json.loads((results / MANIFEST).read_text())
    manifest["versions"]["torch"] = "0.0.1"
    manifest["config"]["seed"] += 1
    manifest["config_hash"] = config_hash(manifest["config"])
    other = tmp_path / MANIFEST
    other.write_text(json.dumps(manifest))
    result = verify_cli(results, "--manifest", str(other))
    assert result.returncode == 0, result.stderr   # the artifacts decide: here they are the same bytes
    assert f"Note: {other} was made with another config: seed differ from {results / MANIFEST}." in result.stderr
    assert f"Note: {other} was made with other versions: torch {torch.__version__} here, 0.0.1 there." \
        in result.stderr


def test_a_changed_run_record_is_a_note_and_a_missing_one_a_problem(work, tmp_path):
    copy = tmp_path / NAME
    shutil.copytree(work / "results" / NAME, copy)
    stats = copy / "embeddings" / "24" / "train.json"
    stats.write_text(stats.read_text().replace('"host"', '"host_renamed"'))
    result = verify_cli(copy)
    assert result.returncode == 0 and errors(result) == [], result.stderr
    assert "1 run record(s) differ" in result.stderr and "embeddings/24/train.json" in result.stderr

    (copy / "validation" / "summary.html").unlink()
    (copy / "logs" / "windows.log").unlink()  # a log may be cleaned away: not a problem
    result = verify_cli(copy)
    assert result.returncode == 1
    assert errors(result) == [(f"Error: {copy / 'validation' / 'summary.html'}: missing (a run record of rule "
                               "validate); restore it or rerun the workflow.")]


def test_verify_names_every_changed_missing_and_unlisted_file(work, tmp_path):
    copy = tmp_path / NAME
    shutil.copytree(work / "results" / NAME, copy)
    embeddings = copy / "embeddings" / "24" / "train.safetensors"
    data = bytearray(embeddings.read_bytes())
    data[-1] ^= 1                                         # one flipped bit in the last float
    embeddings.write_bytes(bytes(data))
    (copy / "validation" / "shapes.json").unlink()
    (copy / "windows" / "extra.parquet").write_bytes(b"not from this run")
    (copy / "windows" / ".train.parquet.abc123.tmp").write_bytes(b"half")  # an interrupted write
    (copy / "logs" / "anything.log").write_text("a later job's log is no artifact\n")

    result = verify_cli(copy)
    assert result.returncode == 1
    found = errors(result)
    assert len(found) == 3, result.stderr
    assert any(str(embeddings) in e and "differ from the manifest" in e and "rule gather" in e for e in found)
    assert any(str(copy / "validation" / "shapes.json") in e and "missing" in e for e in found)
    assert any(str(copy / "windows" / "extra.parquet") in e and "not in the manifest" in e for e in found)
    assert "leftover of an interrupted write" in result.stderr and "Traceback" not in result.stderr
    assert "3 problem(s)" in result.stderr


def test_verify_reports_an_edited_manifest_and_a_missing_one(work, tmp_path):
    copy = tmp_path / NAME
    shutil.copytree(work / "results" / NAME, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["config"]["seed"] += 1                        # claims another config than the run had
    (copy / MANIFEST).write_text(json.dumps(manifest))
    verdict = verify(copy)
    assert verdict.artifacts == len(EXPECTED)
    assert len(verdict.problems) == 1 and "config_hash" in verdict.problems[0] and "edited" in verdict.problems[0]

    manifest["artifacts"][0]["path"] = "../../outside.txt"   # verify never reads outside the folder
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"artifacts entry 0 is not a relative path .* inside"):
        verify(copy)

    (copy / MANIFEST).unlink()
    with pytest.raises(InputError, match=r"MANIFEST.json does not exist; run the workflow to completion"):
        verify(copy)


def test_verify_names_embeddings_made_from_weights_or_an_input_that_changed_since(second_work, tmp_path):
    """Other weights written over the model folder's model.safetensors went unnoticed."""
    work = tmp_path / "work"
    shutil.copytree(second_work, work, symlinks=True)
    results = work / "results" / NAME
    embeddings = results / "embeddings" / "24" / "train.safetensors"
    assert verify_cli(results).returncode == 0

    weights = work / MODEL / "model.safetensors"
    recorded = sha256(weights)
    other = make_model_dir(tmp_path / "other-gpt2", seed=1)  # the same shapes, other values
    shutil.copy(other / "model.safetensors", weights)
    swapped = sha256(weights)
    assert swapped != recorded
    expected = [f"Error: {results / 'embeddings' / str(P) / 'train.safetensors'}: made from weights with sha256 "
                f"{recorded}, but {weights} now has sha256 {swapped}; the weights changed since the run: rerun the "
                "workflow, or restore the weights it was made from." for P in (24, 48)]
    result = verify_cli(results)
    assert result.returncode == 1 and errors(result) == expected, result.stderr
    # The same through the config as it is now, read as snakemake reads it in the working folder.
    result = verify_cli(Path("results") / NAME, "--configfile", "config.yaml", cwd=work)
    assert result.returncode == 1 and len(errors(result)) == 2, result.stderr
    assert f"made from weights with sha256 {recorded}, but {weights} now has sha256 {swapped}" in errors(result)[0]

    csv = work / "resources" / "weather.csv"
    shutil.copy(other / "model.safetensors", weights)
    recorded_csv = sha256(csv)
    with open(csv, "ab") as f:
        f.write(b"2021-01-01 00:10:00" + b",1" * 21 + b"\r\n")  # the CSV grew by a row
    result = verify_cli(results)
    assert result.returncode == 1
    assert f"Error: {embeddings}: made from input with sha256 {recorded_csv}, but {csv} now has sha256 " \
           f"{sha256(csv)}; the input changed since the run" in result.stderr


def test_copied_results_are_up_to_date_without_the_csv(work, tmp_path):
    """What rsync -a of results/ and .snakemake/metadata gives another machine (README)."""
    other = tmp_path / "elsewhere"
    shutil.copytree(work / "results", other / "results", copy_function=shutil.copy2)  # keeps mtimes
    shutil.copytree(work / ".snakemake" / "metadata", other / ".snakemake" / "metadata", copy_function=shutil.copy2)
    # The model comes along (README "Copying results"): its content decides whether the embeddings are current.
    shutil.copytree(work / MODEL, other / MODEL, copy_function=shutil.copy2)
    config = yaml.safe_load((work / "config.yaml").read_text())
    assert not (other / config["dataset"]["csv"]).exists()
    dry = snakemake(other, config, "-n", "--cores", "2")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr
    verdict = verify(other / "results" / NAME)
    assert verdict.problems == []
    # The CSV did not come along: said, not failed.
    assert any("resources/weather.csv (dataset.csv) is not on this machine" in n for n in verdict.notes)


def test_a_preflight_report_in_the_results_folder_is_no_problem(work, tmp_path):
    """`make preflight` writes results/<name>/preflight.{json,md} before (or after) a run: timings and
    host names, not from the run, so verify neither lists nor flags them."""
    copy = tmp_path / NAME
    shutil.copytree(work / "results" / NAME, copy)
    (copy / "preflight.json").write_text('{"passed": true}\n')
    (copy / "preflight.md").write_text("# Preflight\n")
    (copy / "windows" / "preflight.json").write_text("{}\n")      # elsewhere it is still unlisted
    result = verify_cli(copy)
    assert result.returncode == 1
    found = errors(result)
    assert len(found) == 1 and f"{copy / 'windows' / 'preflight.json'}: not in the manifest" in found[0], found
    assert "preflight.md" not in result.stderr and f"{copy / 'preflight.json'}:" not in result.stderr


def test_a_byte_flipped_in_the_finished_sca_stops_the_rerun_and_the_advice_restores_the_run(work, tmp_path):
    """The issue's case: one byte flipped in the middle of a finished sca.safetensors (its mtime changes);
    the rerun extracted every embedding from the damaged weights, exited 0, and the new manifest passed verify."""
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)              # times kept: nothing to do before the flip
    results = copy / "results" / NAME
    sca = results / "sca.safetensors"
    written, manifest = sca.read_bytes(), (results / MANIFEST).read_bytes()
    damaged = bytearray(written)
    damaged[len(damaged) // 2] ^= 0x01
    sca.write_bytes(bytes(damaged))
    advice = f"rerun the workflow with --forcerun results/{NAME}/sca.safetensors to write it again (and what was " \
             "made from it)."

    rerun = snakemake(copy, None, "--cores", "1", env=OFFLINE)
    assert rerun.returncode == 1 and "Traceback" not in rerun.stderr, rerun.stderr[-3000:]
    said = [line.split("ERROR timekd_embed: ", 1)[1] for line in rerun.stderr.splitlines()
            if "ERROR timekd_embed: " in line]
    assert said == [f"results/{NAME}/sca.safetensors: damaged: its sha256 is {sha256_of(bytes(damaged))}, not the "
                    f"{sha256_of(written)} recorded when it was written; {advice}"]
    assert (results / MANIFEST).read_bytes() == manifest    # nothing blessed
    found = verify_cli(Path("results") / NAME, cwd=copy)    # verify gives the same advice
    assert found.returncode == 1 and len(errors(found)) == 1 and errors(found)[0].endswith(
        f"the file changed after rule sca wrote it: {advice}"), found.stderr

    fixed = snakemake(copy, None, "--cores", "1", "--forcerun", f"results/{NAME}/sca.safetensors", env=OFFLINE)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert sca.read_bytes() == written                      # seeded: the same weights again
    assert verify_cli(results).returncode == 0
    against_the_first = verify_cli(results, "--manifest", str(work / "results" / NAME / MANIFEST))
    assert against_the_first.returncode == 0 and errors(against_the_first) == [], against_the_first.stderr


def test_a_missing_intermediate_artifact_is_made_again_by_the_advice_of_verify(work, tmp_path):
    """Deleting a file that only feeds up-to-date jobs (the SCA weights, a windows file) and rerunning plans
    "Nothing to be done": verify's advice names the command that writes it again."""
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    (copy / "results" / NAME / "windows" / "test.parquet").unlink()
    found = verify_cli(Path("results") / NAME, cwd=copy)
    assert errors(found) == [f"Error: results/{NAME}/windows/test.parquet: missing (made by rule windows); restore "
                             f"it, or rerun the workflow with --forcerun results/{NAME}/windows/test.parquet to write "
                             "it again (and what was made from it)."]
    plain = snakemake(copy, None, "-n", "--cores", "1")
    assert "Nothing to be done" in plain.stdout + plain.stderr   # why a plain rerun is not the advice
    advised = snakemake(copy, None, "-n", "--cores", "1", "--forcerun", f"results/{NAME}/windows/test.parquet")
    assert advised.returncode == 0 and "rule windows:" in advised.stdout, advised.stderr[-3000:]


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_manifest_lists_the_writers_records_and_refuses_a_file_that_differs_from_its_record(work, tmp_path):
    copy = tmp_path / NAME
    shutil.copytree(work / "results" / NAME, copy)
    config = yaml.safe_load((work / "config.yaml").read_text())
    from timekd_embed.config import validate_config

    config = validate_config(config)
    embeddings = copy / "embeddings" / "24" / "train.safetensors"
    record = copy / "embeddings" / "24" / ".train.safetensors.sha256"
    recorded = record.read_text().split()[0]
    listed = build(copy, {"gather": [str(embeddings)]}, config)
    assert [(entry["path"], entry["sha256"]) for entry in listed["artifacts"]] == [
        ("embeddings/24/train.safetensors", recorded)]
    data = bytearray(embeddings.read_bytes())
    data[-1] ^= 1                                           # one flipped bit in the last float
    embeddings.write_bytes(bytes(data))
    with pytest.raises(InputError) as caught:
        build(copy, {"gather": [str(embeddings)]}, config)
    assert str(caught.value) == (f"{embeddings}: damaged: its sha256 is {sha256_of(bytes(data))}, not the {recorded} "
                                 f"recorded when it was written; rerun the workflow with --forcerun {embeddings} to "
                                 "write it again (and what was made from it).")


def test_verify_lists_no_record_and_notes_a_record_whose_file_is_gone(work, tmp_path):
    copy = tmp_path / NAME
    shutil.copytree(work / "results" / NAME, copy)
    assert (copy / "windows" / ".train.parquet.sha256").is_file()          # beside every file a job wrote
    checked = subprocess.run("cd results/weather/windows && sha256sum -c .train.parquet.sha256", shell=True,
                             cwd=work, capture_output=True, text=True)      # as README shows it
    assert checked.returncode == 0 and checked.stdout == "train.parquet: OK\n", checked.stderr
    (copy / "windows" / ".extra.parquet.sha256").write_text(f"{'0' * 64}  extra.parquet\n")
    result = verify_cli(copy)
    assert result.returncode == 0, result.stderr
    mentioned = [line for line in result.stderr.splitlines() if ".sha256" in line]
    assert mentioned == [f"Note: {copy / 'windows' / '.extra.parquet.sha256'}: the sha256 record of a file that is "
                         "gone (a leftover of an interrupted or failed job), not an artifact; it can be deleted."]
def test_a_failed_attempts_log_is_no_run_record_and_a_later_success_lists_it(tmp_path):
    """Offline, get_data failed (its log ends in its one sentence); the CSV was then put in place by hand
    and the run finished: that log recorded no job of this run's outputs."""
    from timekd_embed.jobs import job
    from timekd_embed.manifest import build

    folder = tmp_path / "results" / NAME
    log = folder / "logs" / "get_data.log"
    log.parent.mkdir(parents=True)
    with pytest.raises(SystemExit), job(str(log)):
        raise InputError("resources/weather.csv not found and could not be downloaded; put it there.")
    (folder / "logs" / "windows.log").write_text("")
    config = {"dataset": {"name": NAME, "csv": "resources/weather.csv"}}
    listed = [entry["path"] for entry in build(folder, {}, config)["run_records"]]
    assert listed == ["logs/windows.log"]
    with log.open("a") as more:                        # a later attempt that downloaded it
        more.write("2026-01-01 00:00:00,000 INFO timekd_embed: wrote resources/weather.csv (sha256 34ee)\n")
    assert [entry["path"] for entry in build(folder, {}, config)["run_records"]] == ["logs/get_data.log",
                                                                                    "logs/windows.log"]


def test_verify_rechecks_every_shard_of_a_sharded_model(tmp_path):
    """One resolver for the model's files: verify compared the embeddings' weights_sha256 with model.safetensors
    alone, so a changed shard of a sharded model went unnoticed (a note said the weights were not there)."""
    import torch
    from transformers import GPT2Config, GPT2Model

    from timekd_embed.config import validate_config
    from timekd_embed.manifest import write
    from timekd_embed.store import write_tensors

    model = tmp_path / "sharded"
    torch.manual_seed(0)
    GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50257)).save_pretrained(model, max_shard_size="5MB")
    shards = sorted(model.glob("model-*.safetensors"))
    assert len(shards) == 2
    # The shards' identity (README): `sha256sum model-*.safetensors | sha256sum` in the model folder.
    listing = "".join(f"{sha256(path)}  {path.name}\n" for path in shards)
    (tmp_path / "weather.csv").write_text("date,OT\n")
    results = tmp_path / "results" / "weather"
    embeddings = results / "embeddings" / "24" / "train.safetensors"
    write_tensors(embeddings, {"embeddings": torch.zeros(1, 1, 64), "window_start": torch.arange(1)},
                  {"input_sha256": sha256(tmp_path / "weather.csv"),
                   "weights_sha256": hashlib.sha256(listing.encode()).hexdigest()})
    config = validate_config({"dataset": {"name": "weather", "csv": "weather.csv"},
                              "model": {"name_or_path": "sharded"}})
    write(results / MANIFEST, build(results, {"gather": [str(embeddings)]}, config))
    assert verify(results).problems == []

    data = bytearray(shards[1].read_bytes())
    data[-1] ^= 1                                         # one bit of the second shard's last tensor
    shards[1].write_bytes(bytes(data))
    problems = verify(results).problems
    assert len(problems) == 1 and f"{embeddings}: made from weights with sha256" in problems[0], problems
