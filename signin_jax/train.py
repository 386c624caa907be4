"""Training and evaluation: dense baselines, pruning at init (PaI) and Sign-In through one path.

    python main.py --config=configs/fashion_mnist_quickstart.py --workdir=workdirs/quickstart

:func:`train_and_evaluate` composes the library's pieces; runs differ only in the optimizer::

    inner = inject_hyperparams(add_decayed_weights(weight_decay) -> sgd(schedule, momentum))
    tx    = sparse_training(sign_in(inner, beta, reset_every), schedule, masks)  # Sign-In, sparse
          | sparse_training(inner, schedule, masks)                             # without Sign-In
          | sign_in(inner, ...) or inner                                        # dense (sparsity 0)

where the schedule (``config.schedule.method``) is 'static' (pruning at init: the mask never
changes) or a dense-to-sparse method (GMP, AC/DC, RigL, SET) that changes the masks inside the
jitted update; the masks live in the optimizer state.

so every comparison is like for like. ``train_step`` and ``eval_step`` are pure functions written
once; :func:`make_parallelism` wraps them either with ``jax.pmap`` (state replicated per device,
batch reshaped to ``[devices, per_device, ...]``, gradients and BatchNorm statistics averaged over
the axis ``'batch'``) or with ``jax.jit`` over a ``Mesh(jax.devices(), ('data',))`` (state
replicated, batch sharded along ``'data'``; XLA inserts the reductions). Both compute the update
of the same global batch.

Multi-host: each process reads its own slice of every global batch, all processes run the same
steps, only process 0 writes logs, summaries and exports; checkpoints are written collectively by
orbax. Determinism: the data pipeline is a function of (seed, step), the per-step RNG is
``fold_in(rng, step)``, so a run resumed from a checkpoint at step s continues exactly (bitwise)
as the uninterrupted run would have.

Outputs in ``workdir``: ``checkpoints/``, TensorBoard event files, ``metrics.jsonl``,
``config.json``, ``weights/epoch_<k>.npz`` for every epoch k of ``config.export_epochs``, and at
the end ``summary.json`` and ``final_weights.npz`` (theta, the trained sparse weights, the
BatchNorm statistics and the masks; what ``config.init_from`` of a later run reads).
"""

import collections
import dataclasses
import functools
import hashlib
import io
import json
import logging as logging_std
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, NamedTuple, Optional, Tuple

from absl import logging
from etils import epath
import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from signin_jax import checkpointing
from signin_jax import config_validation
from signin_jax import input_pipeline
from signin_jax import masks as masks_lib
from signin_jax import metrics
from signin_jax import models
from signin_jax import signin
from signin_jax import sparsity as sparsity_lib
from signin_jax import transfer

PMAP_AXIS = "batch"
MESH_AXIS = "data"
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Train (and eval) steps dispatched ahead of the host. One step of look-ahead keeps a device
# busy; a deeper queue only holds memory, and with several CPU processes (gloo collectives)
# a queue of ~100 steps, or of evaluation batches and eager additions, deadlocked (reproduced
# by tests/test_multiprocess.py).
MAX_STEPS_IN_FLIGHT = 2


# --------------------------------------------------------------------------------------------
# Processes and devices.

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


# --------------------------------------------------------------------------------------------
# Optimizer.

