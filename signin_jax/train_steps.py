"""The run's optimizer and its pure train and eval steps, written once for every kind of run.

Runs differ only in the optimizer that :func:`create_optimizer` builds::

    inner = inject_hyperparams(add_decayed_weights(weight_decay) -> sgd(schedule, momentum))
    tx    = sparse_training(sign_in(inner, beta, reset_every), schedule, masks)  # Sign-In, sparse
          | sparse_training(inner, schedule, masks)                             # without Sign-In
          | sign_in(inner, ...) or inner                                        # dense (sparsity 0)

where the schedule (``config.schedule.method``) is 'static' (pruning at init: the mask never
changes) or a dense-to-sparse method (GMP, AC/DC, RigL, SET) that changes the masks inside the
jitted update; the masks live in the optimizer state. :func:`train_step` and :func:`eval_step`
are pure; ``signin_jax.parallel`` wraps them for ``pmap`` or ``jit`` over a device Mesh.
"""

import functools
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from signin_jax import signin
from signin_jax import sparsity as sparsity_lib
from signin_jax import straight_through
from signin_jax import structured


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
  structure = mask_structure(config)
  dense = tuple(config.mask.dense_layers)
  if method in straight_through.METHODS:
    return straight_through.straight_through(
        tx, structured.magnitude_mask_fn(structure, params, masks, dense=dense), masks,
        sr_ste_lambda=config.schedule.sr_ste_lambda if method == "sr_ste" else 0.0,
        # The dense weights start at the dense initialization, as in SR-STE's reference code:
        # pruned weights keep their initial values and can win back their place.
        dense_params=params,
        check_masks=(structured.check_structure_fn(structure, params, dense=dense)
                     if check_masks else None))
  return sparsity_lib.sparse_training(tx, mask_schedule(config, params, num_steps=num_steps),
                                      masks, key=key, check_masks=check_masks)


def mask_schedule(config, params, *, num_steps: int) -> sparsity_lib.MaskSchedule:
  """``config.schedule`` resolved for a run of ``num_steps`` (``params``: arrays or shapes), in
  ``config.mask``'s structure; not for the straight-through methods, which have no schedule."""
  structure = mask_structure(config)
  if structure.kind != "unstructured":
    return structured.create_schedule(
        config.schedule.method, params, structure, sparsity=config.sparsity,
        num_steps=num_steps, update_every=config.schedule.update_every_steps,
        start=config.schedule.start, end=config.schedule.end,
        drop_fraction=config.schedule.drop_fraction,
        drop_fraction_anneal=config.schedule.drop_fraction_anneal,
        warmup=config.schedule.warmup, phase=config.schedule.phase, final=config.schedule.final,
        distribution=config.mask.distribution, dense=tuple(config.mask.dense_layers))
  return sparsity_lib.create_schedule(
      config.schedule.method, params, sparsity=config.sparsity, num_steps=num_steps,
      update_every=config.schedule.update_every_steps, start=config.schedule.start,
      end=config.schedule.end, initial_sparsity=config.schedule.initial_sparsity,
      drop_fraction=config.schedule.drop_fraction,
      drop_fraction_anneal=config.schedule.drop_fraction_anneal,
      warmup=config.schedule.warmup, phase=config.schedule.phase, final=config.schedule.final,
      distribution=config.mask.distribution, scope=config.mask.scope,
      dense=tuple(config.mask.dense_layers))


def mask_structure(config) -> structured.Structure:
  """``config.mask``'s :class:`structured.Structure` ('unstructured' for configs without it)."""
  mask = config.mask
  return structured.structure(mask.get("structure", "unstructured"), n=mask.get("n", 2),
                              m=mask.get("m", 4), block_shape=mask.get("block_shape", (4, 4)))


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
# Train and eval steps: pure, written once, wrapped by `parallel.make_parallelism`.

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


def model_variables(params, batch_stats):
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
        model_variables(params, state.batch_stats), batch["image"], train=True,
        mutable=["batch_stats"], rngs={"dropout": rng})
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
  logits = apply_fn(model_variables(state.params, state.batch_stats), batch["image"], train=False)
  weight = batch["mask"].astype(jnp.float32)
  losses = cross_entropy(logits, batch["label"], num_classes=num_classes)
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  sums = {"loss": jnp.sum(losses * weight), "correct": jnp.sum(correct * weight),
          "count": jnp.sum(weight)}
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums
