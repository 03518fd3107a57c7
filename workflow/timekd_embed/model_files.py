"""Where a model's files are: the one answer for loading, rerun tracking, downloads and the manifest.

A model is a local folder, used in place, or a hub id, whose files get_model puts into
resources/models/<id>/ at a pinned commit (and lists in that folder's RECORD). Either way the
files are those of a Hugging Face checkpoint folder: config.json, the safetensors weights
(model.safetensors, or shards listed by model.safetensors.index.json) and the tokenizer files.
Pickle weights are never read: unpickling can run code. Nothing here imports torch: the
Snakefile plans with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# The files AutoTokenizer reads when they are there: each one decides the token ids.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
RECORD = "download.json"  # what get_model writes beside the files it fetched: repo, commit, each file's sha256
MODELS_DIR = Path("resources") / "models"

# Hub commits used when model.revision is null. gpt2: the main branch's commit that holds
# model.safetensors (huggingface.co/openai-community/gpt2, also reachable as "gpt2").
PINNED_REVISIONS = {"gpt2": "607a30d783dfa663caf39e06633721c8d4cfcd7e",
                    "openai-community/gpt2": "607a30d783dfa663caf39e06633721c8d4cfcd7e"}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_folder(name_or_path: str, workdir: Path = Path()) -> bool:
    """Whether model.name_or_path names a local folder rather than a hub id: a path that exists (relative
    to `workdir`), is absolute, or starts with "." (so "./gpt2" is always a folder, "gpt2" one only if there)."""
    path = Path(name_or_path)
    return (workdir / path).exists() or path.is_absolute() or name_or_path.startswith(".")


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from.

    Attributes:
        name: model.name_or_path as configured (a folder or a hub id).
        folder: the folder the files are read from: the configured one, or
            resources/models/<hub id>/ where get_model puts a hub model's files.
        hub: True for a hub id (get_model downloads it), False for a local folder.
        revision: for a hub id, the 40-hex commit the files come from; else None.
    """

    name: str
    folder: Path
    hub: bool
    revision: str | None


def model_source(model: dict, workdir: Path = Path()) -> ModelSource:
    """The model's source from config key `model` ({"name_or_path", "revision"}).

    Args:
        model: config key model; workdir: the workflow's working directory (relative paths, and
            resources/models/, are taken from it).
    Returns:
        The ModelSource; a hub id is pinned to model.revision or to PINNED_REVISIONS.
    Raises:
        InputError: a hub id with a revision that is not a commit and no pin.
    """
    name, revision = model["name_or_path"], model.get("revision")
    if is_folder(name, workdir):
        return ModelSource(name, workdir / name, False, None)
    revision = revision or PINNED_REVISIONS.get(name)
    if revision is None or not _COMMIT.match(revision):
        raise InputError(f"model {name!r} (config key model.name_or_path) is a hub id, so config key "
                         f"model.revision must be a commit (40 hex digits, from the model page's history), "
                         f"not {revision!r}: the files are downloaded once at that commit, so that every run "
                         "uses the same weights.")
    return ModelSource(name, workdir / MODELS_DIR / name, True, revision)


def model_name(location: str) -> str:
    """What the embeddings record as their model: what it is, never where it is.

    Args:
        location: the folder a job loads the model from (local_model's name_or_path).
    Returns:
        The hub id for a folder get_model fills (resources/models/<id>), else "local folder"
        (its files' sha256, recorded beside, say which one).
    """
    try:
        return Path(location).relative_to(MODELS_DIR).as_posix()
    except ValueError:
        return "local folder"


def local_model(model: dict) -> dict:
    """Config key `model` as every job loads it: a hub id becomes the folder get_model fills.

    Args:
        model: config key model ({"name_or_path", "revision", "layers"}).
    Returns:
        For a hub id, the key with {"name_or_path": "./resources/models/<id>", "revision": <commit>}
        ("./": always a folder, never looked up on the hub; the commit is what the embeddings
        record); a local folder's key unchanged.
    Raises:
        InputError: as model_source.
    """
    source = model_source(model)
    if not source.hub:
        return dict(model)
    return dict(model) | {"name_or_path": f"./{source.folder}", "revision": source.revision}