def learning_rate_schedule(config, *, steps_per_epoch: int, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to ``config.learning_rate``, then cosine decay to 0 or steps.

  'cosine': ``lr(t) = lr * (1 + cos(pi (t - warmup) / (num_steps - warmup))) / 2``.
  'step':   ``lr(t) = lr * lr_step_factor ** #{e in lr_step_epochs : t >= e * steps_per_epoch}``.
  """
  warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), num_steps)
  peak = config.learning_rate
  if config.lr_schedule == "cosine":
    main = optax.cosine_decay_schedule(peak, decay_steps=max(num_steps - warmup, 1))
  else:
    boundaries = {int(round(e * steps_per_epoch)) - warmup: config.lr_step_factor
                  for e in config.lr_step_epochs}
    main = optax.piecewise_constant_schedule(peak, {b: f for b, f in boundaries.items() if b > 0})
  if warmup == 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, transition_steps=warmup), main], boundaries=[warmup])


def _decay_kernels(params):
  # Weight decay acts on conv/dense kernels (or both Sign-In factors of one), not on biases and
  # normalization parameters.
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _sgd_with_weight_decay(learning_rate, weight_decay, momentum, nesterov):
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=_decay_kernels),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


def create_optimizer(config, *, steps_per_epoch: int, num_steps: int, masks=None,
                     params=None, key=None,
                     check_masks: bool = True) -> optax.GradientTransformation:
  """The run's optimizer; the kinds of run share everything but the wrapping.

  The SGD hyperparameters are injected (``optax.inject_hyperparams``) so the learning rate in
  use is part of the optimizer state and can be logged (see :func:`current_learning_rate`).
  With ``masks`` (a sparse run) the optimizer is ``sparsity.sparse_training`` around it, with
  ``config.schedule``'s schedule built on ``params`` (needed unless the schedule is 'static')
  and ``key`` for random growth ('set'); its ``init`` checks ``masks`` against the schedule
  unless ``check_masks`` is False (``sparsity.sparse_training``).
  """
  inner = optax.inject_hyperparams(_sgd_with_weight_decay, static_args=("nesterov",))(
      learning_rate=learning_rate_schedule(
          config, steps_per_epoch=steps_per_epoch, num_steps=num_steps),
      weight_decay=config.weight_decay, momentum=config.momentum, nesterov=config.nesterov)
  tx = inner
  if config.signin.enabled:
    reset_every = config.signin.reset_every_epochs * steps_per_epoch or None
    beta = config.signin.beta
    if config.signin.beta_scale == "weight_scale":
      beta = functools.partial(_beta_at_weight_scale, beta)
    tx = signin.sign_in(tx, beta=beta, reset_every=reset_every,
                        inner_state_at_reset=config.signin.inner_state_at_reset)
  if masks is None:
    return tx
  method = config.schedule.method
  if method != "static" and params is None:
    raise ValueError(f"create_optimizer: config.schedule.method={method!r} needs `params`.")
  schedule = sparsity_lib.create_schedule(
      method, params, sparsity=config.sparsity, num_steps=num_steps,
      update_every=config.schedule.update_every_steps, start=config.schedule.start,
      end=config.schedule.end, initial_sparsity=config.schedule.initial_sparsity,
      drop_fraction=config.schedule.drop_fraction,
      drop_fraction_anneal=config.schedule.drop_fraction_anneal,
      warmup=config.schedule.warmup, phase=config.schedule.phase, final=config.schedule.final,
      distribution=config.mask.distribution, scope=config.mask.scope,
      dense=tuple(config.mask.dense_layers))
  return sparsity_lib.sparse_training(tx, schedule, masks, key=key, check_masks=check_masks)


def _beta_at_weight_scale(beta: float, path, theta) -> jax.Array:
  """``beta * mean(theta**2)`` over the layer's unmasked initial weights: Sign-In's init sees
  the masked parameters, whose masked entries are exactly zero."""
  del path
  theta = jnp.asarray(theta, jnp.float32)
  kept = theta != 0
  return beta * jnp.sum(jnp.where(kept, theta**2, 0.0)) / jnp.maximum(jnp.sum(kept), 1)


_INJECT_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def current_learning_rate(opt_state) -> jax.Array:
  """The learning rate of the last update, read from the injected hyperparameters."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, _INJECT_STATES))
           if isinstance(s, _INJECT_STATES)]
  if not found:
    raise ValueError("The optimizer has no injected learning rate: build it with "
                     "optax.inject_hyperparams (as create_optimizer does).")
  return found[0].hyperparams["learning_rate"]


# --------------------------------------------------------------------------------------------
# Train and eval steps: pure, written once, wrapped by `make_parallelism`.

