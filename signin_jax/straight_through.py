"""Straight-through training (STE) and SR-STE (Zhou et al. 2021) as one optax transformation.

The mask is recomputed from dense weights ``w`` at every step; the network only ever sees the
masked parameters ``theta = mask * w``, exactly 0.0 where masked (no hooks). The dense
weights live in the optimizer state. With ``g = dL/dtheta`` (the gradient the training loop
takes at the masked parameters, dense: it is nonzero at masked entries too)::

    g'     = g + lambda * (1 - mask) * w          # SR-STE's decay of the pruned weights;
                                                  # lambda = 0: plain STE
    w'     = w + tx.update(g', state, w)          # tx sees the dense weights as its params
    mask'  = mask_fn(w')                          # N:M: the top n |w'| of every group of m
    theta' = where(mask', w', 0)

``update`` returns ``theta' - theta`` at kept entries and ``-theta`` at masked ones, so that
``optax.apply_updates`` gives exactly 0.0 there; the dense weights stored for the kept entries
are the parameters ``theta + (w' - theta)`` the caller will hold (equal to ``w'`` up to one
rounding), so ``theta == where(mask, w, 0)`` holds bitwise at every step. SR-STE's reference
code applies its decay to the gradient of the dense weights before the optimizer (so
momentum carries it), as here; its lambda is 2e-4.

With Sign-In (``tx = signin.sign_in(inner)``) the factors reparameterize the **dense**
weights: ``w = m * v`` factor-wise, and Sign-In's update is computed at ``w`` (it derives its
second factor from the params it is given, here ``w``).

The state is a :class:`sparsity.SparseTrainingState` whose ``inner_state`` is a
:class:`StraightThroughState` (the dense weights and ``tx``'s state), so
``sparsity.current_masks`` reads the mask in use like any schedule's.

Depends only on jax, optax and :mod:`signin_jax.sparsity`.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from signin_jax import sparsity as sparsity_lib

PyTree = Any
METHODS = ("ste", "sr_ste")
SR_STE_LAMBDA = 2e-4  # Zhou et al. 2021's reference value.


class StraightThroughState(NamedTuple):
  """``dense``: the dense weights w (like params); ``inner_state``: ``tx``'s state."""
  dense: PyTree
  inner_state: optax.OptState


def straight_through(tx: optax.GradientTransformation, mask_fn: Callable[[PyTree], PyTree],
                     masks, *, sr_ste_lambda: float = 0.0, dense_params: Optional[PyTree] = None,
                     check_masks: Optional[Callable[[PyTree, PyTree], None]] = None
                     ) -> optax.GradientTransformationExtraArgs:
  """STE / SR-STE around ``tx`` (see the module docstring).

  Args:
    tx: any optax optimizer, Sign-In included.
    mask_fn: ``dense weights -> bool masks`` (jittable), e.g.
      :func:`signin_jax.structured.magnitude_mask_fn`.
    masks: the starting masks; pass params already masked by them.
    sr_ste_lambda: SR-STE's decay of the pruned weights (0.0: STE; SR-STE uses 2e-4).
    dense_params: the dense weights to start from (default: the params ``init`` gets, i.e.
      the masked initialization: pruned weights start at 0.0).
    check_masks: ``(masks, params) -> None``, raising on starting masks the structure
      cannot hold (``init`` calls it).
  """
  tx = optax.with_extra_args_support(tx)
  if not isinstance(sr_ste_lambda, (int, float)) or sr_ste_lambda < 0:
    raise ValueError(f"sr_ste_lambda must be a number >= 0, got {sr_ste_lambda!r}.")

  def init_fn(params):
    if check_masks is not None:
      check_masks(masks, params)
    dense = params if dense_params is None else dense_params
    return sparsity_lib.SparseTrainingState(
        count=jnp.zeros([], jnp.int32),
        masks=jax.tree.map(lambda m, p: jnp.broadcast_to(jnp.asarray(m).astype(bool),
                                                         jnp.shape(p)), masks, params),
        key=jax.random.PRNGKey(0),
        inner_state=StraightThroughState(dense=dense, inner_state=tx.init(dense)))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("straight_through: update() needs `params` (the current parameters).")
    dense, inner_state = state.inner_state
    grads = updates
    if sr_ste_lambda:
      grads = jax.tree.map(
          lambda g, m, w: jnp.where(m, g, g + (sr_ste_lambda * w).astype(g.dtype)),
          updates, state.masks, dense)
    inner_updates, inner_state = tx.update(grads, inner_state, dense, **extra_args)
    dense_next = optax.apply_updates(dense, inner_updates)
    masks = mask_fn(dense_next)
    new_updates = jax.tree.map(lambda w, m, p: jnp.where(m, w - p, -p), dense_next, masks,
                               params)
    # The kept dense weights are exactly the parameters the caller's apply_updates makes.
    dense_next = jax.tree.map(lambda w, m, p, u: jnp.where(m, (p + u).astype(p.dtype), w),
                              dense_next, masks, params, new_updates)
    return new_updates, sparsity_lib.SparseTrainingState(
        count=optax.safe_int32_increment(state.count), masks=masks, key=state.key,
        inner_state=StraightThroughState(dense=dense_next, inner_state=inner_state))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dense_weights(opt_state) -> Optional[PyTree]:
  """The dense weights of a :func:`straight_through` state inside any optax state, or None."""
  state = sparsity_lib.find_state(opt_state)
  if state is None or not isinstance(state.inner_state, StraightThroughState):
    return None
  return state.inner_state.dense
