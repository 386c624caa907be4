"""One run per workdir: a second run stops at once, naming the first; a killed run leaves no lock."""

import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from signin_jax import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from signin_jax import workdir_lock
lock = workdir_lock.acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
  """Another process that holds ``tmp_path/run`` (a run in progress, as far as the lock goes)."""
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER.format(repo=REPO), workdir],
                          stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "locked"
    yield workdir, proc
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.wait()


def test_a_second_run_is_refused_naming_the_first_and_a_killed_one_leaves_no_lock(holder):
  workdir, proc = holder
  before = sorted(os.listdir(workdir))
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match=rf"{workdir} is in use by another run: process {proc.pid} on host "
                           rf"{socket.gethostname()}, since .*{workdir_lock.LOCK_FILE}"):
    workdir_lock.acquire(workdir)
  assert sorted(os.listdir(workdir)) == before == [workdir_lock.LOCK_FILE]
  proc.send_signal(signal.SIGKILL)  # Killed: the kernel releases its lock with it.
  proc.wait()
  lock = workdir_lock.acquire(workdir)
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE)) as f:
    assert f"process {os.getpid()} on host {socket.gethostname()}" in f.read()
  lock.release()
  assert os.listdir(workdir) == []  # Released: the lock file is gone.


def test_a_refused_fresh_workdir_is_left_as_it_was(tmp_path):
  workdir = str(tmp_path / "new" / "run")
  with pytest.raises(RuntimeError, match="refused"):
    with workdir_lock.acquire(workdir):
      assert os.path.isfile(os.path.join(workdir, workdir_lock.LOCK_FILE))
      raise RuntimeError("refused")  # E.g. a config error found after locking.
  assert not os.path.exists(os.path.join(tmp_path, "new"))  # Created by the lock, removed.
  existing = str(tmp_path / "existing")
  os.makedirs(existing)
  with workdir_lock.acquire(existing):
    pass
  assert os.path.isdir(existing) and os.listdir(existing) == []  # The user's: kept.


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
  def no_locks(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

  monkeypatch.setattr(fcntl, "flock", no_locks)
  workdir = str(tmp_path / "run")
  with caplog.at_level(logging.WARNING):
    lock = workdir_lock.acquire(workdir)
  assert "cannot be locked" in caplog.text and workdir in caplog.text
  lock.release()
  assert not os.path.exists(workdir)


def test_a_gs_workdir_is_not_locked_and_says_so(caplog):
  with caplog.at_level(logging.WARNING):
    lock = workdir_lock.acquire("gs://some-bucket/runs/r50")  # No I/O at all.
  lock.release()
  assert "gs://some-bucket/runs/r50 is not locked" in caplog.text
