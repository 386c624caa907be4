"""One run per workdir: a lock that process 0 of a run holds from its start to its end.

Two runs on one workdir (the same command started twice) would save checkpoints over each
other (orbax's manager deletes the other's unfinished saves when it is created) and write every
metrics record twice. So a run locks ``<workdir>/run.lock`` before it reads or writes anything
in the workdir, and a second run stops at once, naming the first (host, process id, start time,
command) and touching nothing.

Mechanism: ``flock(LOCK_EX | LOCK_NB)`` on the lock file. The kernel releases a flock when its
process ends in any way (SIGKILL, a crash, a node reboot for a local disk), so a killed run
never leaves a stuck lock; the file's text only says who holds it, and a finished run removes
it. The processes of one multi-process job share the workdir by design: process 0 holds the
lock for the job, and every process learns whether it got it, so the whole job stops together.

File systems (``flock(2)``, ``nfs(5)``):

* a local disk: the lock works between all processes of the machine.
* NFS (a SLURM cluster's shared home or project space): Linux clients implement ``flock`` on
  NFS with byte-range locks that the server arbitrates (NFSv4; NFSv3 through its lock daemon),
  so the lock works across hosts, unless the file system is mounted with ``nolock`` or
  ``local_lock=flock``/``all``: then each host sees only its own locks, and two runs on two
  hosts are not stopped. Lustre: across nodes when mounted with ``flock``, per node with
  ``localflock``. When ``flock`` itself fails (ENOLCK, ENOSYS, EOPNOTSUPP: no lock service,
  e.g. Lustre mounted with neither), the run logs a warning and runs unlocked.
* ``gs://`` (and any other URL): object stores have no locks. Nothing is locked; a warning says
  so. Start one job per workdir yourself: e.g. ``launch/tpu_pod.sh stop`` and wait for the log's
  last line before ``train`` again, and give every concurrent job its own ``RUN_NAME``.

A lock that only guards one host's processes is not a lock against a second job on another
host: that is what the warnings are for.
"""

import errno
import fcntl
import os
import socket
import sys
import time
from typing import List, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

LOCK_FILE = "run.lock"
# flock's errors where the file system offers no locks at all (no lock service).
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)
_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir."""


class WorkdirLock:
  """What :func:`acquire` returns; ``release()`` (or leaving a ``with`` block) ends it."""

  def __init__(self, workdir: str, fd: Optional[int] = None, created: List[str] = ()):
    self.workdir = workdir
    self._fd = fd
    self._created = list(created)  # Directories the lock created, outermost first.

  def release(self) -> None:
    """Removes the lock file, unlocks, and removes the directories the lock created if they are
    still empty (a run refused after locking leaves the file system as it was)."""
    if self._fd is not None:
      try:
        os.unlink(os.path.join(self.workdir, LOCK_FILE))  # Still locked: see _lock_file.
      except FileNotFoundError:
        pass
      os.close(self._fd)
      self._fd = None
    for directory in reversed(self._created):
      try:
        os.rmdir(directory)
      except OSError:  # Not empty (the run wrote its files) or gone: keep the rest.
        break
    self._created = []

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()


def acquire(workdir: str) -> WorkdirLock:
  """Locks ``workdir`` for this run (process 0 for a multi-process job; every process calls it).

  Raises:
    WorkdirLockedError: another run holds it (on every process of the job; process 0's message
      names the other run's host and process id).
  """
  if jax.process_count() == 1:
    return _acquire(workdir)
  lock, failure = WorkdirLock(workdir), None
  if jax.process_index() == 0:
    try:
      lock = _acquire(workdir)
    except Exception as e:  # pylint: disable=broad-except  # Told to all, raised below.
      failure = e
  # Every process learns the outcome, so the whole job stops, not process 0 alone.
  failed = bool(multihost_utils.broadcast_one_to_all(np.int32(failure is not None)))
  if failure is not None:
    raise failure
  if failed:
    raise WorkdirLockedError(f"Process 0 could not lock {workdir} (its log says why: another run "
                             "holds it, or the lock file cannot be created); stopping.")
  return lock


def _acquire(workdir: str) -> WorkdirLock:
  if "://" in workdir:
    logging.warning(
        "The workdir %s is not locked: %s has no file locks, so nothing stops a second run "
        "on it. Run one job per workdir (docs/runs.md).", workdir, workdir.split("://")[0] + "://")
    return WorkdirLock(workdir)
  created = _make_dirs(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = _lock_file(path)
  except WorkdirLockedError:
    raise
  except OSError as e:
    if e.errno not in _NO_LOCKS:
      WorkdirLock(workdir, created=created).release()
      raise
    logging.warning(
        "The workdir %s cannot be locked (flock: %s): this file system offers no locks, so "
        "nothing stops a second run on it; run one job per workdir (docs/runs.md).", workdir,
        os.strerror(e.errno))
    _unlink_quietly(path)
    return WorkdirLock(workdir, created=created)
  holder = (f"process {os.getpid()} on host {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}, command: {' '.join(sys.argv)[:500]}\n")
  try:
    os.ftruncate(fd, 0)
    os.write(fd, holder.encode())
  except OSError:  # Only the text is lost (a full disk, say); the lock holds.
    pass
  return WorkdirLock(workdir, fd=fd, created=created)


def _lock_file(path: str) -> int:
  """An open descriptor of ``path`` that this process holds an exclusive flock on."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      held = e.errno in _HELD
      holder = _read(fd) if held else ""
      os.close(fd)
      if held:
        raise WorkdirLockedError(
            f"The workdir {os.path.dirname(path)} is in use by another run: "
            f"{holder.strip() or 'a run that has not written its name yet'} (lock file {path}). "
            "Two runs on one workdir would overwrite each other's checkpoints and logs. Wait "
            "for it to end, stop it (SIGTERM: it saves a checkpoint and exits), or give this "
            "run another workdir.") from None
      raise
    # The last holder removes the file when it releases it; if that happened between our open
    # and our flock, we hold a lock on a removed file: try again on the current one.
    try:
      current = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
      current = False
    if current:
      return fd
    os.close(fd)


def _read(fd: int) -> str:
  try:
    return os.pread(fd, 4096, 0).decode(errors="replace")
  except OSError:
    return ""


def _make_dirs(workdir: str) -> List[str]:
  """Creates ``workdir`` and its missing parents; returns those it created, outermost first."""
  missing, directory = [], os.path.abspath(workdir)
  while not os.path.isdir(directory):
    missing.append(directory)
    directory = os.path.dirname(directory)
  os.makedirs(workdir, exist_ok=True)
  return missing[::-1]


def _unlink_quietly(path: str) -> None:
  try:
    os.unlink(path)
  except OSError:
    pass
