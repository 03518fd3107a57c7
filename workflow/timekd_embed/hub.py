"""Files of a Hugging Face hub repository at one commit, fetched through the hub cache and checked
against the hub's own hashes.

The hub names every file by a hash of its bytes, its ETag, which huggingface_hub keeps as the
file's name in its cache (`<cache>/<type>s--<org>--<name>/blobs/<etag>`; "Understand caching"
in the huggingface_hub documentation): the sha256 for a file stored with git LFS (weights, large
tokenizer files, datasets), the git blob sha1 for one stored in git (config.json, small JSON).
A blob damaged in transfer or on the disk (truncated, a block of zeros) no longer has its
name's hash: it is fetched once more when the hub can be reached, else named in one sentence
(delete it, then fetch again). The cache answers first, without the network, so
`HF_HUB_OFFLINE=1` with a filled cache works on nodes that cannot reach the hub.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .errors import InputError

# Seconds to wait for a TCP connection to the hub before calling it unreachable. Without this
# check huggingface_hub retries a failed request five times with backoff (about 25 s offline).
HUB_CONNECT_TIMEOUT = 5.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (huggingface_hub's run to many lines), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def hub_reachable() -> str | None:
    """None when the hub can be asked, else why not (HF_HUB_OFFLINE, or no TCP connection in time)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_CONNECT_TIMEOUT).close()
    except OSError as exc:
        return f"the hub {endpoint.hostname}:{port} cannot be reached: {exc}"
    return None


def content_hash(path: str | Path, etag: str) -> str:
    """The hash of a file's bytes of the kind `etag` is: sha256 (LFS), or git's blob sha1 (a file in git:
    sha1 of "blob <size>\\0" and the bytes).

    Args:
        path: the file; etag: the hub's hash of it (64 or 40 hex digits).
    Returns:
        The file's hash of that kind (hex).
    Raises:
        ValueError: an etag of neither kind.
    """
    from .records import sha256_file

    if _SHA256.match(etag):
        return sha256_file(path)
    if not _GIT_SHA1.match(etag):
        raise ValueError(f"not a sha256 or git sha1: {etag!r}")
    digest = hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode())
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def listing(repo: str, revision: str | None, repo_type: str | None = None, online: bool = True) -> dict[str, str]:
    """Every file of the repository at `revision` with the hub's hash of it.

    From the hub when it can be reached (its file metadata: the LFS sha256, else the git blob
    id), else from the hub cache's snapshot of that commit (each file's blob name).

    Args:
        repo: the repository id; revision: a commit (None: main); repo_type: None (a model) or "dataset";
        online: whether the hub can be asked (hub_reachable() is None).
    Returns:
        {file name: hash}; {} when neither the hub nor the cache knows the commit.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.file_download import repo_folder_name

    if online:
        info = HfApi().repo_info(repo, revision=revision, repo_type=repo_type, files_metadata=True)
        return {sibling.rfilename: sibling.lfs.sha256 if sibling.lfs else sibling.blob_id
                for sibling in info.siblings or []}
    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type=repo_type or "model")
    commit = revision or "main"
    if (folder / "refs" / commit).is_file():
        commit = (folder / "refs" / commit).read_text().strip()
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir():
        return {}
    return {path.relative_to(snapshot).as_posix(): path.resolve().name for path in sorted(snapshot.rglob("*"))
            if path.is_file()}


def _download(repo: str, filename: str, revision: str | None, repo_type: str | None, force: bool) -> Path:
    """One file through the hub cache: the cache first, the network only for a file missing there
    (or when `force`), and only once the hub answers a TCP connection in time."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not force:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision, repo_type=repo_type,
                                        local_files_only=True))
        except LocalEntryNotFoundError:
            pass
    why = hub_reachable()
    if why is not None:
        raise ConnectionError(why)
    return Path(hf_hub_download(repo, filename, revision=revision, repo_type=repo_type, force_download=force))


def verified_file(repo: str, filename: str, revision: str | None, repo_type: str | None = None,
                  expected: str | None = None) -> Path:
    """A repository file from the hub cache whose bytes have the hub's hash, fetched once more when not.

    Args:
        repo, filename, revision, repo_type: what to fetch (revision None: main).
        expected: the hub's hash of the file (listing); None: its blob name in the cache.
    Returns:
        The cached file (a link into blobs/, whose bytes were checked).
    Raises:
        ConnectionError, OSError, huggingface_hub's errors: the file cannot be fetched.
        InputError: the cached bytes differ from the hub's hash and cannot be fetched again (offline),
            or differ again after one more download; the sentence names the blob to delete.
    """
    path = _download(repo, filename, revision, repo_type, force=False)
    for attempt in range(2):
        blob = path.resolve()
        etag = expected or blob.name
        if content_hash(path, etag) == etag:
            return path
        why = hub_reachable()
        if attempt == 1 or why is not None:
            break
        path = _download(repo, filename, revision, repo_type, force=True)  # the hub's copy over the damaged one
    where = f"{filename} of {repo} at {'commit ' + revision if revision else 'its main branch'}"
    retry = "rerun: it is downloaded again" if why is None else f"rerun where the hub can be reached ({why})"
    raise InputError(f"{blob} in the Hugging Face cache is damaged: its bytes do not have the hash {etag} the hub "
                     f"gives {where}{' (also after a second download)' if why is None else ''}; delete that file "
                     f"and {retry}.")
