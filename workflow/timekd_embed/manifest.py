"""results/<name>/MANIFEST.json: the artifacts and the run records, each with its sha256 and size.

The manifest lets a reader of a paper check that the results/ folder that came with it is
the one the workflow wrote: `timekd-embed verify results/<name>` recomputes every hash.
It keeps two lists apart:

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
results folder, so the folder can be moved or copied. verify also checks that each
embeddings file's recorded weights and input (`weights_sha256`, `input_sha256` in its
metadata) are still what the config points at.
Nothing here imports torch: `timekd-embed verify` starts in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .config import config_hash
from .errors import InputError
from .jobs import ERROR_MARK
from .store import check_record, is_record, read_metadata, recorded_file, rerun_advice, sha256_file, write_json

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
WEIGHTS_FILE = "model.safetensors"  # the only weights file the extraction loads (checkpoint.weights)


def recorded_config(config: dict) -> dict:
    """The part of the config that decides the artifacts.

    The CSV's location is left out too: its content is pinned by the input sha256 in every
    artifact's metadata, and a copy of the results on another machine keeps its hash.

    Args:
        config: the validated config.
    Returns:
        The config without the NOT_RECORDED keys and without dataset.csv.
    """
    recorded = {key: value for key, value in config.items() if key not in NOT_RECORDED}
    recorded["dataset"] = {key: value for key, value in config.get("dataset", {}).items() if key != "csv"}
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


def _is_temporary(relative: str) -> bool:
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
                    and not _is_temporary(path.relative_to(folder).as_posix()) and not _failed_log(path):
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
        config: the validated run config (the CSV's location is kept under "inputs").
        own_files: the manifest job's own log and benchmark, still being written, left out.

    Returns:
        The manifest: format_version, config (recorded_config) and its config_hash,
        versions, inputs {"csv": path as configured}, artifacts and run_records (each a
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
            "versions": versions(), "inputs": {"csv": str(config["dataset"]["csv"])},
            "artifacts": sorted(artifacts, key=lambda entry: entry["path"]),
            "run_records": sorted(records, key=lambda entry: entry["path"])}


def _folder_files(folder: Path) -> set[str]:
    """Every file of the results folder, relative to it, but for the manifest itself and the sha256
    records whose files are there (store.record_path: part of their files, never listed)."""
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*")
            if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST
            and not (is_record(path.name) and recorded_file(path).is_file())}


def _in_record_folder(relative: str) -> bool:
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


@dataclass
class Verdict:
    """What verify found. Only `problems` fail the check."""

    problems: list[str] = field(default_factory=list)  # one sentence each
    notes: list[str] = field(default_factory=list)     # one sentence each
    artifacts: int = 0                                 # artifacts listed in the manifest
    records_differ: list[str] = field(default_factory=list)  # run records, relative paths


def _changed(path: Path, entry: dict) -> tuple[int, str] | None:
    """(size, sha256) of `path` when they differ from the manifest entry, else None."""
    size, digest = path.stat().st_size, sha256_file(path)
    return None if (size, digest) == (entry["size"], entry["sha256"]) else (size, digest)


def verify(folder: str | Path, manifest_path: str | Path | None = None, config: dict | None = None) -> Verdict:
    """Compare a results folder with a manifest, its own or another run's.

    Args:
        folder: the results folder, such as results/weather.
        manifest_path: the manifest to compare with; default folder/MANIFEST.json. Another
            run's manifest passes when every artifact has the same bytes: its run records
            (timings, host names) are expected to differ and only noted.
        config: the config as it is now (config.load_run_config), whose CSV and model the
            embeddings must have been made from; default the run's own config and CSV
            location from the manifest, relative paths taken from the folder above results/.

    Returns:
        A Verdict. Problems: an artifact changed or missing, a run record missing, a file
        outside logs/ and benchmarks/ that the manifest does not list, an edited manifest,
        an embeddings file made from other weights or another input than the config's.
        Notes: differing run records, leftovers of interrupted writes, inputs that are not
        on this machine and so could not be rechecked.

    Raises:
        InputError: the folder or manifest cannot be read (see load).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; pass the results folder, such as results/weather.")
    manifest_path = Path(manifest_path) if manifest_path is not None else folder / MANIFEST
    manifest = load(manifest_path)
    verdict = Verdict(artifacts=len(manifest["artifacts"]))
    if config_hash(manifest.get("config", {})) != manifest.get("config_hash"):
        verdict.problems.append(f"{manifest_path}: config_hash {manifest.get('config_hash')} does not match the "
                                "config recorded beside it; the manifest was edited.")
    intact = []  # artifacts whose bytes match: their metadata can be trusted
    own = manifest_path.resolve() == (folder / MANIFEST).resolve()
    for entry in manifest["artifacts"]:
        path = folder / entry["path"]
        # A plain rerun does not make a missing file again while what was made from it is up to date.
        if not path.is_file():
            verdict.problems.append(f"{path}: missing (made by rule {entry['rule']}); restore it, or "
                                    f"{rerun_advice(path)}.")
        elif changed := _changed(path, entry):
            verdict.problems.append(f"{path}: sha256 {changed[1]} and size {changed[0]} B differ from the manifest "
                                    f"({entry['sha256']}, {entry['size']} B); the file changed after rule "
                                    f"{entry['rule']} wrote it" + (f": {rerun_advice(path)}." if own else "."))
        else:
            intact.append(entry)
    for entry in manifest["run_records"]:
        path = folder / entry["path"]
        if not path.is_file():
            if not _in_record_folder(entry["path"]):  # a log or benchmark may be cleaned away
                verdict.problems.append(f"{path}: missing (a run record of rule {entry['rule']}); restore it or "
                                        "rerun the workflow.")
        elif _changed(path, entry):
            verdict.records_differ.append(entry["path"])
    if verdict.records_differ:
        verdict.notes.append(_records_note(folder, manifest_path, verdict.records_differ))
    listed = {entry["path"] for entry in manifest["artifacts"] + manifest["run_records"]}
    for relative in sorted(_folder_files(folder) - listed):
        if _is_temporary(relative):
            verdict.notes.append(f"{folder / relative}: a leftover of an interrupted write, not an artifact; "
                                 "it can be deleted.")
        elif is_record(relative.rsplit("/", 1)[-1]):
            verdict.notes.append(f"{folder / relative}: the sha256 record of a file that is gone (a leftover of an "
                                 "interrupted or failed job), not an artifact; it can be deleted.")
        elif not _in_record_folder(relative):  # later jobs' logs, the manifest job's own
            verdict.problems.append(f"{folder / relative}: not in the manifest; remove it or rerun the workflow.")
    verdict.notes += _other_run_notes(folder, manifest_path, manifest)
    inputs = current_inputs(folder, manifest, config)
    stale = stale_embeddings(folder, intact, inputs)
    verdict.problems += stale.problems
    verdict.notes += stale.notes
    return verdict


