"""Glue for Snakemake scripts and the CLI: a log file per job, one-sentence errors."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from .errors import InputError
from .leases import lease_gpus
from .store import disk_full, refused_write


class _LogFile:
    """The job's log file, which never fails the job: the first write it refuses (a full disk, a
    read-only folder) closes it with one line on stderr, and the log goes on on stderr alone.

    Without it each logging call on a full disk printed its own "--- Logging error ---" traceback,
    and a progress bar's write ended the job with an error that named no file.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            self.stream = open(path, "a", buffering=1)
        except OSError as error:
            self._give_up(error)

    def _give_up(self, error: OSError) -> None:
        self.stream = None
        reason = "no space left on the device" if disk_full(error) else (error.strerror or str(error))
        print(f"Note: the log file {self.path} cannot be written ({reason}); this job logs to stderr only.",
              file=sys.stderr)

    def write(self, text: str) -> int:
        if self.stream is not None:
            try:
                self.stream.write(text)
            except OSError as error:
                self._close_quietly()
                self._give_up(error)
        return len(text)

    def flush(self) -> None:
        if self.stream is not None:
            try:
                self.stream.flush()
            except OSError as error:
                self._close_quietly()
                self._give_up(error)

    def close(self) -> None:
        if self.stream is not None:
            self.flush()
            self._close_quietly()

    def _close_quietly(self) -> None:
        stream, self.stream = self.stream, None
        try:
            stream.close()  # flushes what is buffered: fails again on a full disk
        except OSError:
            pass

    encoding = "utf-8"

    def isatty(self) -> bool:
        return False


@contextmanager
def job(log_path: str | None, threads: int | None = None, gpus: int = 0):
    """Log to the job's log file (and stderr); turn InputError into one line and exit 1.

    With `gpus`, lease that many GPU ids first (before CUDA starts; see leases.py) and hold
    them until the job ends, however it ends.

    Args:
        log_path: the job's log file (appended to); None: stderr only. A log file that cannot be
            written (a full disk, a read-only folder) is given up with one line on stderr.
        threads: torch's intra-op threads; None: torch's default.
        gpus: GPU ids to lease (0: none).
    Yields:
        The log stream, for progress bars.
    Raises:
        SystemExit: 1 after logging an InputError, a full disk or a refused write (one sentence
            naming the file), 130 on an interrupt.
    """

    stream = _LogFile(log_path) if log_path else sys.stderr
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
    except Exception as error:  # an OSError, or a native writer's own type that only says the disk is full
        sentence = refused_write(error)
        if sentence is None:
            raise
        logging.getLogger("timekd_embed").error("%s", sentence)
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
