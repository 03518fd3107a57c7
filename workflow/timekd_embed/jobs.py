"""Glue for Snakemake scripts and the CLI: a log file per job, one-sentence errors."""

from __future__ import annotations

import logging
import os
import sys
import time
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


# What job() writes before its one sentence (the "timekd_embed" logger at level ERROR, in the
# format set above): the line failed_jobs() looks for in a failed job's log.
ERROR_MARK = " ERROR timekd_embed: "


def job_error(log_path: str | os.PathLike) -> str | None:
    """The one-sentence error job() logged last in a job's log file.

    Args:
        log_path: the job's log file.
    Returns:
        The sentence, or None when the log has none (a crash with a traceback, or no log).
    """
    try:
        lines = open(log_path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        return None
    found = [line.split(ERROR_MARK, 1)[1] for line in lines if ERROR_MARK in line]
    return found[-1] if found else None


def failed_jobs(snakemake_logs: list[str | os.PathLike]) -> list[tuple[str, list[str]]]:
    """The failed jobs of a Snakemake run, read from its own log file(s).

    Snakemake writes an "Error in rule NAME:" block per failed job, with a line
    "log: PATHS (check log file(s) for error details)" when the rule has a log.

    Args:
        snakemake_logs: the run's log files (what Snakemake passes to `onerror` as `log`).
    Returns:
        [(rule, [its log files])] in the order they failed (rules without a log: []).
    """
    failed: list[tuple[str, list[str]]] = []
    for path in snakemake_logs:
        try:
            lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("Error in rule ") and line.rstrip().endswith(":"):
                failed.append((line[len("Error in rule "):].rstrip().rstrip(":"), []))
            elif failed and line.startswith("    log: ") and "(check log file(s)" in line:
                failed[-1][1].extend(p.strip() for p in line[len("    log: "):].split(" (check log file(s)")[0]
                                     .split(","))
    return failed


def failure_summary(snakemake_logs: list[str | os.PathLike]) -> str:
    """What the user reads last when a run fails: each failed job's one sentence.

    Args:
        snakemake_logs: the run's log files (Snakemake's `onerror` argument).
    Returns:
        A few lines (no trailing newline): a heading, then per failed job its rule, its log file
        and its sentence (or where to look when it has none); "" when no failed job is found.
    """
    failed = failed_jobs(snakemake_logs)
    if not failed:
        return ""
    lines = [f"{len(failed)} job(s) failed:"]
    for rule, logs in failed:
        sentences = [sentence for sentence in map(job_error, logs) if sentence]
        where = f" (log: {', '.join(logs)})" if logs else ""
        text = sentences[-1] if sentences else "no one-sentence error in its log; see the traceback above"
        lines.append(f"- {rule}{where}: {text}")
    return "\n".join(lines)


class _LogAndConsole:
    """A file for tqdm: every update to the job's log; to stderr, where Snakemake's console shows it,
    one full line at most every `every` seconds, so that lines of jobs running side by side stay apart."""

    def __init__(self, log_file, every: float):
        self.log_file, self.every = log_file, every
        self.shown_at, self.last, self.last_shown = float("-inf"), "", ""

    def write(self, text: str) -> None:
        if self.log_file is not None and self.log_file is not sys.stderr:
            self.log_file.write(text)
        line = text.strip("\r\n ")
        if line:
            self.last = line
            if time.monotonic() - self.shown_at >= self.every:
                self.show()

    def show(self) -> None:
        if self.last and self.last != self.last_shown:
            sys.stderr.write(self.last + "\n")
            self.shown_at, self.last_shown = time.monotonic(), self.last

    def flush(self) -> None:
        if self.log_file is not None:
            self.log_file.flush()
        sys.stderr.flush()


@contextmanager
def progress_bar(log_file, total: int, unit: str, desc: str, every: float = 30.0, mininterval: float = 5.0):
    """A tqdm bar for a long job: in its log as it moves, and on the console (stderr) a line every
    `every` seconds and at the end (done of total, rate, ETA).

    Args:
        log_file: the job's log stream (job()'s); None or sys.stderr: the console only.
        total: the units of the whole job; unit: their name (e.g. "window"); desc: the bar's label.
        every: seconds between two console lines; mininterval: between two updates in the log.
    Yields:
        The tqdm bar (update(n) as n units finish).
    """
    out = _LogAndConsole(log_file, every)
    with _bar_class()(total=total, unit=unit, file=out, mininterval=mininterval, dynamic_ncols=False, desc=desc,
              ascii=False) as bar:
        yield bar
    out.show()  # the final state, also when the last line fell between two console lines


def _bar_class():
    """tqdm showing a count advanced in fractions (a window in parts, as its batches finish) with one
    decimal, and whole numbers as such: "1.3/4 window", "200/200 window"."""
    from tqdm import tqdm

    class FractionBar(tqdm):
        @property
        def format_dict(self):
            shown = super().format_dict
            n = round(float(shown["n"]), 1)
            shown["n"] = int(n) if n.is_integer() else n
            return shown

    return FractionBar
