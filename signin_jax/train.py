"""Training and evaluation: dense baselines, pruning at init (PaI) and Sign-In through one path.

    python main.py --config=configs/fashion_mnist_quickstart.py --workdir=workdirs/quickstart

:func:`train_and_evaluate` is the loop: epochs, evaluation, checkpoints, exports and the finish.
It composes helpers that each live in their own module and never import this one:

    train_steps.py  the optimizer (``create_optimizer``) and the pure ``train_step`` / ``eval_step``
    parallel.py     joining a multi-process job, pmap / jit over a Mesh, prefetch, preemption
    run_start.py    model, masks, optimizer and initial state; mask digests; resume checks
    run_files.py    the workdir's files, written atomically
    workdir_lock.py one run per workdir (a second run stops at once)
    resume_config.py  which config fields a resumed run may change

Every kind of run (dense, PaI, Sign-In, each mask schedule) differs only in the optimizer, so
every comparison is like for like.

Multi-host: each process reads its own slice of every global batch, all processes run the same
steps, only process 0 writes logs, summaries and exports; checkpoints are written collectively by
orbax. Determinism: the data pipeline is a function of (seed, step), the per-step RNG is
``fold_in(rng, step)``, so a run resumed from a checkpoint at step s continues exactly (bitwise)
as the uninterrupted run would have.

Outputs in ``workdir``: ``checkpoints/``, TensorBoard event files, ``metrics.jsonl``,
``config.json`` (written once the run is known to be valid), ``weights/epoch_<k>.npz`` for every
epoch k of ``config.export_epochs``, ``run.lock`` while the run holds the workdir, and at the
end, in this order:

    final_weights.npz  theta (the trained sparse weights), BatchNorm statistics, masks: what
                       config.init_from of a later run reads
    final_weights.sjx  the same, compact and lossless (signin_jax.sparse_export)
    report.png         the run's figure (signin_jax.report; a failure to draw is only logged)
    summary.json       LAST: a summary means every other file is there. A file added to the end
                       of a run goes before it (_finish).

What a run does when it is refused, stopped, run twice or out of disk: docs/runs.md.
"""

import collections
import dataclasses
import errno
import logging as logging_std
import os
import time
from typing import Any, Dict, Optional, Tuple

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from signin_jax import checkpointing
from signin_jax import config_validation
from signin_jax import flat_threefry
from signin_jax import input_pipeline
from signin_jax import masks as masks_lib
from signin_jax import metrics
from signin_jax import models
from signin_jax import parallel
from signin_jax import report
from signin_jax import resume_config
from signin_jax import run_files
from signin_jax import run_start
from signin_jax import signin
from signin_jax import sparse_export
from signin_jax import sparsity as sparsity_lib
from signin_jax import structured
from signin_jax import train_steps
from signin_jax import transfer
from signin_jax import workdir_lock


# The compact lossless export of the final network (signin_jax.sparse_export), beside
# final_weights.npz (transfer.weights_file), which config.init_from of a later run reads.
EXPORT_FILE = "final_weights.sjx"


class NonFiniteLossError(FloatingPointError):
  """Training produced a non-finite loss or state; nothing after the last good step is saved."""