def _records_note(folder: Path, manifest_path: Path, differ: list[str]) -> str:
    named = [path for path in differ if not _in_record_folder(path)]
    counted = [f"{sum(path.split('/', 1)[0] == name for path in differ)} file(s) in {name}/" for name in RECORD_FOLDERS
               if any(path.split("/", 1)[0] == name for path in differ)]
    return (f"{folder}: {len(differ)} run record(s) differ from {manifest_path}: {', '.join(named + counted)}; "
            "they hold timings and host names, which differ between runs, so this is not a problem.")


def _other_run_notes(folder: Path, manifest_path: Path, manifest: dict) -> list[str]:
    """Against another run's manifest: how its config and versions differ from the folder's own, which
    explains artifacts that differ."""
    own_path = folder / MANIFEST
    if not own_path.is_file() or own_path.resolve() == manifest_path.resolve():
        return []
    try:
        own = load(own_path)
    except InputError:
        return [(f"{own_path} cannot be read, so this run's config and versions were not compared with "
                 f"{manifest_path}'s.")]
    notes = []
    configs = own.get("config", {}), manifest.get("config", {})
    keys = sorted(k for k in set(configs[0]) | set(configs[1]) if configs[0].get(k) != configs[1].get(k))
    if keys:
        notes.append(f"{manifest_path} was made with another config: {', '.join(keys)} differ from {own_path}.")
    versions = own.get("versions", {}), manifest.get("versions", {})
    changed = [f"{name} {versions[0].get(name)} here, {versions[1].get(name)} there"
               for name in sorted(set(versions[0]) | set(versions[1]))
               if versions[0].get(name) != versions[1].get(name)]
    if changed:
        notes.append(f"{manifest_path} was made with other versions: {'; '.join(changed)}.")
    return notes


@dataclass(frozen=True)
class Inputs:
    """Where the inputs that decide the embeddings are now; None where they cannot be found here."""

    csv: Path | None
    weights: Path | None
    notes: tuple[str, ...] = ()  # why an input could not be found


def current_inputs(folder: Path, manifest: dict, config: dict | None) -> Inputs:
    """The CSV and weights file that `config` (default: the run's own, from the manifest) points at.

    Relative paths are taken from the current directory when `config` is given, as
    Snakemake reads them; otherwise from the folder above results/, the run's working folder.

    Args:
        folder: the results folder; manifest: its manifest (load); config: a validated config, or None.
    Returns:
        Inputs: the CSV and weights paths found on this machine (None where not), and a note for each missing one.
    """
    if config is None:
        csv = manifest.get("inputs", {}).get("csv")
        model = manifest.get("config", {}).get("model", {})
        results = folder.resolve().parent
        workdir = results.parent if results.name == "results" else Path.cwd()
    else:
        csv, model, workdir = config["dataset"]["csv"], config["model"], Path.cwd()
    notes = []
    csv_path = None
    if csv is not None:
        csv_path = workdir / csv
        if not csv_path.is_file():
            notes.append(f"{csv_path} (dataset.csv) is not on this machine, so the embeddings' input was not "
                         "rechecked.")
            csv_path = None
    weights, why = weights_file_here(model.get("name_or_path"), model.get("revision"), workdir)
    if why:
        notes.append(why)
    return Inputs(csv_path, weights, tuple(notes))


