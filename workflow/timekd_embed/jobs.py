"""Glue for Snakemake scripts and the CLI: a log file per job, one-sentence errors."""

from __future__ import annotations

import errno
import logging
import sys
from contextlib import contextmanager

from .errors import InputError
from .leases import lease_gpus


@contextmanager
def job(log_path: str | None, threads: int | None = None, gpus: int = 0):
    """Log to the job's log file (and stderr); turn InputError into one line and exit 1.

    With `gpus`, lease that many GPU ids first (before CUDA starts; see leases.py) and hold
    them until the job ends, however it ends.

    Args:
        log_path: the job's log file (appended to); None: stderr only.
        threads: torch's intra-op threads; None: torch's default.
        gpus: GPU ids to lease (0: none).
    Yields:
        The open log stream, for progress bars.
    Raises:
        SystemExit: 1 after logging an InputError or a full disk, 130 on an interrupt.
    """

    stream = open(log_path, "a", buffering=1) if log_path else sys.stderr
    handlers = [logging.StreamHandler(stream)] + ([logging.StreamHandler(sys.stderr)] if log_path else [])
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    if threads:
        import torch  # here, not above: jobs that never compute (windows, manifest, downloads) start 1 s sooner

        torch.set_num_threads(threads)
    lease = None
    try:
        if gpus:
            lease = lease_gpus(gpus)
        yield stream
    except InputError as error:
        logging.getLogger("timekd_embed").error("%s", error)
        sys.exit(1)
    except KeyboardInterrupt:
        logging.getLogger("timekd_embed").error("interrupted; nothing partial was kept, rerun to finish.")
        sys.exit(130)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        logging.getLogger("timekd_embed").error("no space left on the device while writing %s; free some space "
                                                "and rerun (nothing partial was kept).", error.filename or "a file")
        sys.exit(1)
    finally:
        if lease is not None:
            lease.release()
        if log_path:
            stream.close()
