"""results/<name>/MANIFEST.json: the artifacts and the run records, each with its sha256 and size.

The manifest lets a reader of a paper check that the results/ folder that came with it is
the one the workflow wrote: `timekd-embed verify results/<name>` recomputes every hash
(verify.py). It keeps two lists apart:

- artifacts: the results (windows, SCA weights, embeddings, parity, shapes, histograms).
  The same inputs, config and versions on the same machine give the same bytes, so any
  difference is a problem, also against another run's manifest;
- run records: what a run measured about itself (the stats beside each embeddings file,
  the report's pages validation/summary.html and report/*.html with their timing tables,
  logs/, benchmarks/). They hold wall times,
  speeds, peak memory and host names, so they differ between two runs of the same
  science; verify says which differ, as a note, never as a problem.

Every file a job wrote through store.py carries the sha256 its writer recorded (store.py);
the manifest lists those recorded hashes, after checking that each file still has them, so
a file damaged after its job wrote it stops the manifest job instead of being blessed. The
records themselves (hidden `.<name>.sha256` files) are not listed. Paths are relative to the
results folder, so the folder can be moved or copied. Where the inputs were (the CSV, the
model folder) is kept apart from the config, under "inputs": a location decides nothing.
Nothing here imports torch: `timekd-embed verify` starts in a fraction of a second.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from .config import config_hash
from .errors import InputError
from .jobs import ERROR_MARK
from .model_files import model_name
from .records import check_record, is_record, recorded_file, sha256_file
from .store import write_json

MANIFEST = "MANIFEST.json"
FORMAT_VERSION = 2
# Top-level folders whose every file is a run record: one log and one benchmark per job.
RECORD_FOLDERS = ("logs", "benchmarks")
# `timekd-embed preflight`'s report (results/<name>/preflight.{json,md}): written before a run,
# not by it, and full of timings and host names; neither artifact nor record, never a problem.
PREFLIGHT_FILES = ("preflight.json", "preflight.md")
# The manifest rule's named inputs that hold run records are named `<rule>_records`
# (manifest.smk); the other names are the rules that made the artifacts.
RECORDS_SUFFIX = "_records"
# Config keys that do not decide anything under results/: those that change only the speed
# (config/README.md), the opt-in export's folder and the CPU run's opt-in. They neither enter
# the hash nor rerun the manifest, just as they rerun no extraction.
NOT_RECORDED = ("device", "gpus_per_job", "placement", "batch_tokens", "export_root", "allow_slow_cpu")
# The distributions whose versions decide the bytes of the artifacts.
DISTRIBUTIONS = ("timekd-embed", "torch", "transformers", "tokenizers", "safetensors", "accelerate",
                 "numpy", "pandas", "pyarrow", "snakemake", "matplotlib")


def recorded_config(config: dict) -> dict:
    """The part of the config that decides the artifacts.

    The locations of the CSV and the model folder are left out too: their content is pinned
    by the input and weights sha256 in every artifact's metadata, so moving either, or a copy
    of the results on another machine, keeps the hash. The model is named by what it is
    (model_files.model_name: its hub id, or "local folder").

    Args:
        config: the validated config.
    Returns:
        The config without the NOT_RECORDED keys, dataset.csv and model.name_or_path (model.name instead).
    """
    recorded = {key: value for key, value in config.items() if key not in NOT_RECORDED}
    recorded["dataset"] = {key: value for key, value in config.get("dataset", {}).items() if key != "csv"}
    if "model" in config:
        model = dict(config["model"])
        recorded["model"] = {"name": model_name(model.pop("name_or_path"))} | model
    return recorded


def versions() -> dict[str, str]:
    """Python's version and that of every distribution in DISTRIBUTIONS ("not installed" if absent)."""
    found = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def is_temporary(relative: str) -> bool:
    """A leftover of an interrupted atomic write (`.name.<random>.tmp`), never an artifact."""
    name = relative.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


def _entry(folder: Path, path: str | Path, rule: str | None) -> dict:
    """A file's manifest entry: for a job's output (`rule` given) the sha256 its writer recorded, checked
    against the file; for a log or benchmark (no rule: written by logging and Snakemake, without a
    record) the file's own."""
    path = Path(path).resolve()
    try:
        relative = path.relative_to(folder).as_posix()
    except ValueError:
        raise InputError(f"{path}: the output of rule {rule} lies outside {folder}; only files under the "
                         "results folder can be listed in its manifest.") from None
    digest = check_record(path) if rule is not None else sha256_file(path)
    return {"path": relative, "rule": rule, "size": path.stat().st_size, "sha256": digest}


def _failed_log(path: Path) -> bool:
    """A job log that ends in the job's one-sentence error (jobs.ERROR_MARK): the record of an attempt
    that failed (an offline get_data before the CSV was put in place by hand), not of a job that made
    this run's files."""
    if path.suffix != ".log":
        return False
    lines = path.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()
    return bool(lines) and ERROR_MARK in lines[-1]


