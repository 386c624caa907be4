"""Checks a training config before anything is built or compiled.

Every problem raises ``ValueError`` naming the field (``config.<field>``), the value given and
what is allowed. :func:`validate_config` needs nothing but the config; :func:`validate_environment`
also checks it against the devices and the data on this machine; :func:`validate_run` against
the run's length in steps (export epochs, mask schedules that would never act).
"""

import numbers
import re
from typing import Any, Callable, Iterable

import numpy as np

from signin_jax import input_pipeline
from signin_jax import masks as masks_lib
from signin_jax import models
from signin_jax import signin
from signin_jax import sparsity
from signin_jax import straight_through
from signin_jax import structured
from signin_jax import train_steps
from signin_jax import transfer

PARALLELISM = ("jit", "pmap")
DTYPES = ("float32", "bfloat16")
BETA_SCALES = ("absolute", "weight_scale")
# TFDS splits with optional slices or percent ranges, joined by '+': 'train', 'train[:50000]',
# 'train[90%:]', 'train+validation[:10%]'.
_SPLIT_PART = r"[A-Za-z_]+(\[-?\d*%?:-?\d*%?\])?"
_SPLIT = re.compile(rf"{_SPLIT_PART}(\+{_SPLIT_PART})*")
LR_SCHEDULES = ("cosine", "step")
# jax.random.PRNGKey and the data pipeline's numpy SeedSequence take any non-negative integer;
# 2**31 - 1 keeps the seed a valid int32 / TensorFlow seed everywhere.
SEED_MAX = 2**31 - 1


def _fail(field: str, value: Any, allowed: str):
  raise ValueError(f"config.{field}={value!r} is invalid: {allowed}.")


def _one_of(config, field: str, allowed: Iterable[str]):
  value = _get(config, field)
  allowed = tuple(allowed)
  if value not in allowed:
    _fail(field, value, f"must be one of {', '.join(map(repr, allowed))}")


def _get(config, field: str):
  node = config
  for part in field.split("."):
    if part not in node:
      raise ValueError(f"config.{field} is missing; start configs from configs/default.py.")
    node = node[part]
  return node


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _number(config, field, *, low=None, high=None, low_open=False, high_open=False,
            integer=False):
  value = _get(config, field)
  ok = _is_int(value) if integer else _is_number(value)
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    kind = "an integer" if integer else "a number"
    lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
    _fail(field, value, f"must be {kind} {' and '.join(b for b in (lo, hi) if b)}".rstrip())


def _boolean(config, field):
  value = _get(config, field)
  if not isinstance(value, bool):
    _fail(field, value, "must be True or False")