class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def cross_entropy(logits, labels, *, num_classes: int, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels, float32."""
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _variables(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def train_step(state: TrainState, batch, *, apply_fn, tx, num_classes: int,
               label_smoothing: float, axis_name: Optional[str] = None):
  """One SGD step on ``batch``; returns ``(new_state, metrics)``.

  With ``axis_name`` (inside ``pmap``) each device holds a slice of the global batch: the loss
  is the device-local mean, so the global gradient is the ``pmean`` of the local ones.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

  def loss_fn(params):
    logits, new_model_state = apply_fn(
        _variables(params, state.batch_stats), batch["image"], train=True, mutable=["batch_stats"],
        rngs={"dropout": rng})
    loss = jnp.mean(cross_entropy(logits, batch["label"], num_classes=num_classes,
                                  label_smoothing=label_smoothing))
    return loss, (logits, new_model_state)

  (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  if axis_name is not None:
    grads, loss, accuracy = jax.lax.pmean((grads, loss, accuracy), axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=new_model_state.get("batch_stats", state.batch_stats),
      opt_state=opt_state)
  step_metrics = {"loss": loss, "accuracy": accuracy,
                  "learning_rate": current_learning_rate(opt_state)}
  return new_state, step_metrics


def eval_step(state: TrainState, batch, *, apply_fn, num_classes: int,
              axis_name: Optional[str] = None):
  """Sums of loss and correct predictions over the real examples (``batch['mask'] == 1``)."""
  logits = apply_fn(_variables(state.params, state.batch_stats), batch["image"], train=False)
  weight = batch["mask"].astype(jnp.float32)
  losses = cross_entropy(logits, batch["label"], num_classes=num_classes)
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  sums = {"loss": jnp.sum(losses * weight), "correct": jnp.sum(correct * weight),
          "count": jnp.sum(weight)}
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums


# --------------------------------------------------------------------------------------------
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


def _local_replica(x) -> np.ndarray:
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
        local=lambda tree: jax.tree.map(_local_replica, tree))
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
        np.broadcast_to(_local_replica(x), (num_local,) + x.shape), stacked), tree)

  first = lambda x: _local_replica(x)[0]
  return Parallelism(
      mode=mode, replicated=replicated,
      train_step=jax.pmap(functools.partial(train_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS),
      eval_step=jax.pmap(functools.partial(eval_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS),
      put_batch=put_batch, put_state=put_state,
      canonical=lambda tree: replicate_from_host(jax.tree.map(first, tree), replicated),
      local=lambda tree: jax.tree.map(first, tree))


def create_parallelism(config, *, model, tx, num_classes: int) -> Parallelism:
  """The config's parallelism around :func:`train_step` and :func:`eval_step` of ``model``."""
  step_kwargs = dict(apply_fn=model.apply, num_classes=num_classes)
  return make_parallelism(
      config.parallelism,
      train_fn=functools.partial(train_step, tx=tx, label_smoothing=config.label_smoothing,
                                 **step_kwargs),
      eval_fn=functools.partial(eval_step, **step_kwargs))


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
# Preemption (SIGTERM) and finiteness.

class _PreemptionWatch:
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


class NonFiniteLossError(FloatingPointError):
  """Training produced a non-finite loss or state; nothing after the last good step is saved."""


# --------------------------------------------------------------------------------------------
# Model, masks and the initial state.

def _compute_dtype(config):
  return COMPUTE_DTYPES[config.dtype]


def create_model(config, *, num_classes: int):
  return models.get_model(
      config.model, num_classes=num_classes, width=config.width, dtype=_compute_dtype(config),
      bn_axis_name=PMAP_AXIS if config.parallelism == "pmap" else None)


def create_masks(config, key, params, *, apply_fn, batch_stats, input_shape,
                 sample_batch: Callable):
  """The run's initial masks (bool pytree like params), or None for a dense run (sparsity 0).

  All True for the schedules that start dense (GMP, AC/DC), else chosen by ``config.mask``.

  Every process computes the masks itself; data-dependent scores (SNIP, GraSP) use the first
  global training batch (``sample_batch()``, the same on every process). With several processes
  their digests are compared at once: a process whose masks differ stops the run
  (:class:`MaskMismatchError`) instead of training another network.
  """
  if config.sparsity == 0.0:
    return None
  if sparsity_lib.initial_masks_are_dense(config.schedule.method):  # GMP, AC/DC start dense.
    return sparsity_lib.dense_masks(params)
  variables = lambda p: _variables(p, batch_stats)
  kwargs = {}
  if config.mask.method in masks_lib.DATA_DEPENDENT_METHODS:

    def loss_fn(p, batch):
      logits = apply_fn(variables(p), batch["image"], train=False)
      return jnp.mean(cross_entropy(logits, batch["label"], num_classes=logits.shape[-1]))

    kwargs = dict(loss_fn=loss_fn, batch=sample_batch())
  elif config.mask.method == "synflow":
    kwargs = dict(apply_fn=lambda p, x: apply_fn(variables(p), x, train=False),
                  input_shape=input_shape)
  build = functools.partial(
      masks_lib.create_masks, sparsity=config.sparsity, method=config.mask.method,
      distribution=config.mask.distribution, scope=config.mask.scope,
      dense=tuple(config.mask.dense_layers))
  if config.mask.method == "synflow":  # Checks its rounds' values on the host: not jittable.
    masks = build(key, params, **kwargs)
  else:  # One compilation instead of a few per layer when run op by op.
    batch = kwargs.pop("batch", None)
    masks = jax.jit(lambda k, p, b: build(k, p, batch=b, **kwargs))(key, params, batch)
  if jax.process_count() > 1:
    masks = jax.device_get(masks)
    check_same_masks(multihost_utils.process_allgather(mask_digest(masks)), seed=config.seed)
  return masks


class MaskMismatchError(RuntimeError):
  """Processes computed different masks: they would train different networks."""


def mask_digest(masks) -> np.ndarray:
  """128 bits (4 uint32 words) of SHA-256 over the tree structure, shapes and packed mask bits.

  Costs a pass over one bit per weight (ResNet-50: ~3 MB), so every run can afford it.
  """
  leaves, treedef = jax.tree.flatten(jax.device_get(masks))
  digest = hashlib.sha256(str(treedef).encode())
  for leaf in leaves:
    leaf = np.asarray(leaf, bool)
    digest.update(str(leaf.shape).encode())
    digest.update(np.packbits(leaf).tobytes())
  return np.frombuffer(digest.digest()[:16], np.uint32).copy()


def check_same_masks(digests: np.ndarray, *, seed: int) -> None:
  """Raises MaskMismatchError unless every process's digest (row i: process i) is process 0's.

  Every process computes the masks itself from the same seed (and, for data-dependent scores,
  the same global batch), so a difference means different code, library versions or hardware
  numerics; training on would silently optimize different networks on different hosts.
  """
  digests = np.asarray(digests).reshape(len(digests), -1)
  differing = [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]
  if differing:
    hexes = {i: digests[i].tobytes().hex()[:16] for i in [0] + differing}
    raise MaskMismatchError(
        f"The masks differ between processes: process(es) {differing} computed other masks "
        f"than process 0 from config.seed={seed} (digest prefixes {hexes}). Run the same code, "
        "config and library versions on every host; stopping before training different "
        "networks.")


# --------------------------------------------------------------------------------------------
# The training loop.

def check_resumable(meta: Dict[str, Any], *, step: int, steps_per_epoch: int,
                    batch_size: int) -> None:
  """Resuming with another number of processes (or devices): supported, or refused clearly.

  The state is saved as global arrays replicated over all devices, so orbax restores it onto
  any device layout, and the global batch (``config.batch_size``) does not depend on the layout.
  What changes is the data order: process i of n reads shard i of n, so from the resumed step
  on the examples come from the new layout's shards (the epoch in progress may repeat or miss
  some; later epochs read every example once as usual). That is allowed, with a warning. Refused:
  a layout whose epoch has another number of steps (each process's share of every global
  batch is read from its own shard, whose size depends on the number of processes), since the
  learning-rate schedule, Sign-In's re-split period and the epoch count would all shift.
  """
  saved_processes = meta.get("process_count")
  if saved_processes is None:  # Written before the layout was recorded: nothing to compare.
    return
  saved_steps = meta["steps_per_epoch"]
  if saved_steps != steps_per_epoch:
    raise ValueError(
        f"Cannot resume from the checkpoint at step {step} in this workdir: it was written by "
        f"{saved_processes} process(es) with {saved_steps} steps per epoch, but this run (with "
        f"{jax.process_count()} process(es), config.batch_size={batch_size}) has "
        f"{steps_per_epoch}: the learning-rate schedule and the Sign-In re-split period would "
        f"shift. Resume with {saved_processes} process(es) and the checkpoint's batch size, or "
        "use a new workdir.")
  if saved_processes != jax.process_count() or meta.get("device_count") != jax.device_count():
    logging.warning(
        "Resuming the checkpoint at step %d, written by %d process(es) on %s device(s), with %d "
        "process(es) on %d device(s): same state, global batch and schedule; from here on each "
        "process reads its shard of the new layout, so the epoch in progress may repeat or "
        "skip some examples.", step, saved_processes, meta.get("device_count"),
        jax.process_count(), jax.device_count())


def _flat_config(config) -> Dict[str, Any]:
  flat = {}

  def visit(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        visit(name + ".", value)
      else:
        flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)

  visit("", config.to_dict())
  return flat


def _write_json_atomically(path: str, obj) -> None:
  _write_atomically(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def _save_npz_atomically(path: str, arrays: Dict[str, np.ndarray]) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  _write_atomically(path, buffer.getvalue())


def _write_atomically(path: str, data: bytes) -> None:
  # Locally a rename makes the file appear complete or not at all; on gs:// an object appears
  # only when its upload completes, so the rename there (a copy) just keeps one code path.
  tmp = epath.Path(path + ".tmp")
  tmp.write_bytes(data)
  tmp.replace(path)


def evaluate(parallelism: Parallelism, state, config) -> Dict[str, float]:
  """Test loss and accuracy over every test example exactly once."""
  totals = collections.Counter()
  in_flight = collections.deque()
  for batch in input_pipeline.eval_iterator(
      config.dataset, global_batch_size=config.batch_size, data_dir=config.data_dir,
      process_index=jax.process_index(), process_count=jax.process_count(),
      split=config.eval_split):
    in_flight.append(parallelism.eval_step(state, parallelism.put_batch(batch)))
    if len(in_flight) > MAX_STEPS_IN_FLIGHT:
      totals.update(_host_floats(parallelism.local(in_flight.popleft())))
  for sums in in_flight:
    totals.update(_host_floats(parallelism.local(sums)))
  count = totals["count"]
  return {"loss": totals["loss"] / count, "accuracy": totals["correct"] / count,
          "count": int(count)}


def _host_floats(sums) -> Dict[str, float]:
  return {k: float(v) for k, v in sums.items()}


class _DropInfoFrom(logging_std.Filter):
  """Drops INFO (and lower) records logged from files under ``path_fragment``."""

  def __init__(self, path_fragment: str):
    super().__init__()
    self.path_fragment = path_fragment

  def filter(self, record):
    return record.levelno > logging_std.INFO or self.path_fragment not in record.pathname


def _quiet_library_info_logs() -> None:
  # Orbax logs several INFO lines per save and TFDS a few per dataset read; keep their
  # warnings and errors, so that the console shows the run's progress.
  absl_logger = logging.get_absl_logger()
  present = {f.path_fragment for f in absl_logger.filters if isinstance(f, _DropInfoFrom)}
  for library in ("orbax", "tensorflow_datasets"):
    fragment = os.sep + library + os.sep
    if fragment not in present:
      absl_logger.addFilter(_DropInfoFrom(fragment))


class RunStart(NamedTuple):
  """What a run starts from, all deterministic functions of the config (and its seed)."""
  dataset: input_pipeline.DatasetInfo
  steps_per_epoch: int
  num_steps: int
  data_kwargs: Dict[str, Any]  # This process's arguments of input_pipeline.train_iterator.
  model: Any
  variables: Dict[str, Any]  # The model's initial variables, before masking.
  input_shape: Tuple[int, ...]
  masks: Optional[Any]  # None for a dense run.
  tx: optax.GradientTransformation
  state: TrainState  # Step 0: masked parameters and the optimizer's initial state.


def create_run_start(config: ml_collections.ConfigDict, *, check_masks: bool = True) -> RunStart:
  """The model, masks, optimizer and initial state of a run, as :func:`train_and_evaluate`
  (and the benchmarks, to measure exactly what it runs) builds them. ``check_masks``: refuse
  initial masks the schedule cannot start from (False for a run that resumes)."""
  dataset = input_pipeline.DATASETS[config.dataset]
  steps_per_epoch = input_pipeline.steps_per_epoch(
      config.dataset, config.batch_size, data_dir=config.data_dir,
      process_count=jax.process_count(), split=config.train_split)
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(np.ceil(config.num_epochs * steps_per_epoch)))
  data_kwargs = dict(data_dir=config.data_dir, process_index=jax.process_index(),
                     process_count=jax.process_count(), split=config.train_split)

  model = create_model(config, num_classes=dataset.num_classes)
  input_shape = (1,) + tuple(dataset.image_shape)
  init_key, mask_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": init_key}, jnp.zeros(input_shape, jnp.float32))
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})

  def sample_batch():  # The first global batch: every process's slice of it, concatenated.
    local = next(input_pipeline.train_iterator(
        config.dataset, global_batch_size=config.batch_size, seed=config.seed, **data_kwargs))
    if jax.process_count() == 1:
      return local
    return multihost_utils.process_allgather(local, tiled=True)

  source = None
  if config.init_from.workdir:  # Another run's mask (and signs or magnitudes): checked first.
    source = transfer.load_source(config.init_from, params, sparsity=config.sparsity)
    masks = transfer.masks_from(source, params)
  else:
    masks = create_masks(config, mask_key, params, apply_fn=model.apply,
                         batch_stats=batch_stats, input_shape=input_shape,
                         sample_batch=sample_batch)
  tx = create_optimizer(config, steps_per_epoch=steps_per_epoch, num_steps=num_steps,
                        masks=masks, params=params, key=jax.random.fold_in(mask_key, 1),
                        check_masks=check_masks)

  def masked_init(params, masks):
    if masks is not None:
      if config.mask.sparsity_aware_init:
        params = masks_lib.sparsity_aware_init(params, masks)
      params = masks_lib.apply_mask(params, masks)
    return params

  @jax.jit
  def initial_params_and_opt_state(params, masks, random_params):
    params = masked_init(params, masks)
    if source is not None:
      params = transfer.combine(
          params, masks, source, signs=config.init_from.signs,
          magnitudes=config.init_from.magnitudes, key=jax.random.fold_in(init_key, 2),
          random_params=None if random_params is None else masked_init(random_params, masks))
    return params, tx.init(params)

  random_params = None
  if source is not None and config.init_from.magnitudes == "random":  # An independent draw.
    random_params = jax.jit(functools.partial(model.init, train=False))(
        {"params": jax.random.fold_in(init_key, 1)}, jnp.zeros(input_shape, jnp.float32))["params"]
  params, opt_state = initial_params_and_opt_state(params, masks, random_params)
  state = TrainState(step=jnp.zeros([], jnp.int32), params=params, batch_stats=batch_stats,
                     opt_state=opt_state, rng=train_key)
  return RunStart(dataset=dataset, steps_per_epoch=steps_per_epoch, num_steps=num_steps,
                  data_kwargs=data_kwargs, model=model, variables=variables,
                  input_shape=input_shape, masks=masks, tx=tx, state=state)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming from its checkpoints) and evaluates it.

  Returns the summary also written to ``workdir/summary.json``; if the run was asked to stop
  (SIGTERM / preemption) it saves a checkpoint and returns ``{'preempted': True, 'step': s}``.

  Raises:
    ValueError: invalid config (before anything is compiled).
    NonFiniteLossError: the loss or the state became non-finite; the last good checkpoint stays.
  """
  config_validation.validate_config(config)
  _quiet_library_info_logs()
  initialize_distributed(config)
  config_validation.validate_environment(config, device_count=jax.device_count())
  started = time.time()
  workdir = _prepare_workdir(config, workdir)
  # Model, masks, optimizer, state: functions of the seed. Only a fresh start checks its masks
  # against the schedule: a resumed run's masks come from its checkpoint.
  fresh = not checkpointing.finished_steps(os.path.join(workdir, "checkpoints"))
  run = create_run_start(config, check_masks=fresh)
  manager = checkpointing.create_manager(os.path.join(workdir, "checkpoints"),
                                         keep=config.keep_checkpoints)
  closers = [manager.close]
  try:
    progress = _resume(config, run, manager, workdir, started=started)
    parallelism = create_parallelism(config, model=run.model, tx=run.tx,
                                     num_classes=run.dataset.num_classes)
    progress.state = parallelism.put_state(progress.state)
    writer = metrics.create_writer(workdir, is_main_process=jax.process_index() == 0)
    preemption = _PreemptionWatch()
    closers += [writer.close, preemption.close]
    _log_start(config, run, writer, start_step=progress.start_step)
    if progress.start_step == 0 and 0 in config.export_epochs:
      _export_weights(parallelism, progress, 0)
    stopped_at = _train(config, run, parallelism, progress, manager, writer, preemption)
    if stopped_at is not None:
      return {"preempted": True, "step": stopped_at}
    return _finish(config, run, parallelism, progress, manager, workdir)
  finally:
    for close in reversed(closers):
      close()


# The four sets of per-layer references the run keeps (in checkpoints, as ``extras``): the
# masks and signs at initialization and at the last epoch's end, over the prunable layers.
_EXTRAS = ("init_masks", "epoch_masks", "init_signs", "epoch_signs")


@dataclasses.dataclass
class _Progress:
  """What the loop changes as it goes, beside the training state."""
  state: TrainState  # Canonical layout until the loop's parallelism takes it.
  extras: Dict[str, Dict[str, np.ndarray]]  # Host copies, {_EXTRAS[i]: {layer: array}}.
  canonical_extras: Any  # The same as replicated arrays, what checkpoints hold.
  start_step: int
  started: float  # time.time() when this process started.
  elapsed_before: float  # Training seconds of the runs this one resumes.
  tracked: Tuple[str, ...]  # The prunable layers' names.
  workdir: str
  last_eval: Optional[Dict[str, float]] = None

  def elapsed(self) -> float:
    return self.elapsed_before + time.time() - self.started


def _prepare_workdir(config, workdir: str) -> str:
  workdir = workdir if metrics.is_remote(workdir) else os.path.abspath(workdir)
  if jax.process_index() == 0:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    _write_json_atomically(os.path.join(workdir, "config.json"), config.to_dict())
  return workdir


def _resume(config, run: RunStart, manager, workdir: str, *, started: float) -> _Progress:
  """The run's progress: from the newest intact checkpoint, or from the start."""
  params = run.state.params
  tracked = tuple(k for k, is_prunable in metrics.by_layer(masks_lib.prunable(params)).items()
                  if is_prunable)
  weights = _tracked(metrics.by_layer(jax.device_get(params)), tracked)
  masks = (_tracked(metrics.by_layer(jax.device_get(run.masks)), tracked)
           if run.masks is not None else {})
  signs = metrics.signs(weights)
  extras = {"init_masks": masks, "epoch_masks": masks, "init_signs": signs, "epoch_signs": signs}
  replicated = NamedSharding(Mesh(np.asarray(jax.devices()), (MESH_AXIS,)), P())
  state = replicate_from_host(jax.device_get(run.state), replicated)
  canonical_extras = replicate_from_host(extras, replicated)
  restored = checkpointing.restore_latest_good(
      manager, state_target=state, extras_target=canonical_extras,
      quarantine_dir=os.path.join(workdir, "checkpoints_corrupt"))
  progress = _Progress(state=state, extras=extras, canonical_extras=canonical_extras,
                       start_step=0, started=started, elapsed_before=0.0, tracked=tracked,
                       workdir=workdir)
  if restored is None:
    return progress
  check_resumable(restored.meta, step=restored.step, steps_per_epoch=run.steps_per_epoch,
                  batch_size=config.batch_size)
  logging.info("Resuming from the checkpoint at step %d.", restored.step)
  progress.state, progress.canonical_extras = restored.state, restored.extras
  progress.extras = jax.tree.map(_local_replica, restored.extras)
  progress.start_step = int(_local_replica(restored.state.step))
  progress.elapsed_before = float(restored.meta.get("elapsed_seconds", 0.0))
  if any(not np.array_equal(progress.extras["init_masks"][k], v) for k, v in masks.items()):
    # Data-dependent scores on other hardware, say; the masks in use are in the state.
    logging.warning("The initial masks computed now differ from the checkpoint's; continuing "
                    "with the checkpoint's.")
  return progress