def _record_folder_files(folder: Path, leave_out: set[Path]) -> list[Path]:
    """The files of logs/ and benchmarks/, but for `leave_out`, failed jobs' logs and leftovers of
    interrupted writes."""
    found = []
    for name in RECORD_FOLDERS:
        for path in sorted((folder / name).rglob("*")):
            if path.is_file() and path.resolve() not in leave_out \
                    and not is_temporary(path.relative_to(folder).as_posix()) and not _failed_log(path):
                found.append(path)
    return found


def build(folder: str | Path, outputs: dict[str, list[str]], config: dict,
          own_files: list[str] | tuple[str, ...] = ()) -> dict:
    """The manifest of `folder` (results/<name>).

    Args:
        folder: the results folder the manifest describes.
        outputs: {name: [paths]}, the manifest rule's named inputs; a name is the rule that
            made the files, with the suffix `_records` (RECORDS_SUFFIX) for files that are
            run records. Paths may be relative to the working directory.
        config: the validated run config (the CSV's and model's locations are kept under "inputs").
        own_files: the manifest job's own log and benchmark, still being written, left out.

    Returns:
        The manifest: format_version, config (recorded_config) and its config_hash,
        versions, inputs {"csv", "model": paths as configured}, artifacts and run_records (each a
        list of {path, rule, size, sha256} sorted by path; rule is null for the files of
        logs/ and benchmarks/).

    Raises:
        InputError: an output lies outside `folder`, or its bytes differ from the sha256 its writer
            recorded, or it has no record (store.check_record): the manifest never lists a file
            damaged after it was written.
    """
    folder = Path(folder).resolve()
    artifacts, records = [], []
    for name, paths in outputs.items():
        is_record = name.endswith(RECORDS_SUFFIX)
        rule = name.removesuffix(RECORDS_SUFFIX)
        (records if is_record else artifacts).extend(_entry(folder, path, rule) for path in paths)
    leave_out = {Path(path).resolve() for path in own_files}
    records += [_entry(folder, path, None) for path in _record_folder_files(folder, leave_out)]
    recorded = recorded_config(config)
    return {"format_version": FORMAT_VERSION, "config_hash": config_hash(recorded), "config": recorded,
            "versions": versions(),
            "inputs": {"csv": str(config["dataset"]["csv"]),
                       "model": str(config["model"]["name_or_path"]) if "model" in config else None},
            "artifacts": sorted(artifacts, key=lambda entry: entry["path"]),
            "run_records": sorted(records, key=lambda entry: entry["path"])}


def folder_files(folder: Path) -> set[str]:
    """Every file of the results folder, relative to it, but for the manifest itself and the sha256
    records whose files are there (store.record_path: part of their files, never listed)."""
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*")
            if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST
            and not (is_record(path.name) and recorded_file(path).is_file())}


def in_record_folder(relative: str) -> bool:
    """Whether a path (relative to the results folder) is a run record by where it lies: logs/, benchmarks/,
    or preflight's report."""
    return relative.split("/", 1)[0] in RECORD_FOLDERS or relative in PREFLIGHT_FILES


def load(path: str | Path) -> dict:
    """A manifest, checked for its format; every listed path stays inside the results folder.

    Args:
        path: a MANIFEST.json, or the results folder that holds one.

    Returns:
        The manifest dict.

    Raises:
        InputError: the file is missing, not JSON, of another format version, or lists a
            path outside its folder.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    elif not path.parent.is_dir():
        raise InputError(f"{path.parent} is not a folder; pass the results folder, such as results/weather.")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; run the workflow to completion to write it.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); restore it from the original results.") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION \
            or not isinstance(manifest.get("artifacts"), list) or not isinstance(manifest.get("run_records"), list):
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise InputError(f"{path} is not a timekd-embed manifest of format version {FORMAT_VERSION} (found "
                         f"{found!r}); rewrite it with `snakemake --forcerun manifest` or restore it from the "
                         "original results.")
    for kind in ("artifacts", "run_records"):
        for k, entry in enumerate(manifest[kind]):
            fields_ok = isinstance(entry, dict) and {"path", "rule", "size", "sha256"} <= set(entry) \
                and isinstance(entry["path"], str)
            # A listed path must stay inside the folder: verify never reads files elsewhere.
            if not fields_ok or Path(entry["path"]).is_absolute() or ".." in Path(entry["path"]).parts:
                raise InputError(f"{path}: {kind} entry {k} is not a relative path with rule, size and sha256 "
                                 f"inside the results folder; restore the manifest from the original results.")
    return manifest


def write(path: str | Path, manifest: dict) -> None:
    """Write the manifest atomically, with sorted keys (store.write_json).

    Args:
        path: MANIFEST.json's path; manifest: build's result.
    """
    write_json(path, manifest)
