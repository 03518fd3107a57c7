"""GPU leases on a node shared by several users: one lock folder for all, every lock file
lockable by every user, and one sentence (never a traceback) for a lock file or folder left
behind that this user cannot use. The second user is `nobody`, run by root with setpriv or
runuser; CI runs as root, so there these tests never skip."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT

NOBODY = 65534
# A job of the workflow as the scripts open it (jobs.job with `gpus`): print the GPU ids it
# holds, then hold them for argv[1] seconds.
JOB = """
import os, sys, time
from timekd_embed.jobs import job
with job(None, gpus=1):
    print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
    time.sleep(float(sys.argv[1]))
"""


def not_here(reason: str):
    """Skip where a second user cannot be had; in CI (CI=true), where it always can, fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI runs the tests as root with setpriv or runuser installed")
    pytest.skip(reason)


def as_nobody() -> list[str]:
    """The command prefix that runs what follows as user nobody."""
    if os.geteuid() != 0:
        not_here("running a command as a second user needs root")
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    not_here("neither setpriv nor runuser is installed, so no command can run as a second user")


@pytest.fixture
def node(monkeypatch):
    """A 2-GPU node's environment with a lock folder under a /tmp folder every user may enter
    (pytest's tmp_path is root's alone); yields (lock folder, environment)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    base = Path(tempfile.mkdtemp(prefix="timekd-leases-users-", dir="/tmp"))
    base.chmod(0o755)
    env = os.environ | {"TIMEKD_NODE_GPUS": "2", "TIMEKD_GPU_LOCK_DIR": str(base / "locks"),
                        "PYTHONPATH": str(ROOT / "workflow"), "HOME": str(base)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    yield base / "locks", env
    shutil.rmtree(base)


def start_job(env: dict, hold_s: float, user: list[str] = ()) -> subprocess.Popen:
    """A job holding 1 GPU for `hold_s` seconds, as root or (user=as_nobody()) as nobody, under umask 022."""
    return subprocess.Popen([*user, sys.executable, "-c", JOB, str(hold_s)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd="/tmp", umask=0o022)


def held_ids(job: subprocess.Popen) -> str:
    """The ids a started job printed once it held them (its stderr when it failed instead)."""
    line = job.stdout.readline().strip()
    if not line:
        job.wait()
        raise AssertionError(f"the job exited {job.returncode} holding nothing: {job.stderr.read()[-3000:]}")
    return line


def run_job(env: dict, user: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*user, sys.executable, "-c", JOB, "0"], capture_output=True, text=True, env=env,
                          cwd="/tmp", umask=0o022, timeout=60)


def test_two_users_share_the_node_and_never_a_gpu(node):
    """root leases first under umask 022 (its lock files were 0644 in a 0755 folder, and every
    other user's jobs failed with PermissionError); nobody's job then takes the other GPU, and a
    third job finds both taken, whoever runs it."""
    locks, env = node
    nobody = as_nobody()
    first = start_job(env, 60)
    second = None
    try:
        assert held_ids(first) == "0"
        assert stat.S_IMODE(locks.stat().st_mode) == 0o1777
        assert stat.S_IMODE((locks / "gpu0.lock").stat().st_mode) == 0o666
        second = start_job(env, 60, nobody)
        assert held_ids(second) == "1"
        lock = (locks / "gpu1.lock").stat()
        assert (lock.st_uid, stat.S_IMODE(lock.st_mode)) == (NOBODY, 0o666)
        for user in ([], nobody):                   # a third job, as either user: both GPUs are taken
            third = start_job(env, 0, user)
            said = third.stderr.readline()
            third.kill()
            assert "waiting for 1 free GPU(s) of 2" in said, said + third.communicate()[1]
    finally:
        for job in (first, second):
            if job is not None:
                job.kill()
                job.wait()


def leftover(locks: Path, files: dict[str, int]) -> None:
    """What an older version left, root's own: the folder 0755 and lock files of the given modes."""
    locks.mkdir(mode=0o755)
    locks.chmod(0o755)
    for name, mode in files.items():
        (locks / name).touch()
        (locks / name).chmod(mode)


def test_a_leftover_lock_file_of_another_user_is_locked_read_only(node):
    """An older version's gpu0.lock (root's, 0644) in its 0755 folder: nobody may read, not write
    it, and a lock needs no more; on a 1-GPU node nobody's job takes GPU 0."""
    locks, env = node
    leftover(locks, {"gpu0.lock": 0o644})
    result = run_job(env | {"TIMEKD_NODE_GPUS": "1"}, as_nobody())
    assert (result.returncode, result.stdout.strip()) == (0, "0"), result.stderr[-3000:]


@pytest.mark.parametrize("files, sentence", [
    ({"gpu0.lock": 0o600}, "cannot lock the GPU lock file {locks}/gpu0.lock (owner root, mode 0600): every user's "
                           "jobs lock it to share this node's GPUs; ask root to run `chmod 0666 "
                           "{locks}/gpu0.lock`."),
    ({}, "cannot create a GPU lock file in {locks} (owner root, mode 0755): every user's jobs lock their GPUs "
         "there; ask root to run `chmod 1777 {locks}`."),
], ids=["lock-file-0600", "folder-0755"])
def test_a_leftover_nobody_can_use_gives_one_sentence(node, files, sentence):
    locks, env = node
    leftover(locks, files)
    result = run_job(env, as_nobody())
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f" ERROR timekd_embed: {sentence.format(locks=locks)}"), lines