def validate_config(config) -> None:
  """Static checks of every field the trainer reads."""
  _one_of(config, "model", models.MODEL_NAMES)
  _one_of(config, "dataset", sorted(input_pipeline.DATASETS))
  augment = _get(config, "augment")
  if augment is not None and not isinstance(augment, bool):
    _fail("augment", augment, "must be None (the dataset's default), True or False")
  width = _get(config, "width")
  if width is not None and not (_is_int(width) and width > 0):
    _fail("width", width, "must be None (the model's default) or a positive integer")

  _number(config, "num_train_steps", integer=True)
  if config.num_train_steps <= 0 and config.num_train_steps != -1:
    _fail("num_train_steps", config.num_train_steps,
          "must be -1 (derive from num_epochs) or a positive integer")
  if config.num_train_steps == -1:
    _number(config, "num_epochs", low=0, low_open=True)
  _number(config, "batch_size", low=1, integer=True)

  _number(config, "learning_rate", low=0)
  _one_of(config, "lr_schedule", LR_SCHEDULES)
  epochs = _get(config, "lr_step_epochs")
  if (not isinstance(epochs, (tuple, list)) or not all(_is_number(e) and e >= 0 for e in epochs)
      or list(epochs) != sorted(epochs)):
    _fail("lr_step_epochs", epochs, "must be an increasing sequence of non-negative epochs")
  _number(config, "lr_step_factor", low=0, low_open=True)
  _number(config, "warmup_epochs", low=0)
  _number(config, "momentum", low=0, high=1, high_open=True)
  _boolean(config, "nesterov")
  _number(config, "weight_decay", low=0)
  _number(config, "label_smoothing", low=0, high=1, high_open=True)
  _number(config, "seed", low=0, high=SEED_MAX, integer=True)

  _number(config, "sparsity", low=0, high=1, high_open=True)
  _one_of(config, "mask.method", masks_lib.METHODS)
  _one_of(config, "mask.distribution", masks_lib.DISTRIBUTIONS)
  _one_of(config, "mask.scope", masks_lib.SCOPES)
  dense_layers = _get(config, "mask.dense_layers")
  if isinstance(dense_layers, str) or not isinstance(dense_layers, (tuple, list)):
    _fail("mask.dense_layers", dense_layers, "must be a tuple of regular expressions")
  for pattern in dense_layers:
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      _fail("mask.dense_layers", dense_layers, f"must be regular expressions; {pattern!r} is not ({e})")
  _boolean(config, "mask.sparsity_aware_init")

  _validate_schedule(config)
  _validate_structure(config)
  _validate_init_from(config)

  for field in ("train_split", "eval_split"):
    value = _get(config, field)
    if value is not None and not (isinstance(value, str) and _SPLIT.fullmatch(value)):
      _fail(field, value, "must be None (the dataset's own split) or a TFDS split or sub-split "
            "such as 'train', 'train[:50000]', 'train[90%:]'")

  _boolean(config, "signin.enabled")
  _number(config, "signin.beta", low=0)
  _one_of(config, "signin.beta_scale", BETA_SCALES)
  _number(config, "signin.reset_every_epochs", low=0, integer=True)
  _one_of(config, "signin.inner_state_at_reset", signin.INNER_STATE_AT_RESET)

  _one_of(config, "parallelism", PARALLELISM)
  _one_of(config, "dtype", DTYPES)
  _validate_distributed(config)
  _number(config, "eval_every_epochs", low=1, integer=True)
  _number(config, "log_every_steps", low=1, integer=True)
  _number(config, "checkpoint_every_steps", low=1, integer=True)
  _number(config, "keep_checkpoints", low=1, integer=True)


def _validate_schedule(config) -> None:
  _one_of(config, "schedule.method", sparsity.SCHEDULES + straight_through.METHODS)
  method = config.schedule.method
  if method == "static":
    return
  if config.sparsity == 0.0:
    _fail("schedule.method", method, "needs config.sparsity > 0 (a dense run has no mask to "
          "change); use 'static' for the dense baseline")
  if method in ("rigl", "set") and config.mask.scope != "layer":
    _fail("mask.scope", config.mask.scope,
          f"must be 'layer' with config.schedule.method={method!r} (RigL and SET keep each "
          "layer's count)")
  if method in ("gmp", "rigl", "set"):
    _number(config, "schedule.update_every_steps", low=1, integer=True)
    _number(config, "schedule.start", low=0, high=1)
    _number(config, "schedule.end", low=0, high=1)
    if config.schedule.end < config.schedule.start or (
        method == "gmp" and config.schedule.end == config.schedule.start):
      _fail("schedule.end", config.schedule.end,
            f"must be {'>' if method == 'gmp' else '>='} config.schedule.start="
            f"{config.schedule.start}")
  if method == "gmp":
    _number(config, "schedule.initial_sparsity", low=0)
    if not config.schedule.initial_sparsity < config.sparsity:
      _fail("schedule.initial_sparsity", config.schedule.initial_sparsity,
            f"must be >= 0 and < config.sparsity={config.sparsity}")
  if method in ("rigl", "set"):
    _number(config, "schedule.drop_fraction", low=0, low_open=True, high=1)
    _one_of(config, "schedule.drop_fraction_anneal", sparsity.DROP_FRACTION_ANNEALS)
  if method == "acdc":
    _number(config, "schedule.warmup", low=0, high=1, high_open=True)
    _number(config, "schedule.phase", low=0, low_open=True, high=1)
    _number(config, "schedule.final", low=0, low_open=True, high=1)
    if config.schedule.warmup + config.schedule.final > 1:
      _fail("schedule.final", config.schedule.final,
            f"must be <= 1 - config.schedule.warmup={config.schedule.warmup} (warm-up and "
            "final fine-tune share the run)")


