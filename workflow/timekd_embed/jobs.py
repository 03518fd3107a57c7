"""Glue for Snakemake scripts and the CLI: a log file per job, one-sentence errors."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

import torch

from .errors import InputError


@contextmanager
def job(log_path: str | None, threads: int | None = None):
    """Log to the job's log file (and stderr); turn InputError into one line and exit 1.

    Yields the open log file, for progress bars.
    """
    stream = open(log_path, "a", buffering=1) if log_path else sys.stderr
    handlers = [logging.StreamHandler(stream)] + ([logging.StreamHandler(sys.stderr)] if log_path else [])
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield stream
    except InputError as error:
        logging.getLogger("timekd_embed").error("%s", error)
        sys.exit(1)
    finally:
        if log_path:
            stream.close()
