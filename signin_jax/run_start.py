"""What a run starts from: model, masks, optimizer and initial state, and the checks on them.

Everything here is a deterministic function of the config (and its seed), so every process of a
job, and a resumed run, builds the same start; :func:`check_same_masks` compares the processes'
masks and :func:`check_resumable` a checkpoint's layout with this run's.
"""

import functools
import hashlib
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from signin_jax import input_pipeline
from signin_jax import masks as masks_lib
from signin_jax import models
from signin_jax import parallel
from signin_jax import sparsity as sparsity_lib
from signin_jax import train_steps
from signin_jax import transfer

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# Model, masks and the initial state.

def _compute_dtype(config):
  return COMPUTE_DTYPES[config.dtype]


def create_model(config, *, num_classes: int):
  return models.get_model(
      config.model, num_classes=num_classes, width=config.width, dtype=_compute_dtype(config),
      bn_axis_name=parallel.PMAP_AXIS if config.parallelism == "pmap" else None)


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
  variables = lambda p: train_steps.model_variables(p, batch_stats)
  kwargs = {}
  if config.mask.method in masks_lib.DATA_DEPENDENT_METHODS:

    def loss_fn(p, batch):
      logits = apply_fn(variables(p), batch["image"], train=False)
      return jnp.mean(train_steps.cross_entropy(logits, batch["label"],
                                                num_classes=logits.shape[-1]))

    kwargs = dict(loss_fn=loss_fn, batch=sample_batch())
  elif config.mask.method == "synflow":
    kwargs = dict(apply_fn=lambda p, x: apply_fn(variables(p), x, train=False),
                  input_shape=input_shape)
  build = functools.partial(
      masks_lib.create_masks, sparsity=config.sparsity, method=config.mask.method,
      distribution=config.mask.distribution, scope=config.mask.scope,
      dense=tuple(config.mask.dense_layers))
  if train_steps.mask_structure(config).kind != "unstructured":
    build = functools.partial(build, structure=train_steps.mask_structure(config))
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


def run_length(config) -> Tuple[int, int]:
  """``(steps_per_epoch, num_steps)`` of the run: read off the dataset's info, nothing built."""
  steps_per_epoch = input_pipeline.steps_per_epoch(
      config.dataset, config.batch_size, data_dir=config.data_dir,
      process_count=jax.process_count(), split=config.train_split)
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(np.ceil(config.num_epochs * steps_per_epoch)))
  return steps_per_epoch, num_steps


def param_shapes(config):
  """A tree like the model's parameters, for checks that need only their shapes and dtypes:
  zero-strided numpy views of one zero each (no memory; ``jax.eval_shape`` of the model's init:
  nothing is compiled)."""
  dataset = input_pipeline.DATASETS[config.dataset]
  model = create_model(config, num_classes=dataset.num_classes)
  image = jax.ShapeDtypeStruct((1,) + tuple(dataset.image_shape), jnp.float32)
  shapes = jax.eval_shape(
      lambda x: model.init({"params": jax.random.PRNGKey(0)}, x, train=False), image)["params"]
  return jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), shapes)


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
  state: train_steps.TrainState  # Step 0: masked parameters and the optimizer's initial state.
  # True when built for a resume without reading config.init_from's source: the masks and the
  # state then have the right structure but not the source's values; only a checkpoint's state
  # may be trained from.
  structure_only: bool = False


def create_run_start(config: ml_collections.ConfigDict, *, resuming: bool = False) -> RunStart:
  """The model, masks, optimizer and initial state of a run, as ``train.train_and_evaluate``
  (and the benchmarks, to measure exactly what it runs) builds them.

  ``resuming``: the state will come from a checkpoint, which holds everything the run needs; a
  ``config.init_from`` source is then not read (it may have moved away since the run started),
  the result is ``structure_only``, and the initial masks are not checked against the schedule
  (a fresh start refuses masks the schedule cannot start from).
  """
  dataset = input_pipeline.DATASETS[config.dataset]
  steps_per_epoch, num_steps = run_length(config)
  data_kwargs = dict(data_dir=config.data_dir, augment=config.augment,
                     process_index=jax.process_index(),
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
  structure_only = bool(config.init_from.workdir) and resuming
  if config.init_from.workdir and not resuming:  # Another run's mask (and signs or magnitudes).
    source = transfer.load_source(config.init_from, params, sparsity=config.sparsity)
    masks = transfer.masks_from(source, params)
  else:
    masks = create_masks(config, mask_key, params, apply_fn=model.apply,
                         batch_stats=batch_stats, input_shape=input_shape,
                         sample_batch=sample_batch)
  tx = train_steps.create_optimizer(
      config, steps_per_epoch=steps_per_epoch, num_steps=num_steps, masks=masks, params=params,
      key=jax.random.fold_in(mask_key, 1), check_masks=not resuming)

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
  state = train_steps.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                                 batch_stats=batch_stats, opt_state=opt_state, rng=train_key)
  return RunStart(dataset=dataset, steps_per_epoch=steps_per_epoch, num_steps=num_steps,
                  data_kwargs=data_kwargs, model=model, variables=variables,
                  input_shape=input_shape, masks=masks, tx=tx, state=state,
                  structure_only=structure_only)