def _validate_init_from(config) -> None:
  epochs = _get(config, "export_epochs")
  if not isinstance(epochs, (tuple, list)) or not all(_is_int(e) and e >= 0 for e in epochs):
    _fail("export_epochs", epochs, "must be a sequence of epochs >= 0 (0: the initialization)")
  workdir = _get(config, "init_from.workdir")
  if workdir is None:
    return
  if not isinstance(workdir, str) or not workdir:
    _fail("init_from.workdir", workdir, "must be None or the workdir of a finished run")
  _one_of(config, "init_from.signs", transfer.SIGNS)
  _one_of(config, "init_from.magnitudes", transfer.MAGNITUDES)
  for field in ("mask_epoch", "signs_epoch", "magnitudes_epoch"):
    _number(config, f"init_from.{field}", low=-1, integer=True)
  if config.sparsity == 0.0:
    _fail("init_from.workdir", workdir, "needs config.sparsity > 0 (it transfers a mask)")
  if config.schedule.method in ("gmp", "acdc"):
    _fail("schedule.method", config.schedule.method,
          "must be 'static', 'rigl' or 'set' with config.init_from (GMP and AC/DC start dense)")


def _validate_distributed(config) -> None:
  _boolean(config, "distributed")
  coordinator = _get(config, "distributed_coordinator")
  if coordinator is not None:
    host, _, port = coordinator.rpartition(":") if isinstance(coordinator, str) else ("", "", "")
    if not (host and port.isdigit() and 0 < int(port) < 65536):
      _fail("distributed_coordinator", coordinator,
            "must be None (detected from the cluster) or 'host:port' of process 0, e.g. "
            "'10.0.0.2:1234' (port 1-65535)")
  num_processes = _get(config, "num_processes")
  if num_processes is not None and not (_is_int(num_processes) and num_processes >= 1):
    _fail("num_processes", num_processes,
          "must be None (detected from the cluster) or a positive integer")
  process_id = _get(config, "process_id")
  if process_id is not None:
    high = f" and < config.num_processes={num_processes}" if num_processes is not None else ""
    if not (_is_int(process_id) and process_id >= 0
            and (num_processes is None or process_id < num_processes)):
      _fail("process_id", process_id,
            f"must be None (detected from the cluster) or an integer >= 0{high}")
  if not config.distributed:
    for field in ("distributed_coordinator", "num_processes", "process_id"):
      if _get(config, field) is not None:
        _fail(field, _get(config, field),
              "must be None unless config.distributed=True (it configures a multi-process run)")


def validate_environment(config, *, device_count: int, init_from: bool = True) -> None:
  """Checks that depend on this machine: the device count, the prepared dataset and (unless
  ``init_from=False``: a resumed run does not read it) ``config.init_from``'s source files."""
  if config.batch_size % device_count:
    _fail("batch_size", config.batch_size,
          f"must be divisible by the number of devices ({device_count}), e.g. "
          f"{max(device_count, config.batch_size // device_count * device_count)}")
  try:
    input_pipeline.check_dataset(config.dataset, config.data_dir)
  except ValueError as e:  # ImageNet: neither prepared nor in the manual dir.
    raise ValueError(f"config.dataset={config.dataset!r} is not available: {e}") from e
  if not input_pipeline.is_readable(config.dataset, config.data_dir):
    where = config.data_dir or "TFDS's default data_dir (~/tensorflow_datasets)"
    raise ValueError(
        f"config.dataset={config.dataset!r} is not prepared in {where}: run "
        f"`python -m signin_jax.prepare_data {config.dataset}"
        f"{' --data_dir=' + config.data_dir if config.data_dir else ''}` (main.py does this "
        "itself), or set config.data_dir to where it is prepared.")
  if init_from and config.init_from.workdir is not None:
    transfer.check_available(config.init_from)
  info = input_pipeline.DATASETS[config.dataset]
  for field, default in (("train_split", info.train_split), ("eval_split", info.eval_split)):
    split = _get(config, field) or default
    if input_pipeline.num_examples(config.dataset, split, data_dir=config.data_dir) == 0:
      _fail(field, _get(config, field),
            f"selects no examples of {config.dataset}'s split {split!r}; give a non-empty "
            "split such as 'train', 'train[:50000]' or 'test'")


