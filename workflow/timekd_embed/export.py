"""One embeddings file -> the published TimeKD training layout: <out_dir>/<i>.h5 per window i,
each holding a dataset `embeddings` of shape (N, d), float32.

The published loaders (data_provider/data_loader_emb.py) open `<data_path>/<P>/<flag>/<i>.h5`
relative to the working directory and read `hf['embeddings']`, one file per window index.

Atomic and resumable:
- Files are written into a staging folder `.<split>.partial` beside `out_dir`, each under a
  temporary name renamed when complete, and the folder is renamed to `out_dir` only when all
  are there: the published loader never sees a half-exported split.
- The staging folder records which embeddings file it comes from (its sha256, checked against
  the file's record before anything is written). A rerun after a crash or kill keeps the
  complete files already there and writes the rest; a staging folder from another
  embeddings file is discarded. (Snakemake deletes a failed job's declared output, so the
  staging folder must not be the output itself.)
- Each file is built in memory by HDF5's core driver (the same bytes as a file written in
  place) and written by Python: a full disk is then one OSError naming the file, not HDF5's
  error stack (and a crash in h5py's cleanup) with a torn temporary file behind.
- Files are fsynced together at the end, in parallel, not one by one: 40k sequential fsyncs
  would cost minutes, and the final rename comes after them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import InputError
from .loader import map_tensor
from .records import check_record, read_metadata
from .store import atomic_path, fsync, publish_dir, write_json

log = logging.getLogger(__name__)

DATASET = "embeddings"  # the key the published loaders read
STAMP = ".source.json"  # inside the staging folder: which embeddings file it is being filled from


def _h5py():
    try:
        import h5py
    except ImportError:
        raise InputError("the export needs h5py, which is not installed; run `pip install -e '.[export]'` "
                         "(or use --sdm conda, whose environment has it).") from None
    return h5py


def staging_dir(out_dir: Path) -> Path:
    """The staging folder of `out_dir`: `.<name>.partial` beside it."""
    return out_dir.parent / f".{out_dir.name}.partial"


def source_stamp(path: Path) -> dict:
    """{"file", "sha256"} of one embeddings file, its sha256 checked against its record.

    Raises:
        InputError: the file is damaged, or has no record (check_record).
    """
    return {"file": path.name, "sha256": check_record(path)}


def _write_h5(h5py, path: Path, row: np.ndarray) -> None:
    # HDF5's core driver builds the file in memory (backing_store=False: nothing is written by
    # HDF5 itself); Python writes its bytes, so a full disk raises a plain OSError.
    with h5py.File(path.name, "w", driver="core", backing_store=False) as h5_file:
        h5_file.create_dataset(DATASET, data=row)  # contiguous, uncompressed: as the published store_emb.py
        h5_file.flush()
        image = h5_file.id.get_file_image()
    with atomic_path(path, durable=False, record=False) as tmp:  # fsync in bulk later; train.py reads no records
        tmp.write_bytes(image)


def _file_size(h5py, folder: Path, shape: tuple[int, ...]) -> int:
    """Bytes of one complete file of this shape (all are equal): a cheap check on resumed files."""
    probe = folder / ".probe.h5"
    try:
        _write_h5(h5py, probe, np.zeros(shape, dtype=np.float32))
        return probe.stat().st_size
    finally:
        probe.unlink(missing_ok=True)


def _prepare_staging(staging: Path, stamp: dict) -> bool:
    """Make the staging folder; True if it holds files from this very embeddings file."""
    stamp_path = staging / STAMP
    if staging.is_dir():
        try:
            same = json.loads(stamp_path.read_text()) == stamp
        except (OSError, ValueError):
            same = False
        if same:
            return True
        log.info("%s: left by an export of another embeddings file; starting over", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    write_json(stamp_path, stamp, record=False)
    return False


def export_split(embeddings: str | os.PathLike, out_dir: str | os.PathLike, log_file=None) -> dict:
    """Write <out_dir>/<i>.h5 for every window i of one embeddings file, in the layout the
    published data_provider/data_loader_emb.py reads.

    Args:
        embeddings: the gathered embeddings file of one (horizon, split).
        out_dir: the split's folder, <export_root>/<name>/<P>/<split>; replaced whole.
        log_file: where the progress bar goes.
    Returns:
        {"files", "written", "resumed" (kept from an interrupted run), "shape" [N, d], "wall_s"}.
    Raises:
        InputError: the file is not an extraction result (shape, dtype, window starts), or as map_tensor
            and records.check_record (a file damaged since it was written is never exported).
    """
    h5py = _h5py()
    embeddings, out_dir = Path(embeddings), Path(out_dir)
    stored = map_tensor(embeddings, "embeddings")  # (n, N, d) float32, mapped

    starts = np.asarray(map_tensor(embeddings, "window_start"))  # (n,)
    if stored.ndim != 3 or stored.dtype != np.float32 or len(starts) != len(stored):
        raise InputError(f"{embeddings}: embeddings of shape {stored.shape} and dtype {stored.dtype} with "
                         f"{len(starts)} window starts are not an extraction result; rerun its extraction.")
    _warn_if_partial(embeddings, starts)

    began = time.perf_counter()
    staging = staging_dir(out_dir)
    resumed = _prepare_staging(staging, source_stamp(embeddings))
    complete = _file_size(h5py, staging, stored.shape[1:])
    written = skipped = 0
    names = [f"{int(i)}.h5" for i in starts]
    with tqdm(total=len(names), unit="file", file=log_file, mininterval=5.0, dynamic_ncols=False,
              desc=f"export {out_dir.parent.name}/{out_dir.name}") as bar:
        for row, name in enumerate(names):
            path = staging / name
            if resumed and path.is_file() and path.stat().st_size == complete:
                skipped += 1
            else:
                _write_h5(h5py, path, np.ascontiguousarray(stored[row]))
                written += 1
            bar.update(1)
    with ThreadPoolExecutor(max_workers=16) as pool:  # fsync releases the GIL; the disk takes them in bulk
        list(pool.map(fsync, [staging / name for name in names]))
    expected = set(names)
    for path in staging.iterdir():  # the stamp and any temporary file a killed run left
        if path.name not in expected:
            path.unlink()
    fsync(staging)
    publish_dir(staging, out_dir)
    wall = time.perf_counter() - began
    log.info("%s: %d files (%d written, %d kept from an interrupted run) of shape %s float32 in %.1f s",
             out_dir, len(names), written, skipped, tuple(stored.shape[1:]), wall)
    return {"files": len(names), "written": written, "resumed": skipped, "shape": list(stored.shape[1:]),
            "wall_s": round(wall, 3)}


def _warn_if_partial(embeddings: Path, starts: np.ndarray) -> None:
    limit = json.loads(read_metadata(embeddings).get("limit_windows", "null"))
    if limit is not None:
        log.warning("%s: only windows %d..%d were extracted (limit_windows = %d); the published train.py reads "
                    "every window of a split and will stop at the first missing file", embeddings,
                    int(starts.min(initial=0)), int(starts.max(initial=-1)), limit)
