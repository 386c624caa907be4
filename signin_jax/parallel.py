"""Processes and devices: joining a multi-process job, data parallelism and preemption.

:func:`make_parallelism` wraps the pure steps either with ``jax.pmap`` (state replicated per
device, batch reshaped to ``[devices, per_device, ...]``, gradients and BatchNorm statistics
averaged over the axis ``'batch'``) or with ``jax.jit`` over a ``Mesh(jax.devices(), ('data',))``
(state replicated, batch sharded along ``'data'``; XLA inserts the reductions). Both compute the
update of the same global batch.
"""

import collections
import functools
import signal
import threading
from typing import Callable, Iterator, NamedTuple

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from signin_jax import train_steps

PMAP_AXIS = "batch"
MESH_AXIS = "data"
# Train (and eval) steps dispatched ahead of the host. One step of look-ahead keeps a device
# busy; a deeper queue only holds memory, and with several CPU processes (gloo collectives)
# a queue of ~100 steps, or of evaluation batches and eager additions, deadlocked (reproduced
# by tests/test_multiprocess.py).
MAX_STEPS_IN_FLIGHT = 2


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Joins the multi-process job when ``config.distributed`` is set (one process per host/GPU).

  ``config.distributed_coordinator`` / ``num_processes`` / ``process_id`` left at None are
  detected by ``jax.distributed.initialize`` from the cluster (Cloud TPU pod, SLURM, Open MPI,
  ...); set all three where there is no such environment (e.g. several processes on one
  machine). Must run before anything touches the devices.
  """
  if not config.distributed or jax.distributed.is_initialized():
    return
  # CPU processes reduce across each other only with cross-process collectives; gloo (over TCP)
  # needs nothing installed. Older jax versions defaulted to none; a user's choice is kept.
  if not jax.config.jax_cpu_collectives_implementation:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=config.distributed_coordinator,
                             num_processes=config.num_processes, process_id=config.process_id)
  logging.info("Joined the distributed job as process %d of %d.", jax.process_index(),
               jax.process_count())



# Data parallelism.

class Parallelism(NamedTuple):
  """The step functions of one parallelism mode and how trees move in and out of it.

  Canonical layout (checkpoints, initialisation): global arrays replicated over all devices of
  all processes (``replicated``). The device layout is the canonical one for 'jit' and per-device
  copies stacked on a leading axis for 'pmap'.
  """
  mode: str
  replicated: NamedSharding
  train_step: Callable  # (state, batch) -> (state, metrics), device layout.
  eval_step: Callable  # (state, batch) -> sums, device layout.
  put_batch: Callable  # This process's numpy batch -> device batch.
  put_state: Callable  # Canonical -> device layout.
  canonical: Callable  # Device layout -> canonical.
  local: Callable  # Device layout -> numpy (one replica).


def replicate_from_host(tree, sharding: NamedSharding):
  """Global replicated arrays from numpy trees that are identical on every process."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def local_replica(x) -> np.ndarray:
  return np.asarray(x.addressable_data(0))


def make_parallelism(mode: str, *, train_fn: Callable, eval_fn: Callable) -> Parallelism:
  """Wraps ``train_fn(state, batch, axis_name=...)`` and ``eval_fn`` for 'jit' or 'pmap'."""
  mesh = Mesh(np.asarray(jax.devices()), (MESH_AXIS,))
  replicated = NamedSharding(mesh, P())
  if mode == "jit":
    data = NamedSharding(mesh, P(MESH_AXIS))
    identity = lambda tree: tree
    return Parallelism(
        mode=mode, replicated=replicated,
        train_step=jax.jit(train_fn, in_shardings=(replicated, data), out_shardings=replicated),
        eval_step=jax.jit(eval_fn, in_shardings=(replicated, data), out_shardings=replicated),
        put_batch=lambda batch: jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(data, x), batch),
        put_state=identity, canonical=identity,
        local=lambda tree: jax.tree.map(local_replica, tree))
  if mode != "pmap":
    raise ValueError(f"parallelism must be 'jit' or 'pmap', got {mode!r}.")
  local_devices = jax.local_devices()
  num_local = len(local_devices)
  stacked = NamedSharding(Mesh(np.asarray(local_devices), (PMAP_AXIS,)), P(PMAP_AXIS))

  def put_batch(batch):
    return jax.tree.map(lambda x: jax.device_put(
        x.reshape((num_local, x.shape[0] // num_local) + x.shape[1:]), stacked), batch)

  def put_state(tree):
    return jax.tree.map(lambda x: jax.device_put(
        np.broadcast_to(local_replica(x), (num_local,) + x.shape), stacked), tree)

  first = lambda x: local_replica(x)[0]
  return Parallelism(
      mode=mode, replicated=replicated,
      train_step=jax.pmap(functools.partial(train_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS),
      eval_step=jax.pmap(functools.partial(eval_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS),
      put_batch=put_batch, put_state=put_state,
      canonical=lambda tree: replicate_from_host(jax.tree.map(first, tree), replicated),
      local=lambda tree: jax.tree.map(first, tree))


def create_parallelism(config, *, model, tx, num_classes: int) -> Parallelism:
  """The config's parallelism around the pure train and eval steps of ``model``."""
  step_kwargs = dict(apply_fn=model.apply, num_classes=num_classes)
  return make_parallelism(
      config.parallelism,
      train_fn=functools.partial(train_steps.train_step, tx=tx,
                                 label_smoothing=config.label_smoothing, **step_kwargs),
      eval_fn=functools.partial(train_steps.eval_step, **step_kwargs))


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
  """Keeps ``size`` items of ``iterator`` in flight (device transfers overlap the step)."""
  queue = collections.deque()
  for item in iterator:
    queue.append(item)
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


# --------------------------------------------------------------------------------------------
# Preemption (SIGTERM).

# What main.py exits with after a SIGTERM stopped the run with a checkpoint: 128 + SIGTERM, the
# status a shell reports for a process ended by SIGTERM. Not 0: `a && b` does not go on to b,
# SLURM records the job as not completed (afterok dependencies wait) and a script can tell a
# stopped run (rerun the same command to resume) from a finished one (0) or a failed one (1).
EXIT_CODE_PREEMPTED = 128 + signal.SIGTERM

class PreemptionWatch:
  """Reports, at step boundaries, that the job was asked to stop (SIGTERM / preemption notice).

  Single process: a SIGTERM handler sets a flag. Multi-process: JAX's preemption service
  (started by ``jax.distributed.initialize``) receives the notice and picks one step at which
  every process sees True, so all of them save the same checkpoint.
  """

  def __init__(self):
    self._requested = threading.Event()
    self._previous = None
    self._installed = False
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True

  def _handle(self, signum, frame):
    del signum, frame
    self._requested.set()

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested.is_set()

  def close(self):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False