def validate_run(config, *, steps_per_epoch: int, num_steps: int,
                 param_shapes: Callable[[], Any]) -> None:
  """Checks that need the run's length (from the dataset's size), still before anything is built.

  Refused: ``config.export_epochs`` that never end in the run, and a mask schedule that never
  changes the mask once resolved to steps: GMP, RigL or SET with no update step; RigL or SET
  whose every update drops ``floor(f(t) * k) = 0`` weights in every layer (``k`` kept, ``f``
  the annealed drop fraction); AC/DC without a dense phase after its first sparse one.
  ``param_shapes()`` (the parameters' shapes, e.g. ``run_start.param_shapes``) is called only
  for those schedules. Messages name the config's fields, and the steps they resolve to.
  """
  _validate_export_epochs(config, steps_per_epoch, num_steps)
  if (config.schedule.method in ("static",) + straight_through.METHODS
      or config.sparsity == 0.0):  # The straight-through methods change the mask every step.
    return
  _validate_schedule_acts(config, num_steps, param_shapes)


def _validate_export_epochs(config, steps_per_epoch: int, num_steps: int) -> None:
  last = num_steps // steps_per_epoch  # Epoch k ends at step k * steps_per_epoch.
  beyond = [e for e in config.export_epochs if e > last]
  if beyond:
    _fail("export_epochs", config.export_epochs,
          f"epoch{'s' if len(beyond) > 1 else ''} {', '.join(map(str, beyond))} never "
          f"end{'' if len(beyond) > 1 else 's'}: the run has {num_steps} steps, "
          f"{steps_per_epoch} per epoch, so epochs 0 to {last} end in it (0: the "
          "initialization); drop the others or lengthen the run")


def _validate_schedule_acts(config, num_steps: int, param_shapes: Callable[[], Any]) -> None:
  method, s = config.schedule.method, config.schedule
  step = lambda fraction: int(round(fraction * num_steps))  # As sparsity.create_schedule.
  of_run = f"of the run's {num_steps} steps"
  if method == "gmp" and step(s.end) <= step(s.start):
    _fail("schedule.end", s.end,
          f"GMP would prune from step {step(s.start)} (config.schedule.start={s.start} {of_run}) "
          f"to step {step(s.end)} (config.schedule.end={s.end}): no steps to prune over; set "
          "config.schedule.end so that the two steps differ")
  if method == "acdc":
    warmup, final = step(s.warmup), max(step(s.final), 1)
    if warmup > num_steps - final:
      _fail("schedule.warmup", s.warmup,
            f"the dense warm-up ends at step {warmup} (config.schedule.warmup={s.warmup} "
            f"{of_run}), after the final sparse phase begins (its last {final} steps, "
            f"config.schedule.final={s.final}); lower one of the two")
  try:
    schedule = train_steps.mask_schedule(config, param_shapes(), num_steps=num_steps)
  except ValueError as e:  # A case the checks above missed: still name the config's fields.
    raise ValueError(f"config.schedule (method {method!r}) does not resolve to a schedule for "
                     f"the run's {num_steps} steps: {e}") from e
  if method in ("gmp", "rigl", "set") and not schedule.update_steps:
    start, end = step(s.start), step(s.end)
    _fail("schedule.update_every_steps", s.update_every_steps,
          f"the mask never changes: with config.schedule.method={method!r} it changes at the "
          f"multiples of {s.update_every_steps} steps from step {max(start, 1)} "
          f"(config.schedule.start={s.start}) to step {end} (config.schedule.end={s.end} "
          f"{of_run}), and there are none; "
          + (f"set it to at most {end}" if end >= max(start, 1) else
             "widen config.schedule.start to config.schedule.end"))
  if method in ("rigl", "set"):
    _validate_drops(config, schedule, num_steps)
  if method == "acdc":
    _validate_acdc_alternates(config, schedule, num_steps)