def _tracked(layers: Dict[str, Any], tracked) -> Dict[str, Any]:
  return {k: layers[k] for k in tracked}


def _current_masks(parallelism: Parallelism, state: TrainState, tracked) -> Dict[str, np.ndarray]:
  """The masks in use ({layer: bool}, host), read off the optimizer state; {} if dense."""
  masks = sparsity_lib.current_masks(state.opt_state)
  return {} if masks is None else _tracked(metrics.by_layer(parallelism.local(masks)), tracked)


def _log_start(config, run: RunStart, writer, *, start_step: int) -> None:
  if jax.process_index() != 0:
    return
  params = run.state.params
  if run.masks is not None:
    positions = models.output_positions(run.model, run.variables, run.input_shape)
    logging.info("Per-layer density%s:\n%s",
                 "" if config.schedule.method == "static" else " at the start (the schedule "
                 f"{config.schedule.method!r} changes it)",
                 masks_lib.format_summary(masks_lib.summary(params, run.masks,
                                                            positions=positions)))
  logging.info("Training %s on %s for %d steps (%d per epoch, global batch %d) on %d %s "
               "device(s), %d process(es), parallelism=%s, dtype=%s, mask schedule %s; %d "
               "parameters.", config.model, config.dataset, run.num_steps, run.steps_per_epoch,
               config.batch_size, jax.device_count(), jax.devices()[0].platform,
               jax.process_count(), config.parallelism, config.dtype,
               config.schedule.method if run.masks is not None else "none (dense)",
               models.count_params(params))
  if start_step == 0:
    writer.write_hparams(_flat_config(config))


