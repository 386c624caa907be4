"""Checkpoints: an orbax CheckpointManager plus integrity checks and fallback to the last good step.

A checkpoint ``<directory>/<step>/`` holds three items:

* ``state``: the training state (params, BatchNorm statistics, optimizer state with the Sign-In
  factors, step, RNG), as global arrays replicated over all devices;
* ``extras``: host-side tensors the run needs to continue identically (masks, sign references);
* ``meta``: JSON: the step, the data position (batches consumed), elapsed time, the run's config
  (what a resumed run is compared with: resume_config.py), a fingerprint of the trees'
  structure, a checksum of every array, and a digest of the metadata itself.

Saving is collective (every process calls :func:`save`; orbax coordinates who writes what) and
atomic: orbax writes into a temporary directory and renames it when complete, so a process
killed mid-save leaves no half checkpoint under a step name. A state with a non-finite float is
never saved. On restore, every array is
checksummed again and compared with ``meta``; a checkpoint that cannot be read or does not
match is *corrupt*: it is moved aside to ``quarantine_dir`` (never deleted) and the previous
step is tried. Only keep-N retention (``keep``) ever deletes a written checkpoint.
:func:`saved_metas` reads the metadata without creating a manager (which deletes unfinished
saves when it is created), so a run can check a workdir before it is known to be valid.

The checksum of an array is ``sum_i bits(x_i) * (2 i + 1) mod 2**32`` over its elements' bit
patterns (as uint32). Integer sums are exact in any reduction order, so it is deterministic on
every backend, and because every weight ``2 i + 1`` is odd (invertible mod ``2**32``), changing
any single element always changes the checksum.
"""

import contextlib
import hashlib
import json
import os
import time
from typing import Any, Callable, Dict, NamedTuple, Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from signin_jax import metrics

ITEMS = ("state", "extras", "meta")


class CorruptCheckpointError(RuntimeError):
  """A checkpoint exists but cannot be read back as written."""


class Restored(NamedTuple):
  step: int
  state: Any
  extras: Any
  meta: Dict[str, Any]


def create_manager(directory: str, *, keep: int) -> ocp.CheckpointManager:
  """An orbax CheckpointManager over ``directory`` keeping the ``keep`` latest steps.

  Temporary directories of saves that never completed are reported, then removed by orbax.
  """
  if not metrics.is_remote(directory):  # URLs (gs://...) are absolute already.
    directory = os.path.abspath(directory)
  path = epath.Path(directory)
  if jax.process_index() == 0 and path.is_dir():
    for name in sorted(p.name for p in path.iterdir()):
      if ".orbax-checkpoint-tmp" in name:
        logging.warning("Ignoring incomplete checkpoint %s (a save was interrupted).",
                        path / name)
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(keep),
      create=True,
      cleanup_tmp_directories=True,
      # Synchronous: with orbax 0.12.8 on this machine, async saves intermittently lost their
      # temporary item directories before the commit ("Checkpoint directory does not exist"),
      # i.e. a written checkpoint could silently fail. A blocking save costs seconds per save.
      enable_async_checkpointing=False,
  )
  return ocp.CheckpointManager(directory, item_names=ITEMS, options=options)


def finished_steps(directory: str) -> list:
  """The steps of the finished checkpoints in ``directory`` ([] if there is none), read without
  creating a manager (which removes unfinished saves)."""
  return sorted(ocp.utils.checkpoint_steps(directory))


def _as_uint32(x: jax.Array) -> jax.Array:
  """The elements' bit patterns widened to uint32 (one or more words per element)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  itemsize = x.dtype.itemsize
  if itemsize == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if itemsize in (1, 2):
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes -> trailing axis of 2 words.


def _checksum(x: jax.Array) -> jax.Array:
  bits = _as_uint32(jnp.asarray(x)).reshape(-1)
  weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


class NonFiniteStateError(FloatingPointError):
  """A state with NaN or infinite floats was about to be saved; nothing was written."""


@jax.jit
def _integrity(items):
  """Per item: every leaf's checksum; and whether every float leaf of ``items`` is finite.

  One compiled function for saving and for verifying a restore (same trees, same program).
  """
  floats = [x for x in jax.tree.leaves(items) if jnp.issubdtype(x.dtype, jnp.inexact)]
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in floats])) if floats else True
  checksums = {name: [_checksum(x) for x in jax.tree.leaves(tree)]
               for name, tree in items.items()}
  return finite, checksums


def integrity(items: Dict[str, Any]):
  """``(all float leaves finite, {item: [checksum per leaf]})`` as python values."""
  finite, checksums = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)),
                                   _integrity(items))
  return bool(finite), {k: [int(c) for c in v] for k, v in checksums.items()}


def structure_fingerprint(tree) -> str:
  """A hash of the tree structure and every leaf's shape and dtype (not of the values)."""
  leaves, treedef = jax.tree.flatten(tree)
  text = str(treedef) + "".join(f"|{np.shape(x)}:{jnp.result_type(x)}" for x in leaves)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def save(manager: ocp.CheckpointManager, step: int, *, state, extras, meta: Dict[str, Any]):
  """Saves one checkpoint; returns when it is on disk.

  Every process must call this with identical (replicated) ``state`` and ``extras``.

  Raises:
    NonFiniteStateError: a float in ``state`` or ``extras`` is NaN or infinite (nothing is
      written: a checkpoint is always a state training can continue from).
  """
  finite, checksums = integrity({"state": state, "extras": extras})
  if not finite:
    raise NonFiniteStateError(f"the state at step {step} has non-finite values; not saved.")
  meta = dict(meta, step=int(step),
              fingerprint={"state": structure_fingerprint(state),
                           "extras": structure_fingerprint(extras)},
              checksums=checksums)
  meta["meta_digest"] = _meta_digest(meta)
  manager.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      extras=ocp.args.StandardSave(extras),
      meta=ocp.args.JsonSave(meta)))


