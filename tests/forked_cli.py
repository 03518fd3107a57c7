"""The `snakemake` command without a new interpreter per call.

A server process imports `snakemake.cli` once (multiprocessing's forkserver); every call forks
it and the child runs `snakemake.cli.main`, the function the installed `snakemake` script calls,
with its own arguments, folder, environment and umask, its output in files the caller reads
back. A dry run takes about 1.0 s instead of 2.3 s here: the rest of a call is parsing the
Snakefile, which every child still does. Nothing of this repository is imported before that
parse, so each call reads the package and the rule files as they are now (test_reruns edits them).

This module imports nothing of the project: the child imports it to find `_main`.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_SERVER = multiprocessing.get_context("forkserver")
_SERVER.set_forkserver_preload(["snakemake.cli"])


def _main(argv: list[str], cwd: str, env: dict[str, str], umask: int | None, out: str, err: str) -> None:
    """In the forked child: become `argv` run in `cwd`, then exit with snakemake's exit code."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if umask is not None:
        os.umask(umask)
    for descriptor, path in ((1, out), (2, err)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(file, descriptor)
        os.close(file)
    sys.argv = list(argv)
    from snakemake.cli import main

    try:
        main(argv[1:])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    if isinstance(code, str):                     # what the interpreter does with sys.exit("message")
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else int(code is not None))


def run(argv: list[str], cwd: Path, env: dict[str, str], umask: int | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """`argv` (the snakemake command and its arguments) as subprocess.run(..., capture_output=True,
    text=True) would run it, with `env` as the whole environment.

    Raises:
        subprocess.TimeoutExpired: the call outlived `timeout` seconds (the child is killed).
    """
    with tempfile.TemporaryDirectory(prefix="snakemake-cli-") as folder:
        out, err = f"{folder}/stdout", f"{folder}/stderr"
        child = _SERVER.Process(target=_main, args=(list(argv), str(cwd), dict(env), umask, out, err))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(argv, timeout)
        return subprocess.CompletedProcess(list(argv), child.exitcode, _read(out), _read(err))


def _read(path: str) -> str:
    """A child's output file; empty where it died before opening it."""
    return Path(path).read_text(errors="replace") if os.path.exists(path) else ""
