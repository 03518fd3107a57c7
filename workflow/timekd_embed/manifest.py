"""results/<name>/MANIFEST.json: every artifact with its sha256, size and rule; `verify` rechecks them.

The manifest lets a reader of a paper check that the results/ folder that came with it is
the one the workflow wrote: `timekd-embed verify results/<name>` recomputes every hash.
Paths are relative to the results folder, so the folder can be moved or copied. Logs and
benchmarks are not artifacts (their content is timing and host names), so they are left out.
"""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path

from .config import config_hash
from .errors import InputError
from .store import sha256_file

MANIFEST = "MANIFEST.json"
FORMAT_VERSION = 1
NOT_ARTIFACTS = ("logs", "benchmarks")  # top-level folders verify ignores
# Config keys that do not decide anything under results/: those that change only the speed
# (config/README.md) and the opt-in export's folder. They neither enter the hash nor rerun
# the manifest, just as they rerun no extraction.
NOT_RECORDED = ("device", "gpus_per_job", "placement", "batch_tokens", "export_root")
# The distributions whose versions decide the bytes of the artifacts.
DISTRIBUTIONS = ("timekd-embed", "torch", "transformers", "tokenizers", "safetensors", "accelerate",
                 "numpy", "pandas", "pyarrow", "snakemake", "matplotlib")


def recorded_config(config: dict) -> dict:
    """The part of the config that decides the artifacts.

    The CSV's location is left out too: its content is pinned by the input sha256 in every
    artifact's metadata, and a copy of the results on another machine keeps its hash.
    """
    recorded = {k: v for k, v in config.items() if k not in NOT_RECORDED}
    recorded["dataset"] = {k: v for k, v in config.get("dataset", {}).items() if k != "csv"}
    return recorded


def versions() -> dict[str, str]:
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


def build(folder: str | Path, artifacts: dict[str, list[str]], config: dict) -> dict:
    """The manifest of `folder` (results/<name>) for {rule: [artifact paths]}; paths may be relative to cwd."""
    folder = Path(folder).resolve()
    entries = []
    for rule, paths in artifacts.items():
        for path in paths:
            path = Path(path).resolve()
            try:
                relative = path.relative_to(folder).as_posix()
            except ValueError:
                raise InputError(f"{path}: the artifact of rule {rule} lies outside {folder}; "
                                 "only files under the results folder can be listed in its manifest.") from None
            entries.append({"path": relative, "rule": rule, "size": path.stat().st_size,
                            "sha256": sha256_file(path)})
    entries.sort(key=lambda e: e["path"])
    recorded = recorded_config(config)
    return {"format_version": FORMAT_VERSION, "config_hash": config_hash(recorded), "config": recorded,
            "versions": versions(), "artifacts": entries}


def _listed_files(folder: Path) -> set[str]:
    """Every file of the results folder that verify compares with the manifest."""
    files = set()
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative != MANIFEST and relative.split("/", 1)[0] not in NOT_ARTIFACTS:
            files.add(relative)
    return files


def load(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise InputError(f"{folder} is not a folder; pass the results folder, such as results/weather.")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; run the workflow to completion to write it.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); restore it from the original results.") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION \
            or not isinstance(manifest.get("artifacts"), list):
        raise InputError(f"{path} is not a timekd-embed manifest of format version {FORMAT_VERSION}; "
                         "restore it from the original results.")
    for k, entry in enumerate(manifest["artifacts"]):
        fields_ok = isinstance(entry, dict) and {"path", "rule", "size", "sha256"} <= set(entry)
        # A listed path must stay inside the folder: verify never reads files elsewhere.
        if not fields_ok or Path(entry["path"]).is_absolute() or ".." in Path(entry["path"]).parts:
            raise InputError(f"{path}: artifact {k} is not a relative path with rule, size and sha256 inside "
                             f"{folder}; restore the manifest from the original results.")
    return manifest


def verify(folder: str | Path) -> tuple[list[str], list[str], int]:
    """(problems, notes, artifacts listed): one sentence per mismatched, missing or unlisted file.

    Notes (leftovers of interrupted writes) do not fail the check.
    """
    folder = Path(folder)
    manifest = load(folder)
    problems, notes = [], []
    if config_hash(manifest.get("config", {})) != manifest.get("config_hash"):
        problems.append(f"{folder / MANIFEST}: config_hash {manifest.get('config_hash')} does not match "
                        "the config recorded beside it; the manifest was edited.")
    listed = set()
    for entry in manifest["artifacts"]:
        listed.add(entry["path"])
        path = folder / entry["path"]
        if not path.is_file():
            problems.append(f"{path}: missing (made by rule {entry['rule']}); restore it or rerun the workflow.")
            continue
        size, digest = path.stat().st_size, sha256_file(path)
        if size != entry["size"] or digest != entry["sha256"]:
            problems.append(f"{path}: sha256 {digest} and size {size} B differ from the manifest "
                            f"({entry['sha256']}, {entry['size']} B); the file changed after rule "
                            f"{entry['rule']} wrote it.")
    for relative in sorted(_listed_files(folder) - listed):
        if _is_temporary(relative):
            notes.append(f"{folder / relative}: a leftover of an interrupted write, not an artifact; "
                         "it can be deleted.")
        else:
            problems.append(f"{folder / relative}: not in the manifest; remove it or rerun the workflow.")
    return problems, notes, len(listed)


def write(path: str | Path, manifest: dict) -> None:
    from .store import write_json  # imports torch: only the workflow job needs it
    write_json(path, manifest)


def main_verify(folder: str | Path) -> int:
    """`timekd-embed verify`: every problem on stderr, one line each; the exit status."""
    problems, notes, n = verify(folder)
    for line in notes:
        print(f"Note: {line}", file=sys.stderr)
    for line in problems:
        print(f"Error: {line}", file=sys.stderr)
    if problems:
        print(f"{folder}: {len(problems)} problem(s) against {Path(folder) / MANIFEST}.", file=sys.stderr)
        return 1
    print(f"{folder}: all {n} artifacts match {Path(folder) / MANIFEST}.")
    return 0