def saved_metas(directory: str) -> Dict[int, Dict[str, Any]]:
  """The metadata of every checkpoint in ``directory`` that reads back intact, by step.

  Read only: unlike :func:`create_manager` (whose orbax manager deletes unfinished saves when it
  is created), nothing in ``directory`` changes, so a run can look before it is known to be
  valid. A checkpoint whose metadata cannot be read or fails its digest is left out: it is
  corrupt, and :func:`restore_latest_good` sets it aside later.
  """
  if not metrics.is_remote(directory):
    directory = os.path.abspath(directory)
  if not epath.Path(directory).is_dir():
    return {}
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                         cleanup_tmp_directories=False)
  with _without_read_only_warning():
    manager = ocp.CheckpointManager(directory, item_names=ITEMS, options=options)
  found = {}
  try:
    for step in manager.all_steps():
      try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      except Exception:  # pylint: disable=broad-except  # Unreadable: corrupt, handled later.
        continue
      if isinstance(meta, dict) and meta.get("meta_digest", _meta_digest(meta)) == _meta_digest(
          meta):
        found[step] = meta
  finally:
    manager.close()
  return found


@contextlib.contextmanager
def _without_read_only_warning():
  """Orbax warns 'Given directory is read only' for every read-only manager: that is intended."""

  def keep(record) -> bool:
    return not str(record.msg).startswith("Given directory is read only")

  absl_logger = logging.get_absl_logger()
  absl_logger.addFilter(keep)
  try:
    yield
  finally:
    absl_logger.removeFilter(keep)


def _meta_digest(meta: Dict[str, Any]) -> str:
  """SHA-256 of the metadata's canonical JSON, without the digest itself."""
  body = {k: v for k, v in meta.items() if k != "meta_digest"}
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _restore_verified(manager, step, state_target, extras_target) -> Restored:
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # Any failure to read the metadata makes the checkpoint unusable.
    raise CorruptCheckpointError(f"metadata unreadable: {e!r}") from e
  if not isinstance(meta, dict) or "checksums" not in meta or "fingerprint" not in meta:
    raise CorruptCheckpointError(f"metadata incomplete: {meta!r}")
  # Without its own digest, an edited fingerprint would read as "another config" (an error
  # that stops the run) instead of as the corruption it is. Older checkpoints have none.
  if "meta_digest" in meta and meta["meta_digest"] != _meta_digest(meta):
    raise CorruptCheckpointError("metadata digest mismatch (the metadata was altered)")
  expected = {"state": structure_fingerprint(state_target),
              "extras": structure_fingerprint(extras_target)}
  if meta["fingerprint"] != expected:
    raise ValueError(
        f"The checkpoint at step {step} in {manager.directory} was written by a run with a "
        "different model/optimizer/mask structure than the current config. Use a new workdir "
        "(or restore the original config) instead of resuming into this one.")
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state_target),
        extras=ocp.args.StandardRestore(extras_target)))
  except Exception as e:  # Missing or truncated files; tensorstore decode errors.
    raise CorruptCheckpointError(f"arrays unreadable: {e!r}") from e
  _, checksums = integrity({"state": restored["state"], "extras": restored["extras"]})
  for item in ("state", "extras"):
    if checksums[item] != meta["checksums"][item]:
      raise CorruptCheckpointError(f"checksum mismatch in '{item}'")
  return Restored(step=step, state=restored["state"], extras=restored["extras"], meta=meta)


def _shorten(text: str, limit: int = 400) -> str:
  return text if len(text) <= limit else text[:limit] + " ..."


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def quarantine(manager: ocp.CheckpointManager, step: int, quarantine_dir: str) -> str:
  """Moves checkpoint ``step`` out of the manager's directory (process 0), keeping its files."""
  target = os.path.join(quarantine_dir, f"{step}.{int(time.time())}")
  if jax.process_index() == 0:
    epath.Path(quarantine_dir).mkdir(parents=True, exist_ok=True)
    epath.Path(manager.directory, str(step)).rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"quarantine_checkpoint_{step}")
  manager.reload()
  return target


def restore_latest_good(manager: ocp.CheckpointManager, *, state_target, extras_target,
                        quarantine_dir: str,
                        log: Callable[[str], None] = logging.warning) -> Optional[Restored]:
  """Restores the newest checkpoint that reads back intact; None when there is none.

  Corrupt checkpoints (newest first) are moved to ``quarantine_dir`` with a message through
  ``log``; a checkpoint of a different model/optimizer structure raises ValueError instead (that
  is a config mistake, not corruption, and nothing is moved).

  Args:
    manager: from :func:`create_manager`.
    state_target: a tree like the saved state whose arrays carry the wanted shardings.
    extras_target: likewise for the extras.
    quarantine_dir: where corrupt checkpoints go.
    log: receives one message per corrupt checkpoint.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored, problem = _restore_verified(manager, step, state_target, extras_target), None
    except CorruptCheckpointError as e:
      restored, problem = None, _shorten(str(e))
    if not _any_process(problem is not None):
      return restored
    moved_to = quarantine(manager, step, quarantine_dir)
    log(f"Checkpoint at step {step} is corrupt ({problem or 'on another process'}); moved it "
        f"to {moved_to} and falling back to the previous checkpoint.")
  return None