def _validate_drops(config, schedule, num_steps: int) -> None:
  """RigL and SET drop floor(f(t) * k) weights per layer at an update at step t (k kept, f the
  annealed drop fraction; sparsity.rigl), in float32 as they do."""
  s = config.schedule
  fractions = np.asarray(sparsity.drop_fraction_at(
      np.asarray(schedule.update_steps), drop_fraction=s.drop_fraction,
      start_step=int(round(s.start * num_steps)), end_step=int(round(s.end * num_steps)),
      anneal=s.drop_fraction_anneal), np.float32)
  fractions = np.broadcast_to(fractions, (len(schedule.update_steps),))
  counts = np.asarray(schedule.target_counts, np.float32)
  dropped = fractions[:, None] * counts
  if np.any(np.floor(dropped) >= 1):
    return
  largest = float(dropped.max()) if dropped.size else 0.0
  kind = config.mask.get("structure", "unstructured")
  units = {"unstructured": "weights", "n:m": "weights", "channel": "channels",
           "block": "blocks"}.get(kind, "units")
  _fail("schedule.drop_fraction", s.drop_fraction,
        f"with config.schedule.method={s.method!r} every update drops no {units[:-1]}: "
        f"floor(f * k) = 0 for each layer's k kept {units} (at most {int(counts.max())}, "
        f"config.mask.structure={kind!r}) at each of the "
        f"{len(fractions)} updates, f being config.schedule.drop_fraction annealed by "
        f"config.schedule.drop_fraction_anneal={s.drop_fraction_anneal!r} (f <= "
        f"{float(fractions.max()):.4g}); raise it to at least "
        f"{s.drop_fraction / largest if largest else float('inf'):.3g}")


def _validate_acdc_alternates(config, schedule, num_steps: int) -> None:
  """AC/DC's updates alternate sparse and dense phases; the first is sparse (sparsity.acdc)."""
  counts = np.asarray(schedule.target_counts)
  if any(not np.array_equal(row, counts[0]) for row in counts[1:]):
    return  # A dense phase follows the first sparse one.
  s = config.schedule
  step = lambda fraction: int(round(fraction * num_steps))
  warmup, final = step(s.warmup), max(step(s.final), 1)
  between = num_steps - final - warmup
  if between < 2:
    _fail("schedule.final", s.final,
          f"AC/DC has no dense phase after its first sparse one: the dense warm-up "
          f"(config.schedule.warmup={s.warmup}: {warmup} steps) and the final sparse phase "
          f"(config.schedule.final={s.final}: {final} steps) leave {between} of the run's "
          f"{num_steps} steps to alternate sparse and dense phases in, and that takes at "
          "least 2; lower one of the two")
  _fail("schedule.phase", s.phase,
        f"AC/DC has no dense phase after its first sparse one: that phase, "
        f"{max(step(s.phase), 1)} steps long (config.schedule.phase={s.phase} of the run's "
        f"{num_steps} steps), fills the {between} steps between the dense warm-up and the "
        f"final sparse phase; set it to at most {(between - 1) / num_steps:.4g}")


def _validate_structure(config) -> None:
  """config.mask.structure and its fields (issue 21), and the schedules that can keep it."""
  _one_of(config, "mask.structure", structured.STRUCTURES)
  kind, method = config.mask.structure, config.schedule.method
  if method == "sr_ste":
    _number(config, "schedule.sr_ste_lambda", low=0)
  if kind == "unstructured":
    return
  if kind == "n:m":
    n, m = _get(config, "mask.n"), _get(config, "mask.m")
    if not (_is_int(n) and _is_int(m) and 0 < n < m):
      _fail("mask.n", n, f"must be an integer with 0 < mask.n < mask.m (mask.m={m!r})")
    if abs(config.sparsity - (1 - n / m)) > 1e-9:
      _fail("sparsity", config.sparsity, f"must be 1 - mask.n / mask.m = {1 - n / m!r} with "
            f"mask.structure='n:m' ({n}:{m} fixes the density)")
  if kind == "block":
    shape = _get(config, "mask.block_shape")
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2
            and all(_is_int(b) and b >= 1 for b in shape)):
      _fail("mask.block_shape", shape, "must be (rows, cols), two positive integers")
  if config.mask.scope != "layer":
    _fail("mask.scope", config.mask.scope,
          f"must be 'layer' with mask.structure={kind!r} (per-layer counts of units)")
  if method == "gmp":
    _fail("schedule.method", method, f"is not available with mask.structure={kind!r}; "
          "allowed: 'static', 'acdc', 'rigl', 'set', 'ste', 'sr_ste'")
  if config.sparsity == 0.0:
    _fail("mask.structure", kind, "needs config.sparsity > 0")
  if _get(config, "init_from.workdir"):
    _fail("mask.structure", kind, "does not combine with config.init_from (a transferred "
          "mask's structure is not checked); use 'unstructured'")