def existing_folder(name_or_path: str) -> Path | None:
    """The model folder, or None for a hub id.

    Args:
        name_or_path: config key model.name_or_path.
    Returns:
        The folder's Path, or None when the name is a hub id.
    Raises:
        InputError: a folder-like path (absolute, or starting with ".") that does not exist.
    """
    if not is_folder(name_or_path):
        return None
    path = Path(name_or_path)
    if not path.exists():
        raise InputError(f"model folder {path} (config key model.name_or_path) does not exist; point it at a "
                         f"model folder ({CONFIG}, {WEIGHTS} or its shards, the tokenizer files), or at a hub id "
                         "such as gpt2.")
    return path


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files the weights are read from: the shards model.safetensors.index.json lists
    (in order, each once), else model.safetensors.

    Args:
        folder: a model folder.
    Returns:
        The existing weight files.
    Raises:
        InputError: no safetensors weights (pickle-only weights are named and refused), an unreadable
            index, or a shard the index lists that is missing.
    """
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        shards = index_shards(index)
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise InputError(f"model folder {folder}: {WEIGHTS_INDEX} lists {', '.join(missing[:3])}"
                             f"{', ...' if len(missing) > 3 else ''}, which is not there; copy every shard.")
        return [folder / name for name in shards]
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    pickled = sorted(path.name for pattern in PICKLE_PATTERNS for path in folder.glob(pattern))
    if pickled:
        raise InputError(f"model folder {folder} has only pickle weights ({', '.join(pickled)}), which are never "
                         "loaded because unpickling can run code; convert them to safetensors where you trust them "
                         "(save_pretrained(..., safe_serialization=True)).")
    raise InputError(f"model folder {folder} has no {WEIGHTS} (nor {WEIGHTS_INDEX} with its shards); only "
                     "safetensors weights are loaded (no pickle).")


def index_shards(index: Path) -> list[str]:
    """The shard files a model.safetensors.index.json lists, in order, each once.

    Args:
        index: the index file.
    Returns:
        The shards' names (relative to the index's folder).
    Raises:
        InputError: not a safetensors index (a JSON object with a weight_map of names).
    """
    try:
        shards = list(dict.fromkeys(json.loads(Path(index).read_text())["weight_map"].values()))
        if not all(isinstance(name, str) and name for name in shards):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{index} is not a safetensors index (a JSON object with a weight_map); replace it "
                         "with the model's own file.") from None
    return shards


def usable_tokenizer(names: list[str]) -> bool:
    """Whether these TOKENIZER_FILES names make a tokenizer: tokenizer.json, tokenizer.model, or vocab.json with
    merges.txt."""
    return bool({"tokenizer.json", "tokenizer.model"} & set(names) or {"vocab.json", "merges.txt"} <= set(names))


def tokenizer_files(folder: Path) -> list[Path]:
    """The tokenizer files that are in the folder (those of TOKENIZER_FILES).

    Args:
        folder: a model folder.
    Returns:
        The existing files, in TOKENIZER_FILES order.
    Raises:
        InputError: none that a tokenizer can be built from (tokenizer.json, vocab.json with
            merges.txt, or tokenizer.model).
    """
    found = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not usable_tokenizer([path.name for path in found]):
        raise InputError(f"model folder {folder} has no tokenizer (tokenizer.json, vocab.json with merges.txt, or "
                         "tokenizer.model); put the model's own tokenizer files there.")
    return found


def model_files(folder: Path) -> list[Path]:
    """Every file of a model folder that decides an embedding: config, weights (and their index),
    tokenizer files. Files that are missing are the loader's to name, so this never raises.

    Args:
        folder: a model folder.
    Returns:
        The existing files, in a fixed order.
    """
    candidates = [folder / CONFIG, folder / WEIGHTS_INDEX]
    try:
        candidates += weight_files(folder)
    except InputError:
        candidates.append(folder / WEIGHTS)
    candidates += [folder / name for name in TOKENIZER_FILES]
    return [path for path in dict.fromkeys(candidates) if path.is_file()]


def downloaded_files(folder: Path) -> dict[str, str] | None:
    """The files get_model put into a hub model's folder, from its RECORD.

    Args:
        folder: resources/models/<id>/.
    Returns:
        {file name: sha256} as checked against the hub, or None when there is no readable record yet.
    """
    try:
        files = json.loads((folder / RECORD).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None