def _train(config, run: RunStart, parallelism: Parallelism, progress: _Progress, manager,
           writer, preemption) -> Optional[int]:
  """The loop from ``progress.start_step`` to the end; the step it stopped at if preempted."""
  num_steps, steps_per_epoch = run.num_steps, run.steps_per_epoch
  pending = []  # Device metrics of steps not yet fetched.
  log_buffer = []  # Host metrics since the last progress line.
  timer = {"time": time.time(), "step": progress.start_step}

  def fetch_metrics(step: int) -> None:
    """Fetches pending step metrics; stops the run at the first non-finite loss."""
    first = step - len(pending) + 1
    for offset, m in enumerate(parallelism.local(pending)):
      if not np.isfinite(m["loss"]):
        manager.wait_until_finished()
        raise NonFiniteLossError(_non_finite_message(first + offset, f"the loss ({m['loss']})",
                                                     manager))
      log_buffer.append(m)
    pending.clear()

  train_iter = prefetch(map(parallelism.put_batch, input_pipeline.train_iterator(
      config.dataset, global_batch_size=config.batch_size, seed=config.seed,
      start_step=progress.start_step, **run.data_kwargs)))
  for step in range(progress.start_step + 1, num_steps + 1):
    is_last = step == num_steps
    epoch_end = step % steps_per_epoch == 0
    # Sign-In re-splits at epoch boundaries (m**2 - w**2 back to signin.beta), so the epoch's
    # beta statistics are read off the state entering its last step.
    entering_last_step = progress.state if epoch_end or is_last else None
    progress.state, step_metrics = parallelism.train_step(progress.state, next(train_iter))
    pending.append(step_metrics)
    if len(pending) > MAX_STEPS_IN_FLIGHT:
      jax.block_until_ready(pending[-1 - MAX_STEPS_IN_FLIGHT])
    if step == progress.start_step + 1:
      jax.block_until_ready(step_metrics)
      logging.info("First step (compilation included) took %.1f s.", time.time() - timer["time"])
      timer.update(time=time.time(), step=step)
    preempted = preemption.requested(step)
    save_now = step % config.checkpoint_every_steps == 0 or is_last or preempted
    log_now = step % config.log_every_steps == 0 or is_last
    if not (log_now or save_now or epoch_end):
      continue
    fetch_metrics(step)
    if log_now and log_buffer:
      _log_progress(config, run, parallelism, progress, writer, step, log_buffer, timer,
                    within_reset_period=not (epoch_end or is_last))
      log_buffer.clear()
    if epoch_end or is_last:
      _end_of_epoch(config, run, parallelism, progress, writer, step, entering_last_step)
      timer.update(time=time.time(), step=step)  # Keep eval time out of images/s and ETA.
    if save_now:
      _save_checkpoint(run, parallelism, progress, manager, writer, step)
    if preempted and not is_last:
      manager.wait_until_finished()
      writer.flush()
      logging.warning("Stop requested (SIGTERM/preemption): saved the checkpoint at step %d "
                      "in %s; rerun the same command to resume.", step, manager.directory)
      return step
  return None


