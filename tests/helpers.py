"""What the end-to-end tests share: the real `snakemake` and `timekd-embed` commands on this
checkout, a config on and cuts of the real weather.csv, and the one parser of Snakemake's job table."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import yaml

import forked_cli
from conftest import ROOT, WEATHER_CSV

BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile")]
TIMEKD_EMBED = str(BIN / "timekd-embed")
# This checkout's package, also when a command runs in another folder.
PACKAGE_ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "workflow"), os.environ.get("PYTHONPATH")]))}
FINAL_RULES = ("all", "manifest")  # they rerun whenever anything does


def snakemake(workdir: Path, config: dict | None, *args: str, configfile: str = "config.yaml", env: dict | None = None,
              umask: int | None = None, timeout: int = 900, fresh: bool = False) -> subprocess.CompletedProcess:
    """This checkout's Snakefile run by the real CLI in `workdir` with the config file `workdir/configfile`.

    `config` is written there first; None runs the file as it is. `umask` is set in the child.
    `fresh`: the installed `snakemake` script in a new interpreter, exactly as users type it (the
    shared end-to-end runs); otherwise the same entry point forked from a server that imported
    Snakemake once (forked_cli), a second faster per call.
    """
    configfile = workdir / configfile
    if config is not None:
        configfile.write_text(yaml.safe_dump(config))
    # The arguments first: --configfile takes every word after it up to the next option.
    return snakemake_command([*args, "-d", str(workdir), "--configfile", str(configfile)], env=env, umask=umask,
                             timeout=timeout, fresh=fresh, snakefile=ROOT / "Snakefile")


def snakemake_command(args: list[str], cwd: Path | None = None, env: dict | None = None, umask: int | None = None,
                      timeout: int = 900, fresh: bool = False, snakefile: Path | None = None
                      ) -> subprocess.CompletedProcess:
    """`snakemake ARGS` in `cwd` (with `-s snakefile` first when given), captured as text; see snakemake()."""
    argv = [str(BIN / "snakemake"), *(["-s", str(snakefile)] if snakefile else []), *args]
    environment = os.environ | (env or {})
    if not fresh:
        return forked_cli.run(argv, cwd or Path.cwd(), environment, umask=umask, timeout=timeout)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=environment, cwd=cwd,
                          preexec_fn=None if umask is None else functools.partial(os.umask, umask))


def timekd_embed(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed `timekd-embed` command, importing this checkout's package."""
    return subprocess.run([TIMEKD_EMBED, *args], check=False, capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=os.environ | PACKAGE_ENV | (env or {}))


