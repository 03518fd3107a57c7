"""`timekd-embed verify` and `timekd-embed clean`: a results folder against its MANIFEST.json.

verify recomputes every hash the manifest lists (manifest.py), its own or another run's, and
checks that each embeddings file's recorded input and weights (`input_sha256`,
`weights_sha256` in its metadata) are what the config's CSV and model hold now, with the one
answer the rules' params are made from too (fingerprint.current_inputs). Files the workflow
wrote that the config no longer produces (a dropped horizon's) are left over, not wrong:
verify names them, and `timekd-embed clean` removes them and nothing else: only files whose
sha256 record (store.py) says the workflow wrote them, never a file of the user's.
Nothing here imports torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .config import config_hash
from .errors import InputError
from .fingerprint import Sha256Cache, current_inputs
from .manifest import MANIFEST, RECORD_FOLDERS, folder_files, in_record_folder, is_temporary, load
from .model_files import ModelSource, model_name, model_source
from .records import check_record, is_record, read_metadata, record_path, recorded_file, rerun_advice, sha256_file


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
        outside logs/ and benchmarks/ that the manifest does not list and the workflow did not
        write, an edited manifest, an embeddings file made from other weights or another input
        than the config's, a file of a hub download that changed. Notes: differing run records,
        files the workflow wrote that this config no longer produces (leftovers: clean removes
        them), leftovers of interrupted writes, inputs that are not on this machine and so could
        not be rechecked.

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
            if not in_record_folder(entry["path"]):  # a log or benchmark may be cleaned away
                verdict.problems.append(f"{path}: missing (a run record of rule {entry['rule']}); restore it or "
                                        "rerun the workflow.")
        elif _changed(path, entry):
            verdict.records_differ.append(entry["path"])
    if verdict.records_differ:
        verdict.notes.append(_records_note(folder, manifest_path, verdict.records_differ))
    listed = {entry["path"] for entry in manifest["artifacts"] + manifest["run_records"]}
    left = leftovers(folder, listed)
    for relative in sorted(folder_files(folder) - listed):
        if is_temporary(relative):
            verdict.notes.append(f"{folder / relative}: a leftover of an interrupted write, not an artifact; "
                                 "it can be deleted.")
        elif is_record(relative.rsplit("/", 1)[-1]):
            verdict.notes.append(f"{folder / relative}: the sha256 record of a file that is gone (a leftover of an "
                                 "interrupted or failed job), not an artifact; it can be deleted.")
        elif relative not in left and not in_record_folder(relative):  # later jobs' logs, the manifest job's own
            verdict.problems.append(f"{folder / relative}: not in the manifest, and not written by the workflow (no "
                                    "sha256 record of it beside it); move it out of the results folder.")
    if left:
        verdict.notes.append(_leftovers_note(folder, sorted(left)))
    verdict.notes += _other_run_notes(folder, manifest_path, manifest)
    stale = _stale_embeddings(folder, manifest, intact, config)
    verdict.problems += stale.problems
    verdict.notes += stale.notes
    return verdict


def _records_note(folder: Path, manifest_path: Path, differ: list[str]) -> str:
    named = [path for path in differ if not in_record_folder(path)]
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


def leftovers(folder: Path, listed: set[str]) -> set[str]:
    """Files of the results folder that the workflow wrote but the manifest does not list: left over from
    an earlier config (a dropped horizon's embeddings, parity, report page).

    Args:
        folder: the results folder; listed: the paths its manifest lists.
    Returns:
        Their paths relative to the folder: files outside logs/ and benchmarks/ whose sha256 record
        beside them (store.record_path) still matches them.
    """
    found = set()
    for relative in folder_files(folder) - listed:
        name = relative.rsplit("/", 1)[-1]
        if is_temporary(relative) or is_record(name) or in_record_folder(relative):
            continue
        try:
            check_record(folder / relative)
        except InputError:
            continue
        found.add(relative)
    return found


def _leftovers_note(folder: Path, left: list[str]) -> str:
    shown = ", ".join(left[:4]) + (", ..." if len(left) > 4 else "")
    return (f"{folder}: {len(left)} file(s) the workflow wrote are not produced by the config of this manifest (left "
            f"over from an earlier config, such as a dropped horizon): {shown}; `timekd-embed clean {folder}` "
            "removes them (only files the workflow wrote, never yours).")


def clean(folder: str | Path) -> list[Path]:
    """Remove what the workflow left in a results folder that its manifest does not list: leftovers
    (files with their matching sha256 record), records of files that are gone, and temporary files
    of interrupted writes. A file without the workflow's record is never removed.

    Args:
        folder: the results folder.
    Returns:
        The files removed (records included).
    Raises:
        InputError: the folder or its manifest cannot be read (manifest.load).
    """
    folder = Path(folder)
    manifest = load(folder)
    listed = {entry["path"] for entry in manifest["artifacts"] + manifest["run_records"]}
    removed = []
    for relative in sorted(leftovers(folder, listed)):
        for path in (folder / relative, record_path(folder / relative)):
            path.unlink()
            removed.append(path)
    for relative in sorted(folder_files(folder) - listed):
        path = folder / relative
        gone_record = is_record(path.name) and not recorded_file(path).exists()
        in_records = relative.split("/", 1)[0] in RECORD_FOLDERS
        if path.is_file() and (is_temporary(relative) or gone_record) and not in_records:
            path.unlink()
            removed.append(path)
    for directory in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
    return removed


def _stale_embeddings(folder: Path, manifest: dict, entries: list[dict], config: dict | None) -> Verdict:
    """Problems for embeddings files whose recorded input or weights differ from what the inputs hold now.

    Relative paths are taken from the current directory when `config` is given, as Snakemake
    reads them; otherwise from the folder above results/, the run's working folder, with the
    CSV and model the manifest names under "inputs".

    Args:
        folder: the results folder; manifest: its manifest; entries: artifact entries whose files
        match the manifest; config: a validated config, or None.
    Returns:
        A Verdict: one problem per stale file and input, one per changed file of a hub download;
        notes for inputs that are not on this machine.
    """
    if config is None:
        results = folder.resolve().parent
        workdir = results.parent if results.name == "results" else Path.cwd()
        recorded = manifest.get("config", {}).get("model", {})
        location = manifest.get("inputs", {}).get("model") or recorded.get("name_or_path")
        csv = manifest.get("inputs", {}).get("csv")
        if not location:
            return Verdict(notes=["the manifest names no model, so the embeddings' weights were not rechecked."])
        # Where the jobs loaded the model: always a folder (resources/models/<id>/ for a hub id).
        name = model_name(location)
        source = ModelSource(name if name != "local folder" else location, workdir / location,
                             name != "local folder", recorded.get("revision"))
    else:
        csv, workdir = config["dataset"]["csv"], Path.cwd()
        source = model_source(config["model"], workdir)
    now = current_inputs(csv, source, Sha256Cache(None), workdir)
    verdict = Verdict(problems=list(now.damaged), notes=list(now.notes))
    weights = now.weights[0] if len(now.weights) == 1 else f"the shards in {source.folder}"
    for entry in entries:
        if not entry["path"].endswith(".safetensors"):
            continue
        path = folder / entry["path"]
        meta = read_metadata(path)  # the header alone, without torch
        for key, found, what, where in (("weights_sha256", now.weights_sha256, "weights", weights),
                                         ("input_sha256", now.csv_sha256, "input", workdir / (csv or ""))):
            if key in meta and found is not None and meta[key] != found:
                verdict.problems.append(
                    f"{path}: made from {what} with sha256 {meta[key]}, but {where} now has sha256 {found}; the "
                    f"{what} changed since the run: rerun the workflow, or restore the {what} it was made from.")
    return verdict


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


def main_clean(folder: str | Path) -> int:
    """`timekd-embed clean`: remove the workflow's leftovers (clean), one line per file on stdout.

    Args:
        folder: the results folder.
    Returns:
        0.
    Raises:
        InputError: as load.
    """
    removed = clean(folder)
    for path in removed:
        print(f"removed {path}")
    print(f"{folder}: {len(removed)} file(s) removed; every file the manifest lists, and every file the workflow "
          "did not write, is left as it is.")
    return 0