def _log_progress(config, run, parallelism, progress, writer, step, log_buffer, timer, *,
                  within_reset_period: bool) -> None:
  now = time.time()
  seconds_per_step = (now - timer["time"]) / max(step - timer["step"], 1)
  scalars = {"train_loss": float(np.mean([m["loss"] for m in log_buffer])),
             "train_accuracy": float(np.mean([m["accuracy"] for m in log_buffer])),
             "learning_rate": float(log_buffer[-1]["learning_rate"]),
             "images_per_sec": config.batch_size / max(seconds_per_step, 1e-9),
             "epoch": step / run.steps_per_epoch}
  if config.signin.enabled and within_reset_period:
    # Mean beta within a reset period (its end is logged at the epoch's end, before the split).
    scalars.update(metrics.prefixed("beta", mean_signin_betas(
        parallelism, progress.state, _current_masks(parallelism, progress.state,
                                                    progress.tracked))))
  writer.write_scalars(step, scalars)
  if jax.process_index() == 0:
    logging.info(metrics.format_progress(
        step=step, num_steps=run.num_steps, epoch=scalars["epoch"], loss=scalars["train_loss"],
        accuracy=scalars["train_accuracy"], learning_rate=scalars["learning_rate"],
        images_per_sec=scalars["images_per_sec"],
        eta_seconds=(run.num_steps - step) * seconds_per_step))
  timer.update(time=now, step=step)