def weights_file_here(name_or_path: str | None, revision: str | None, workdir: Path) -> tuple[Path | None, str]:
    """The weights file the extraction would load, if it is on this machine, without the network.

    A local folder's model.safetensors, or the hub cache's copy at `revision` (as
    checkpoint.weights finds it, but never downloading: verify must not).

    Args:
        name_or_path, revision: config key model's; workdir: the run's working folder.
    Returns:
        (path, "") or (None, one sentence saying why the weights could not be rechecked).
    """
    if not name_or_path:
        return None, "the manifest names no model, so the embeddings' weights were not rechecked."
    folder = workdir / name_or_path
    if folder.exists() or Path(name_or_path).is_absolute() or name_or_path.startswith("."):
        path = folder / WEIGHTS_FILE
        if path.is_file():
            return path, ""
        return None, (f"{path} (model.name_or_path) is not on this machine, so the embeddings' weights were not "
                      "rechecked.")
    from huggingface_hub import try_to_load_from_cache  # a hub id: only the local cache is read
    cached = try_to_load_from_cache(name_or_path, WEIGHTS_FILE, revision=revision)
    if isinstance(cached, str) and os.path.isfile(cached):
        return Path(cached), ""
    return None, (f"model {name_or_path} (revision {revision or 'main'}) is neither a folder in {workdir} nor in "
                  "the model hub cache here, so the embeddings' weights were not rechecked.")


def stale_embeddings(folder: Path, entries: list[dict], inputs: Inputs) -> Verdict:
    """Problems for embeddings files whose recorded weights or input differ from `inputs` now.

    Args:
        folder: the results folder.
        entries: manifest artifact entries whose files match the manifest; those whose
            safetensors metadata records `weights_sha256` or `input_sha256` are checked.
        inputs: the current inputs (current_inputs).

    Returns:
        A Verdict with one problem per stale file and mismatch, and inputs.notes as notes.
    """
    verdict = Verdict(notes=list(inputs.notes))
    current: dict[Path, str] = {}  # each input hashed once

    def sha256_of(path: Path) -> str:
        """The file's sha256, hashed once per verify."""

        if path not in current:
            current[path] = sha256_file(path)
        return current[path]

    for entry in entries:
        if not entry["path"].endswith(".safetensors"):
            continue
        path = folder / entry["path"]
        meta = read_metadata(path)  # the header alone, without torch
        for key, now, what in (("weights_sha256", inputs.weights, "weights"), ("input_sha256", inputs.csv, "input")):
            if key not in meta or now is None:
                continue
            if meta[key] != sha256_of(now):
                verdict.problems.append(
                    f"{path}: made from {what} with sha256 {meta[key]}, but {now} now has sha256 {sha256_of(now)}; "
                    f"the {what} changed since the run: rerun the workflow, or restore the {what} it was made from.")
    return verdict


def write(path: str | Path, manifest: dict) -> None:
    """Write the manifest atomically, with sorted keys (store.write_json).

    Args:
        path: MANIFEST.json's path; manifest: build's result.
    """
    write_json(path, manifest)


def main_verify(folder: str | Path, manifest_path: str | Path | None = None, config: dict | None = None) -> int:
    """`timekd-embed verify`: notes and problems on stderr, one line each.

    Args:
        folder: the results folder; manifest_path: another run's manifest to compare against
            (None: the folder's own); config: a validated config whose inputs to recheck, or None.
    Returns:
        The exit status: 0 when nothing is wrong, else 1.
    Raises:
        InputError: as load (a missing or unreadable manifest).
    """
    against = Path(manifest_path) if manifest_path is not None else Path(folder) / MANIFEST
    verdict = verify(folder, manifest_path, config)
    for line in verdict.notes:
        print(f"Note: {line}", file=sys.stderr)
    for line in verdict.problems:
        print(f"Error: {line}", file=sys.stderr)
    if verdict.problems:
        print(f"{folder}: {len(verdict.problems)} problem(s) against {against}.", file=sys.stderr)
        return 1
    print(f"{folder}: all {verdict.artifacts} artifacts match {against}"
          + (f"; {len(verdict.records_differ)} run record(s) differ (timings, host names)." if verdict.records_differ
             else "."))
    return 0