def evaluate(parallelism: parallel.Parallelism, state, config) -> Dict[str, float]:
  """Test loss and accuracy over every test example exactly once."""
  totals = collections.Counter()
  in_flight = collections.deque()
  for batch in input_pipeline.eval_iterator(
      config.dataset, global_batch_size=config.batch_size, data_dir=config.data_dir,
      process_index=jax.process_index(), process_count=jax.process_count(),
      split=config.eval_split):
    in_flight.append(parallelism.eval_step(state, parallelism.put_batch(batch)))
    if len(in_flight) > parallel.MAX_STEPS_IN_FLIGHT:
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming from its checkpoints) and evaluates it.

  Returns the summary also written to ``workdir/summary.json``; if the run was asked to stop
  (SIGTERM / preemption) it saves a checkpoint and returns ``{'preempted': True, 'step': s}``
  (main.py then exits with ``parallel.EXIT_CODE_PREEMPTED``).

  Raises:
    ValueError: invalid config, or a checkpoint written under another config (before anything
      is compiled or written).
    workdir_lock.WorkdirLockedError: another run holds the workdir (nothing is touched).
    NonFiniteLossError: the loss or the state became non-finite; the last good checkpoint stays.
    OSError: a file could not be written (a full disk); the message names the file or workdir.
  """
  config_validation.validate_config(config)
  _quiet_library_info_logs()
  parallel.initialize_distributed(config)
  flat_threefry.install()  # The same random numbers, compiled in seconds on a CPU.
  # init_from's source files are checked below, once it is known whether this run resumes.
  config_validation.validate_environment(config, device_count=jax.device_count(),
                                         init_from=False)
  steps_per_epoch, num_steps = run_start.run_length(config)
  config_validation.validate_run(config, steps_per_epoch=steps_per_epoch, num_steps=num_steps,
                                 param_shapes=lambda: run_start.param_shapes(config))
  started = time.time()
  workdir = workdir if metrics.is_remote(workdir) else os.path.abspath(workdir)
  try:
    with workdir_lock.acquire(workdir):  # A second run on this workdir stops here.
      return _run(config, workdir, started=started)
  except OSError as e:  # E.g. orbax's or TensorFlow's own writes on a full disk.
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and workdir not in str(e):
      raise run_files.naming(e, f"writing the run's files in {workdir}") from e
    raise


def _run(config, workdir: str, *, started: float) -> Dict[str, Any]:
  """The run, once this process (or its job) holds the workdir."""
  # Nothing in the workdir changes until the run is known to be valid: the checkpoints are read
  # without orbax's manager (which deletes unfinished saves when it is created), config.json is
  # written once the start is built.
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  saved = checkpointing.saved_metas(checkpoint_dir)
  resume_config.check({step: meta.get("config") for step, meta in saved.items()}, config,
                      directory=checkpoint_dir)
  if config.init_from.workdir and not saved:  # Resumed runs do not read the source.
    transfer.check_available(config.init_from)
  run = run_start.create_run_start(config, resuming=bool(saved))
  if jax.process_index() == 0:
    run_files.write_json_atomically(os.path.join(workdir, "config.json"), config.to_dict())
  manager = checkpointing.create_manager(checkpoint_dir, keep=config.keep_checkpoints)
  closers = [manager.close]
  try:
    progress = _resume(config, run, manager, workdir, started=started)
    if progress.start_step == 0 and run.structure_only:  # No checkpoint was intact after all.
      transfer.check_available(config.init_from)
      run = run_start.create_run_start(config)
      progress = _resume(config, run, manager, workdir, started=started)
    parallelism = parallel.create_parallelism(config, model=run.model, tx=run.tx,
                                              num_classes=run.dataset.num_classes)
    progress.state = parallelism.put_state(progress.state)
    writer = metrics.create_writer(workdir, is_main_process=jax.process_index() == 0)
    preemption = parallel.PreemptionWatch()
    closers += [writer.close, preemption.close]
    _log_start(config, run, writer, start_step=progress.start_step)
    if progress.start_step == 0 and 0 in config.export_epochs:
      _export_weights(parallelism, progress, 0)
    stopped_at = _train(config, run, parallelism, progress, manager, writer, preemption)
    if stopped_at is not None:
      return {"preempted": True, "step": stopped_at}
    return _finish(config, run, parallelism, progress, manager, writer, workdir)
  finally:
    for close in reversed(closers):
      close()


# The four sets of per-layer references the run keeps (in checkpoints, as ``extras``): the
# masks and signs at initialization and at the last epoch's end, over the prunable layers.
_EXTRAS = ("init_masks", "epoch_masks", "init_signs", "epoch_signs")


@dataclasses.dataclass
class _Progress:
  """What the loop changes as it goes, beside the training state."""
  state: train_steps.TrainState  # Canonical layout until the loop's parallelism takes it.
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


def _resume(config, run: run_start.RunStart, manager, workdir: str, *, started: float) -> _Progress:
  """The run's progress: from the newest intact checkpoint, or from the start."""
  params = run.state.params
  tracked = tuple(k for k, is_prunable in metrics.by_layer(masks_lib.prunable(params)).items()
                  if is_prunable)
  weights = _tracked(metrics.by_layer(jax.device_get(params)), tracked)
  masks = (_tracked(metrics.by_layer(jax.device_get(run.masks)), tracked)
           if run.masks is not None else {})
  signs = metrics.signs(weights)
  extras = {"init_masks": masks, "epoch_masks": masks, "init_signs": signs, "epoch_signs": signs}
  replicated = NamedSharding(Mesh(np.asarray(jax.devices()), (parallel.MESH_AXIS,)), P())
  state = parallel.replicate_from_host(jax.device_get(run.state), replicated)
  canonical_extras = parallel.replicate_from_host(extras, replicated)
  restored = checkpointing.restore_latest_good(
      manager, state_target=state, extras_target=canonical_extras,
      quarantine_dir=os.path.join(workdir, "checkpoints_corrupt"))
  progress = _Progress(state=state, extras=extras, canonical_extras=canonical_extras,
                       start_step=0, started=started, elapsed_before=0.0, tracked=tracked,
                       workdir=workdir)
  if restored is None:
    return progress
  run_start.check_resumable(restored.meta, step=restored.step, steps_per_epoch=run.steps_per_epoch,
                  batch_size=config.batch_size)
  logging.info("Resuming from the checkpoint at step %d.", restored.step)
  progress.state, progress.canonical_extras = restored.state, restored.extras
  progress.extras = jax.tree.map(parallel.local_replica, restored.extras)
  progress.start_step = int(parallel.local_replica(restored.state.step))
  progress.elapsed_before = float(restored.meta.get("elapsed_seconds", 0.0))
  if not run.structure_only and any(not np.array_equal(progress.extras["init_masks"][k], v)
                                    for k, v in masks.items()):
    # Data-dependent scores on other hardware, say; the masks in use are in the state.
    logging.warning("The initial masks computed now differ from the checkpoint's; continuing "
                    "with the checkpoint's.")
  return progress


