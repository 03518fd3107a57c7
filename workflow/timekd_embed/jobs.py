"""Glue for Snakemake scripts and the CLI: a log file per job, one-sentence errors."""

from __future__ import annotations

import errno
import logging
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

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
    differs = torch_is_not_the_pin()
    if differs:
        logging.getLogger("timekd_embed").warning("%s", differs)
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


def torch_is_not_the_pin() -> str | None:
    """A warning when the torch this Python imports is not the one `make bootstrap` installs from
    the pin (a site's own build: `make bootstrap SITE_TORCH=1`), found without importing torch.

    Returns:
        The sentence to log, or None for the pinned torch (its build labels, such as +cpu, count as
        the pin) or where the package or torch is not installed as a distribution.
    """
    try:
        pin = next((requirement.split("==", 1)[1].split(";")[0].strip()
                    for requirement in metadata.requires("timekd-embed") or []
                    if requirement.replace(" ", "").startswith("torch==")), None)
        torch = metadata.distribution("torch")
    except metadata.PackageNotFoundError:
        return None
    location = Path(torch.locate_file("")).resolve()
    if pin is None or (torch.version.split("+")[0] == pin and location.is_relative_to(Path(sys.prefix).resolve())):
        return None
    return (f"torch {torch.version} from {location} is not the pinned torch=={pin} that make bootstrap installs "
            "(a site's torch): results may differ in the last bits from runs with the pinned torch; every "
            "artifact records the versions it was made with.")