def _end_of_epoch(config, run, parallelism, progress, writer, step, entering_last_step) -> None:
  """Per-layer sign flips, mask changes and betas; the test set every eval_every_epochs."""
  epoch_end = step % run.steps_per_epoch == 0
  extras = progress.extras
  weights = _tracked(metrics.by_layer(parallelism.local(progress.state.params)), progress.tracked)
  masks = _current_masks(parallelism, progress.state, progress.tracked)
  # Sign flips count the weights active at both ends.
  flips_init = metrics.sign_flip_fractions(weights, extras["init_signs"],
                                           metrics.both_kept(extras["init_masks"], masks))
  flips_prev = metrics.sign_flip_fractions(weights, extras["epoch_signs"],
                                           metrics.both_kept(extras["epoch_masks"], masks))
  scalars = {**metrics.prefixed("sign_flips_vs_init", flips_init),
             **metrics.prefixed("sign_flips_vs_prev_epoch", flips_prev)}
  lines = [f"sign flips vs init {flips_init[metrics.TOTAL]:.4f}, vs previous epoch "
           f"{flips_prev[metrics.TOTAL]:.4f}"]
  if masks and config.schedule.method != "static":
    changes = metrics.mask_changes(extras["epoch_masks"], masks)
    for field in ("dropped", "grown", "density"):
      scalars.update(metrics.prefixed(f"mask_{field}", {k: v[field] for k, v in changes.items()}))
    total = changes[metrics.TOTAL]
    lines.append(f"density {total['density']:.4f} ({total['dropped']} dropped, "
                 f"{total['grown']} grown since the previous epoch)")
  if config.signin.enabled:
    betas = mean_signin_betas(parallelism, entering_last_step, masks)
    scalars.update(metrics.prefixed("beta", betas))
    lines.append(f"mean beta {betas[metrics.TOTAL]:.4f} (before the re-split)")
  if epoch_end and step // run.steps_per_epoch in config.export_epochs:
    _export_weights(parallelism, progress, step // run.steps_per_epoch)
  if epoch_end:
    extras.update(epoch_signs=metrics.signs(weights), epoch_masks=masks)
    progress.canonical_extras = replicate_from_host(extras, parallelism.replicated)
  if epoch_end and (step // run.steps_per_epoch) % config.eval_every_epochs == 0 or (
      step == run.num_steps):
    progress.last_eval = dict(evaluate(parallelism, progress.state, config), step=step)
    scalars.update({"test_loss": progress.last_eval["loss"],
                    "test_accuracy": progress.last_eval["accuracy"]})
    lines.append(f"test accuracy {progress.last_eval['accuracy']:.4f}")
  writer.write_scalars(step, scalars)
  if jax.process_index() == 0:
    logging.info("Epoch %.2f (step %d): %s.", step / run.steps_per_epoch, step, ", ".join(lines))


def _weight_arrays(parallelism, state, tracked) -> Dict[str, np.ndarray]:
  """What final_weights.npz and the epoch exports hold: params, BatchNorm statistics, masks."""
  arrays = {f"params/{k}": v for k, v in metrics.by_layer(parallelism.local(state.params)).items()}
  arrays.update({f"batch_stats/{k}": v for k, v in
                 metrics.by_layer(parallelism.local(state.batch_stats)).items()})
  arrays.update({f"masks/{k}": v for k, v in _current_masks(parallelism, state, tracked).items()})
  return arrays


def _export_weights(parallelism, progress, epoch: int) -> None:
  """weights/epoch_<k>.npz, for a later run's config.init_from (k = 0: the initialization)."""
  arrays = _weight_arrays(parallelism, progress.state, progress.tracked)
  if jax.process_index() == 0:
    path = transfer.weights_file(progress.workdir, epoch)
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    _save_npz_atomically(path, arrays)


def _save_checkpoint(run, parallelism, progress, manager, writer, step: int) -> None:
  try:
    checkpointing.save(manager, step, state=parallelism.canonical(progress.state),
                       extras=progress.canonical_extras, meta={
                           "data_position": step, "epoch": step / run.steps_per_epoch,
                           "steps_per_epoch": run.steps_per_epoch,
                           "process_count": jax.process_count(),
                           "device_count": jax.device_count(),
                           "elapsed_seconds": progress.elapsed()})
  except checkpointing.NonFiniteStateError as e:
    raise NonFiniteLossError(_non_finite_message(step, "the training state", manager)) from e
  writer.flush()  # On gs:// metrics.jsonl is rewritten at a flush: keep it as current as this.


def _finish(config, run, parallelism, progress, manager, workdir: str) -> Dict[str, Any]:
  """The final evaluation, summary.json and final_weights.npz."""
  manager.wait_until_finished()
  state = progress.state
  if progress.last_eval is None or progress.last_eval["step"] != run.num_steps:
    progress.last_eval = dict(evaluate(parallelism, state, config), step=run.num_steps)
  params = metrics.by_layer(parallelism.local(state.params))
  masks = _current_masks(parallelism, state, progress.tracked)
  weights = _tracked(params, progress.tracked)
  summary = {
      "test_accuracy": progress.last_eval["accuracy"],
      "test_loss": progress.last_eval["loss"],
      "test_examples": progress.last_eval["count"],
      "steps": run.num_steps,
      "sparsity": metrics.measured_sparsity(weights),
      "sign_flips_vs_init": metrics.sign_flip_fractions(
          weights, progress.extras["init_signs"],
          metrics.both_kept(progress.extras["init_masks"], masks)),
      "wall_time_seconds": progress.elapsed(),
      "devices": jax.device_count(),
      "processes": jax.process_count(),
      "platform": jax.devices()[0].platform,
      "config": config.to_dict(),
  }
  arrays = _weight_arrays(parallelism, state, progress.tracked)
  if jax.process_index() == 0:
    _write_json_atomically(os.path.join(workdir, "summary.json"), summary)
    _save_npz_atomically(transfer.weights_file(workdir, transfer.FINAL), arrays)
    logging.info("Done: test accuracy %.4f, sparsity of prunable layers %.4f (measured on the "
                 "final weights), sign flips vs init %.4f, wall time %s. Summary: %s",
                 summary["test_accuracy"], summary["sparsity"][metrics.TOTAL]["sparsity"],
                 summary["sign_flips_vs_init"][metrics.TOTAL],
                 metrics.format_duration(summary["wall_time_seconds"]),
                 os.path.join(workdir, "summary.json"))
  return summary


_factor_betas = jax.jit(signin.factor_betas)


def mean_signin_betas(parallelism: Parallelism, state: TrainState,
                      mask_layers) -> Dict[str, float]:
  """Per reparameterized layer: mean of m**2 - w**2 over unmasked entries. Only the parameters
  and the Sign-In state are fetched, not the rest of the optimizer state."""
  params, signin_state = parallelism.local(
      (state.params, signin.find_signin_state(state.opt_state)))
  betas = jax.device_get(_factor_betas(params, signin_state))
  return metrics.mean_betas(metrics.by_layer(betas), mask_layers)


def _non_finite_message(step: int, what: str, manager) -> str:
  latest = manager.latest_step()
  kept = (f"the last good checkpoint (step {latest}) in {manager.directory} is kept"
          if latest is not None else "no checkpoint had been written yet")
  return (f"Training stopped: {what} became non-finite at step {step}; {kept} and nothing "
          "later is saved. Lower config.learning_rate, or use config.dtype='float32' if "
          "training in bfloat16.")