def _tracked(layers: Dict[str, Any], tracked) -> Dict[str, Any]:
  return {k: layers[k] for k in tracked}


def _current_masks(parallelism: parallel.Parallelism, state: train_steps.TrainState,
                   tracked) -> Dict[str, np.ndarray]:
  """The masks in use ({layer: bool}, host), read off the optimizer state; {} if dense."""
  masks = sparsity_lib.current_masks(state.opt_state)
  return {} if masks is None else _tracked(metrics.by_layer(parallelism.local(masks)), tracked)


def _structures(config, params):
  """The density table's structure column (issue 21), None for unstructured masks."""
  structure = train_steps.mask_structure(config)
  if structure.kind == "unstructured":
    return None
  return structured.describe(structure, params, dense=tuple(config.mask.dense_layers))


def _log_start(config, run: run_start.RunStart, writer, *, start_step: int) -> None:
  if jax.process_index() != 0:
    return
  params = run.state.params
  if run.masks is not None and not run.structure_only:  # Else the checkpoint's masks are used.
    positions = models.output_positions(run.model, run.variables, run.input_shape)
    logging.info("Per-layer density%s:\n%s",
                 "" if config.schedule.method == "static" else " at the start (the schedule "
                 f"{config.schedule.method!r} changes it)",
                 masks_lib.format_summary(masks_lib.summary(
                     params, run.masks, positions=positions,
                     structures=_structures(config, params))))
  logging.info("Training %s on %s for %d steps (%d per epoch, global batch %d) on %d %s "
               "device(s), %d process(es), parallelism=%s, dtype=%s, mask schedule %s; %d "
               "parameters.", config.model, config.dataset, run.num_steps, run.steps_per_epoch,
               config.batch_size, jax.device_count(), jax.devices()[0].platform,
               jax.process_count(), config.parallelism, config.dtype,
               config.schedule.method if run.masks is not None else "none (dense)",
               models.count_params(params))
  if start_step == 0:
    writer.write_hparams(run_files.flat_config(config))