def timekd_embed_in_process(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`timekd-embed ARGS` through the entry point the installed command calls (cli.main), in this
    process: the same code without a fresh interpreter's seconds of imports. Environment variables
    the libraries read at import time need the real command (timekd_embed)."""
    from timekd_embed.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or Path.cwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exit_:
            code = exit_.code
    return subprocess.CompletedProcess(["timekd-embed", *args], code, out.getvalue(), err.getvalue())


def weather_config(**overrides) -> dict:
    """The default config on the real weather.csv, with `overrides` as top-level keys."""
    return {"dataset": {"name": "weather", "csv": str(WEATHER_CSV)}} | overrides


def weather_rows(path: Path, rows: int, columns: list[int] | None = None, skip: int = 0) -> Path:
    """The first `rows` data rows of weather.csv (after `skip`), header included; optionally some columns only."""
    lines = WEATHER_CSV.read_bytes().splitlines(keepends=True)
    picked = [lines[0]] + lines[1 + skip:1 + skip + rows]
    if columns is not None:
        picked = [b",".join(line.rstrip(b"\r\n").split(b",")[i] for i in columns) + b"\r\n" for line in picked]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(picked))
    return path


def job_counts(output: str) -> dict[str, int]:
    """rule -> jobs, from the first "Job stats" table in `output` (a dry run prints it on stdout,
    a real run on stderr)."""
    counts = {}
    for line in output.split("Job stats:")[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """A dry run's jobs per rule, the final rules left out; {} for "Nothing to be done"."""
    if "Job stats:" not in result.stdout:
        assert "Nothing to be done" in result.stdout + result.stderr, result.stderr[-3000:]
        return {}
    return {rule: n for rule, n in job_counts(result.stdout).items() if rule not in FINAL_RULES}


def modes_against_umask(results: Path, umask: int) -> dict[str, tuple[str, str]]:
    """Every file and folder under `results` whose mode is not what `umask` gives a new one
    (0666 / 0777 less the umask): {relative path: (mode, expected)}, {} when all agree.

    A shared results folder stays readable only if every writer honours the umask (a temporary
    file renamed into place keeps its own 0600 unless the writer restores it)."""
    wrong = {}
    for path in results.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        if mode != expected:
            wrong[str(path.relative_to(results))] = (oct(mode), oct(expected))
    return wrong


def weather_settings(model_dir: Path, **overrides):
    """The settings of a weather job on a local model folder (fp32, reference fidelity, every window)."""
    from timekd_embed.settings import Settings

    base = dict(name="weather", template=None, seq_len=96, model=str(model_dir), revision=None, layers=None,
                precision="fp32", fidelity="reference", limit_windows=None)
    return Settings(**(base | overrides))


def extract_one(settings, windows_path: Path, sca_path: Path, out: Path, stats: Path, pred_len: int = 24,
                split: str = "train", shard: tuple[int, int] | None = None, log_file=None, **runtime) -> dict:
    """extract_horizons for one horizon on the CPU (runtime keys as overrides): its stats."""
    from timekd_embed.extract import extract_horizons
    from timekd_embed.settings import Runtime

    return extract_horizons(settings, Runtime(**({"device": "cpu"} | runtime)), split, [pred_len], windows_path,
                            sca_path, {pred_len: (out, stats)}, log_file, shard)[pred_len]


def fresh_clone(folder: Path) -> Path:
    """This checkout as `git clone` gives it to a user, in `folder`: the tracked files and the untracked ones
    git does not ignore (the change under test), committed in a git repository of its own so that
    `git status` there says what a command left behind; modification times kept, and this test run's
    environment linked in as `.venv`.

    `make` then finds `.venv` up to date and does not reinstall it: every make target installs into
    `.venv` first when pyproject.toml is newer than `.venv/.installed`, and that `.venv` is the test run's
    own, whose editable install would then point into `folder`. So a checkout whose pyproject.toml changed
    since `make bootstrap` is refused (run it first).
    """
    venv = Path(sys.executable).parents[1]
    installed = venv / ".installed"
    if not installed.is_file() or installed.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        raise RuntimeError(f"{venv} is older than pyproject.toml (or not made by make bootstrap): run `make "
                           "bootstrap` before the tests that run make targets in a clone")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    git = ["git", "-C", str(folder), "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "clone"], check=True)
    (folder / ".venv").symlink_to(venv)
    # The test's own arrangements, not the user's: the linked environment (a symlink, which the
    # .gitignore's `.venv/` does not match) and the hub cache the tests point at.
    (folder / ".git" / "info" / "exclude").write_text("/.venv\n/.hub-cache/\n")
    return folder


# A user's shell has none of these: the test run's own (PYTHONPATH; MAKELEVEL and friends when `make test`
# runs the tests, with which a make started by a test would think it is a sub-make).
NOT_A_USERS = ("PYTHONPATH", "MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")


def users_environment(**extra: str) -> dict[str, str]:
    """This process's environment as a user's shell has it (NOT_A_USERS left out), with `extra` set."""
    return {key: value for key, value in os.environ.items() if key not in NOT_A_USERS} | extra


def left_in_the_tree(clone: Path) -> list[str]:
    """What `git status` in a fresh_clone offers to commit: every file the commands there left that the
    repository's .gitignore does not cover, and every tracked file they changed."""
    status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain", "--untracked-files=all"], check=True,
                            capture_output=True, text=True)
    return status.stdout.splitlines()