def _train(config, run: run_start.RunStart, parallelism: parallel.Parallelism,
           progress: _Progress, manager, writer, preemption) -> Optional[int]:
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

  train_iter = parallel.prefetch(map(parallelism.put_batch, input_pipeline.train_iterator(
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
    if len(pending) > parallel.MAX_STEPS_IN_FLIGHT:
      jax.block_until_ready(pending[-1 - parallel.MAX_STEPS_IN_FLIGHT])
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
      _save_checkpoint(config, run, parallelism, progress, manager, writer, step)
    if preempted and not is_last:
      manager.wait_until_finished()
      writer.flush()
      if jax.process_count() > 1:
        # No process exits before every one has saved: under `srun --kill-on-bad-exit=1` the
        # first non-zero exit (EXIT_CODE_PREEMPTED) ends the others at once.
        multihost_utils.sync_global_devices(f"checkpoint of step {step} saved before stopping")
      logging.warning("Stop requested (SIGTERM/preemption): saved the checkpoint at step %d "
                      "in %s; rerun the same command to resume (main.py exits with %d).",
                      step, manager.directory, parallel.EXIT_CODE_PREEMPTED)
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
    progress.canonical_extras = parallel.replicate_from_host(extras, parallelism.replicated)
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
    run_files.save_npz_atomically(path, arrays)


def _save_checkpoint(config, run, parallelism, progress, manager, writer, step: int) -> None:
  # The metrics up to this step reach the disk first, so that a run killed right after the save
  # (which a resume continues after) lost none of them. On gs:// a flush rewrites metrics.jsonl.
  writer.flush()
  try:
    checkpointing.save(manager, step, state=parallelism.canonical(progress.state),
                       extras=progress.canonical_extras, meta={
                           "data_position": step, "epoch": step / run.steps_per_epoch,
                           "steps_per_epoch": run.steps_per_epoch,
                           "process_count": jax.process_count(),
                           "device_count": jax.device_count(),
                           "elapsed_seconds": progress.elapsed(),
                           "config": resume_config.record(config)})
  except checkpointing.NonFiniteStateError as e:
    raise NonFiniteLossError(_non_finite_message(step, "the training state", manager)) from e


def _finish(config, run, parallelism, progress, manager, writer, workdir: str) -> Dict[str, Any]:
  """The final evaluation, then (process 0) the end-of-run files in this order: final_weights.npz,
  final_weights.sjx, report.png, summary.json. The summary comes last, so that it means done."""
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
  if jax.process_index() != 0:
    return summary
  run_files.save_npz_atomically(transfer.weights_file(workdir, transfer.FINAL), arrays)
  summary["export"] = _export_compact(config, run, parallelism, state, masks, workdir)
  writer.flush()  # The report reads metrics.jsonl.
  try:
    drawn = report.write_run_report(workdir, summary)
  except Exception:  # pylint: disable=broad-except  # A figure never fails a finished run.
    logging.exception("Could not draw the run's report %s (the run itself is complete; "
                      "`python -m signin_jax.report %s` draws it later):",
                      os.path.join(workdir, report.REPORT_FILE), workdir)
    drawn = None
  summary_path = os.path.join(workdir, "summary.json")
  run_files.write_json_atomically(summary_path, summary)
  export = summary["export"]
  logging.info("Done: test accuracy %.4f, sparsity of prunable layers %.4f (measured on the "
               "final weights), sign flips vs init %.4f, wall time %s. Compact export %s: %s "
               "bytes, %.2f %% of the %s bytes of every tensor stored dense (prunable layers: "
               "%.2f %%). Report: %s. Summary: %s",
               summary["test_accuracy"], summary["sparsity"][metrics.TOTAL]["sparsity"],
               summary["sign_flips_vs_init"][metrics.TOTAL],
               metrics.format_duration(summary["wall_time_seconds"]),
               os.path.join(workdir, export["file"]), f"{export['file_bytes']:,}",
               100 * export["file_bytes"] / max(export["dense_bytes"], 1),
               f"{export['dense_bytes']:,}", 100 * export["prunable_share"],
               drawn or "not drawn (see the error above)", summary_path)
  return summary


def _export_compact(config, run, parallelism, state, masks: Dict[str, np.ndarray],
                    workdir: str) -> Dict[str, Any]:
  """final_weights.sjx (sparse_export: lossless, masked weights not stored); its byte counts."""
  tree_masks = None
  if masks:  # The prunable layers' masks, None at the other leaves.
    tree_masks = jax.tree_util.tree_map_with_path(
        lambda path, _: masks.get(metrics.layer_name(path)), parallelism.local(state.params))
  data, stats = sparse_export.encode(
      params=parallelism.local(state.params), masks=tree_masks,
      batch_stats=parallelism.local(state.batch_stats) or None,
      metadata={"model": config.model, "width": config.width,
                "num_classes": run.dataset.num_classes, "dtype": config.dtype,
                "input_shape": list(run.input_shape), "config": config.to_dict()})
  run_files.write_atomically(os.path.join(workdir, EXPORT_FILE), data)
  return {"file": EXPORT_FILE, "file_bytes": stats.file_bytes, "dense_bytes": stats.dense_bytes,
          "prunable_bytes": stats.masked_bytes,
          "prunable_dense_bytes": stats.masked_dense_bytes,
          "prunable_share": stats.masked_share}


_factor_betas = jax.jit(signin.factor_betas)


def mean_signin_betas(parallelism: parallel.Parallelism, state: train_steps.TrainState,
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
