"""Masks that change during training: dense-to-sparse schedules as one optax transformation.

:func:`sparse_training` wraps any optimizer (Sign-In included) and keeps binary masks over the
parameters *in its state*, so they are jitted, sharded, checkpointed and restored with the rest
of the optimizer state. A schedule decides, inside the compiled update, when and how the masks
change::

    schedule = sparsity.rigl(params, sparsity=0.9, update_every=100, end_step=int(0.75 * T))
    tx = sparsity.sparse_training(sign_in(inner, reset_every=steps_per_epoch), schedule, masks)
    opt_state = tx.init(params)                       # params already masked
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)     # exactly 0.0 where masked, always

There are no hooks to call: the masked parameters are themselves exactly 0.0 after every step,
so the forward pass needs nothing. Schedules (each a small factory; steps are absolute update
counts, the trainer converts its fractions of a run into them):

* :func:`static`: the masks never change (pruning at initialization).
* :func:`gmp`: gradual magnitude pruning (Zhu and Gupta 2017).
* :func:`acdc`: alternating compressed / decompressed training (Peste et al. 2021).
* :func:`rigl`: drop by magnitude, grow by gradient magnitude (Evci et al. 2020).
* :func:`set_evolution`: SET, drop by magnitude, grow at random (Mocanu et al. 2018).

``init`` refuses starting masks the schedule cannot start from (:func:`check_start_masks`):
RigL and SET need each layer's count of their budget, GMP and AC/DC the dense network.

One update at step ``t`` (``t`` = 1 for the first update), for a schedule that changes masks
at ``t``::

    masks'  = schedule(t, masks, theta, g)            # g: the incoming, dense gradient
    changed = masks' != masks                         # dropped or grown entries
    theta_0 = where(masks', theta, 0)                 # dropped entries become 0; grown ones are 0
    state   = inner state with every changed entry's per-weight state zeroed
              (Sign-In: the factor m re-split at theta = 0, m = sqrt(beta))
    u       = inner(where(masks', g, 0), state, theta_0)
    update  = where(masks', theta_0 - theta + u, -theta)

so a grown weight starts at theta = 0 with a fresh state and takes this step's ordinary update.
Unlike RigL's reference code (``rigl/sparse_optimizers.py``, which skips the gradient step on a
mask-update iteration), every update here is also a gradient step, which keeps learning-rate
schedules and Sign-In's reset period aligned with the step count. Masks of leaves that are not
prunable (default: ``ndim < 2``, as in :mod:`signin_jax.masks`) are all True and never change.

This module depends only on jax, optax, :mod:`signin_jax.masks` and :mod:`signin_jax.signin`.
"""

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from signin_jax import masks as masks_lib
from signin_jax import signin

PyTree = Any
SCHEDULES = ("static", "gmp", "acdc", "rigl", "set")
DROP_FRACTION_ANNEALS = ("cosine", "constant")


class MaskSchedule(NamedTuple):
  """When and how masks change.

  Attributes:
    name: 'static', 'gmp', 'acdc', 'rigl' or 'set'.
    update_steps: the steps ``t`` (1-based update counts) at which the masks are recomputed,
      increasing; empty for 'static'.
    new_masks: ``(index, t, masks, params, grads, key) -> masks`` for the update at
      ``update_steps[index]`` (all traced but the shapes); masks are bool trees like params.
    target_counts: ``[len(update_steps), num_prunable_leaves]`` int array: the number of kept
      entries of each prunable leaf after each update (the leaves in tree order).
    start_requirements: what a starting mask must be, checked by :func:`check_start_masks`:
      per leaf of params (tree order) a :data:`MaskRequirement` or None (anything goes), or
      None for any mask ('static'). The schedules here require each prunable leaf's kept count
      (:func:`kept_count`) and all-True masks at the leaves they do not prune; a structured
      schedule (N:M, channels, blocks) states its own pattern as a requirement.
  """
  name: str
  update_steps: tuple
  new_masks: Optional[Callable]
  target_counts: np.ndarray
  start_requirements: Optional[tuple] = None


# A requirement on one leaf's starting mask: ``mask -> None`` if the mask (numpy bool, the
# parameter's shape) may start the schedule, else what is wrong with it, as a phrase that
# follows the leaf's path ("keeps 3,000 of 27,000 entries where ...").
MaskRequirement = Callable[[np.ndarray], Optional[str]]


class SparseTrainingState(NamedTuple):
  """State of :func:`sparse_training`.

  Attributes:
    count: number of updates taken (int32).
    masks: bool tree like params: True = kept (always True at non-prunable leaves).
    key: PRNG key of random growth (SET); split at every update.
    inner_state: the wrapped optimizer's state.
  """
  count: jax.Array
  masks: PyTree
  key: jax.Array
  inner_state: optax.OptState


# --- schedules -------------------------------------------------------------------------------

def static() -> MaskSchedule:
  """Masks that never change: plain sparse training from a mask chosen at initialization."""
  return MaskSchedule("static", (), None, np.zeros((0, 0), np.int64))


def kept_count(required: int) -> MaskRequirement:
  """The requirement that a starting mask keeps exactly ``required`` entries."""

  def requirement(mask):
    kept = int(np.count_nonzero(mask))
    if kept != required:
      return f"keeps {kept:,} of {mask.size:,} entries where the schedule needs {required:,}"
    return None

  return requirement


def _kept_counts_required(params, where, counts) -> tuple:
  """Per leaf of params: keep ``counts`` (prunable leaves, in order), every entry elsewhere."""
  it = iter(counts)
  return tuple(kept_count(next(it) if f else math.prod(jnp.shape(x)))
               for x, f in zip(jax.tree.leaves(params),
                               jax.tree.leaves(masks_lib.prunable(params, where))))


_START_HINTS = {
    "gmp": "GMP starts from the dense network: sparsity.dense_masks(params)",
    "acdc": "AC/DC starts from the dense network: sparsity.dense_masks(params)",
    "rigl": "RigL keeps each layer's count of masks.layer_densities(params, sparsity, "
            "distribution): build the mask with masks.create_masks and the schedule's "
            "sparsity, distribution and dense layers, scope='layer'",
}
_START_HINTS["set"] = _START_HINTS["rigl"].replace("RigL", "SET")


def check_start_masks(schedule: MaskSchedule, masks, params) -> None:
  """Refuses masks that cannot start ``schedule`` (its ``start_requirements``).

  RigL and SET keep the schedule's per-layer counts, not the mask's: from a mask with other
  counts their first update would fill the difference with inactive entries in flat-index
  order. GMP and AC/DC assume a dense start. ``masks`` is a bool or uint8 tree like params
  (leaves broadcast to the parameters' shapes); only ``jnp.shape`` of ``params`` is read, so
  they may be traced. Masks that are traced themselves cannot be counted: nothing is checked.

  Raises:
    ValueError: naming every leaf (path as :func:`masks.path_str`) whose mask fails its
      requirement, with what is wrong (for counts: the mask's and the schedule's).
  """
  if schedule.start_requirements is None:
    return
  with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  try:
    mask_leaves = [np.asarray(m) for m in treedef.flatten_up_to(masks)]
  except jax.errors.TracerArrayConversionError:
    return  # Traced masks (sparse_training built under jit): their counts are not known here.
  problems = []
  for (path, p), m, requirement in zip(with_path, mask_leaves, schedule.start_requirements):
    if requirement is None:
      continue
    name = masks_lib.path_str(path)
    try:
      m = np.broadcast_to(m.astype(bool), jnp.shape(p))
    except ValueError:
      raise ValueError(f"sparse_training: the mask of {name!r} has shape {m.shape}, the "
                       f"parameter {tuple(jnp.shape(p))}.") from None
    problem = requirement(m)
    if problem:
      problems.append(f"{name!r} {problem}")
  if problems:
    hint = _START_HINTS.get(schedule.name)
    raise ValueError(f"sparse_training: the starting mask cannot start the {schedule.name!r} "
                     f"schedule: {'; '.join(problems)}." + (f" {hint}." if hint else ""))


def _prunable_sizes(params, where):
  leaves = jax.tree.leaves(params)
  flags = jax.tree.leaves(masks_lib.prunable(params, where))
  return [math.prod(jnp.shape(x)) for x, f in zip(leaves, flags) if f]


def _counts_at(params, sparsity, distribution, where, dense):
  """Exact kept counts per prunable leaf at `sparsity` (masks.layer_densities' budget)."""
  return masks_lib.layer_counts(params, sparsity, distribution, where=where, dense=dense)[0]


def _never_growing(rows, quotas) -> np.ndarray:
  """The count table ``rows`` with no layer's count ever rising from one update to the next,
  each row's total kept, and the last row unchanged.

  Each row rounds its real quotas by largest remainder, which keeps the total exact but can
  raise a layer's count by one while its quota falls (the Alabama paradox): a pruned weight
  would come back. From the last row back, row ``u`` becomes ``max(rows[u], row[u + 1])`` and
  whatever that adds to its total is taken back one weight at a time from the layer furthest
  above its quota among those still above ``row[u + 1]`` (ties: the later layer). There are
  enough (``row[u + 1]`` holds at most row ``u``'s total), and rows that never grow are kept.
  """
  table = np.array(rows, np.int64)
  quotas = np.asarray(quotas, np.float64)
  for u in range(len(table) - 2, -1, -1):
    row, floor = np.maximum(table[u], table[u + 1]), table[u + 1]
    for _ in range(int(row.sum() - table[u].sum())):
      over = np.where(row > floor, row - quotas[u], -np.inf)
      row[len(row) - 1 - int(np.argmax(over[::-1]))] -= 1
    table[u] = row
  return table


def _check_steps(name, **steps):
  for field, value in steps.items():
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"{name}: {field} must be a non-negative integer step, got {value!r}.")


def _split_prunable(tree, flags):
  leaves, treedef = jax.tree.flatten(tree)
  return [x for x, f in zip(leaves, flags) if f], leaves, treedef


def _with_prunable(leaves, treedef, flags, new):
  it = iter(new)
  return treedef.unflatten([next(it) if f else x for x, f in zip(leaves, flags)])


def _top_k_masks(scores, counts, scope):
  if scope == "global":
    return masks_lib._top_counts(scores, [sum(counts)], "global")  # pylint: disable=protected-access
  return [masks_lib._top_k_mask(s, k) for s, k in zip(scores, counts)]  # pylint: disable=protected-access


def gmp(params, *, sparsity: float, start_step: int, end_step: int, update_every: int = 100,
        initial_sparsity: float = 0.0, distribution: str = "erk", scope: str = "layer",
        where=None, dense: Sequence[str] = ()) -> MaskSchedule:
  """Gradual magnitude pruning (Zhu and Gupta 2017, "To prune, or not to prune", Eq. 1).

  The sparsity at an update step ``t`` in ``[start_step, end_step]`` follows the cubic::

      s_t = s_f + (s_i - s_f) * (1 - (t - start_step) / (end_step - start_step))**3

  with ``s_i = initial_sparsity`` and ``s_f = sparsity``, at ``t = start_step + k *
  update_every`` and, when the period does not land on it, once more at ``end_step`` (so the
  target is reached exactly there). Each update keeps the largest ``|theta|`` among the kept
  weights: layer by layer with the counts of ``masks.layer_densities(params, s_t,
  distribution)`` (``scope='layer'``), or across the prunable layers with the same total
  (``scope='global'``). Pruned weights stay pruned: a layer's count never rises from one
  update to the next (where rounding each update's budget on its own would raise it by one,
  the table is adjusted, see :func:`_never_growing`; every update's total is still
  ``round((1 - s_t) * N)`` and the last update's counts are the budget's at ``sparsity``), and
  an update keeps only entries that are kept (a NaN weight ranks below the other kept ones).
  Zhu and Gupta prune every 100 to 1000 steps; ``update_every=100`` is their finest period.
  Start from all-True masks (:func:`dense_masks`; :func:`sparse_training` checks it) and
  ``initial_sparsity=0``.
  """
  _check_steps("gmp", start_step=start_step, end_step=end_step)
  if update_every < 1 or end_step <= start_step:
    raise ValueError(f"gmp: needs update_every >= 1 and end_step > start_step, got "
                     f"update_every={update_every}, start_step={start_step}, end_step={end_step}.")
  masks_lib._check_sparsity(initial_sparsity)  # pylint: disable=protected-access
  masks_lib._check_choice("scope", scope, masks_lib.SCOPES)  # pylint: disable=protected-access
  if not initial_sparsity <= sparsity:
    raise ValueError(f"gmp: initial_sparsity must be <= sparsity (GMP only prunes), got "
                     f"initial_sparsity={initial_sparsity}, sparsity={sparsity}.")
  steps = list(range(max(start_step, 1), end_step + 1, update_every))
  if not steps or steps[-1] != end_step:
    steps.append(end_step)
  span = end_step - start_step
  sparsities = [sparsity + (initial_sparsity - sparsity) * (1 - (t - start_step) / span) ** 3
                for t in steps]
  budgets = [masks_lib.layer_counts(params, s, distribution, where=where, dense=dense)
             for s in sparsities]
  table = _never_growing([c for c, _ in budgets], [q for _, q in budgets])
  flags = jax.tree.leaves(masks_lib.prunable(params, where))
  lowest = jnp.finfo(jnp.float32).min  # Above -inf: a kept NaN weight ranks above the pruned.

  def new_masks(index, t, masks, params, grads, key):
    del t, grads, key
    mask_leaves, all_masks, treedef = _split_prunable(masks, flags)
    thetas, _, _ = _split_prunable(params, flags)
    # Kept weights by |theta|; pruned ones rank below every kept one (-inf), and the top-k is
    # intersected with the mask, so they never come back whatever the counts.
    magnitudes = [jnp.abs(p).astype(jnp.float32) for p in thetas]
    scores = [jnp.where(m, jnp.where(jnp.isnan(a), lowest, a), -jnp.inf)
              for m, a in zip(mask_leaves, magnitudes)]
    counts = jnp.asarray(table)[index]
    top = _top_k_masks(scores, [counts[i] for i in range(len(scores))], scope)
    return _with_prunable(all_masks, treedef, flags,
                          [k & m for k, m in zip(top, mask_leaves)])

  return MaskSchedule("gmp", tuple(steps), new_masks, table,
                      _kept_counts_required(params, where, _prunable_sizes(params, where)))


def acdc(params, *, sparsity: float, num_steps: int, warmup_steps: int, phase_steps: int,
         final_sparse_steps: int, distribution: str = "erk", scope: str = "layer", where=None,
         dense: Sequence[str] = ()) -> MaskSchedule:
  """AC/DC: alternating compressed / decompressed training (Peste et al. 2021, Alg. 1).

  Dense warm-up for ``warmup_steps``; then sparse and dense phases of ``phase_steps`` each,
  starting with a sparse one, until ``num_steps - final_sparse_steps``; then one sparse phase
  to the end (the final fine-tune). At the start of each sparse phase the mask keeps the
  largest ``|theta|`` of each layer (counts of ``masks.layer_densities(params, sparsity,
  distribution)``; ``scope='global'``: the largest across the prunable layers, same total;
  Peste et al. prune globally); at the start of each dense phase every weight is active again and the
  pruned ones restart from 0. Peste et al. train ImageNet ResNet-50 for 100 epochs: 10 dense
  warm-up epochs, 5-epoch phases and a final sparse phase of the last 10 epochs (our reading of
  their schedule; the trainer's defaults are these fractions of a run). A phase cut short by
  the final one ends there; a sparse phase running into it continues with its mask. Start from
  all-True masks (:func:`dense_masks`).
  """
  _check_steps("acdc", num_steps=num_steps, warmup_steps=warmup_steps,
               phase_steps=phase_steps, final_sparse_steps=final_sparse_steps)
  masks_lib._check_choice("scope", scope, masks_lib.SCOPES)  # pylint: disable=protected-access
  final_start = num_steps - final_sparse_steps
  if phase_steps < 1 or final_sparse_steps < 1 or not warmup_steps <= final_start:
    raise ValueError(
        f"acdc: needs phase_steps >= 1, final_sparse_steps >= 1 (the run ends sparse) and "
        f"warmup_steps <= num_steps - final_sparse_steps, got num_steps={num_steps}, "
        f"warmup_steps={warmup_steps}, phase_steps={phase_steps}, "
        f"final_sparse_steps={final_sparse_steps}.")
  sparse_counts = _counts_at(params, sparsity, distribution, where, dense)
  dense_counts = _prunable_sizes(params, where)
  # A phase starts with the update that makes count = t + 1.
  steps, is_sparse = [], []
  t, sparse = warmup_steps, True
  while t < final_start:
    steps.append(t + 1)
    is_sparse.append(sparse)
    t, sparse = t + phase_steps, not sparse
  if not is_sparse or not is_sparse[-1]:  # else the last sparse phase runs on to the end
    steps.append(final_start + 1)
    is_sparse.append(True)
  table = np.asarray([sparse_counts if s else dense_counts for s in is_sparse], np.int64)
  sparse_flags = jnp.asarray(is_sparse)
  flags = jax.tree.leaves(masks_lib.prunable(params, where))

  def new_masks(index, t, masks, params, grads, key):
    del t, grads, key
    _, all_masks, treedef = _split_prunable(masks, flags)
    thetas, _, _ = _split_prunable(params, flags)
    counts = jnp.asarray(table)[index]
    scores = [jnp.abs(p).astype(jnp.float32) for p in thetas]
    top = _top_k_masks(scores, [counts[i] for i in range(len(scores))], scope)
    new = [jnp.where(sparse_flags[index], m, jnp.ones_like(m)) for m in top]
    return _with_prunable(all_masks, treedef, flags, new)

  return MaskSchedule("acdc", tuple(steps), new_masks, table,
                      _kept_counts_required(params, where, dense_counts))


def drop_fraction_at(t, *, drop_fraction: float, start_step: int, end_step: int,
                     anneal: str = "cosine"):
  """RigL's drop fraction at step t (Evci et al. 2020, Eq. 1):
  ``f(t) = drop_fraction / 2 * (1 + cos(pi * (t - start_step) / (end_step - start_step)))``
  ('cosine'), or ``drop_fraction`` ('constant')."""
  if anneal == "constant":
    return jnp.asarray(drop_fraction, jnp.float32)
  progress = (jnp.asarray(t, jnp.float32) - start_step) / max(end_step - start_step, 1)
  return drop_fraction / 2 * (1 + jnp.cos(jnp.pi * jnp.clip(progress, 0.0, 1.0)))


def _prune_and_grow(name, params, *, sparsity, update_every, end_step, start_step,
                    drop_fraction, drop_fraction_anneal, distribution, where, dense,
                    grow_score):
  _check_steps(name, update_every=update_every, start_step=start_step, end_step=end_step)
  if update_every < 1 or end_step < start_step:
    raise ValueError(f"{name}: needs update_every >= 1 and end_step >= start_step, got "
                     f"update_every={update_every}, start_step={start_step}, end_step={end_step}.")
  if not 0.0 < drop_fraction <= 1.0:
    raise ValueError(f"{name}: drop_fraction must be in (0, 1], got {drop_fraction!r}.")
  masks_lib._check_choice("drop_fraction_anneal", drop_fraction_anneal, DROP_FRACTION_ANNEALS)  # pylint: disable=protected-access
  counts = _counts_at(params, sparsity, distribution, where, dense)
  steps = tuple(t for t in range(max(start_step, 1), end_step + 1) if t % update_every == 0)
  table = np.asarray([counts] * len(steps), np.int64).reshape(len(steps), len(counts))
  flags = jax.tree.leaves(masks_lib.prunable(params, where))

  def new_masks(index, t, masks, params, grads, key):
    del index
    mask_leaves, all_masks, treedef = _split_prunable(masks, flags)
    thetas, _, _ = _split_prunable(params, flags)
    gs, _, _ = _split_prunable(grads, flags)
    fraction = drop_fraction_at(t, drop_fraction=drop_fraction, start_step=start_step,
                                end_step=end_step, anneal=drop_fraction_anneal)
    keys = jax.random.split(key, len(mask_leaves))
    new = []
    for m, p, g, k, n_keep in zip(mask_leaves, thetas, gs, keys, counts):
      # RigL (sparse_optimizers.py, generic_mask_update): drop floor(f * nnz) active weights
      # of smallest |theta|, then grow as many among all the others, the just-dropped ones
      # included (a dropped and regrown weight simply stays).
      n_drop = jnp.floor(fraction * n_keep).astype(jnp.int32)
      kept = masks_lib._top_k_mask(  # pylint: disable=protected-access
          jnp.where(m, jnp.abs(p).astype(jnp.float32), -jnp.inf), n_keep - n_drop)
      score = jnp.where(kept, -jnp.inf, grow_score(g, k))
      new.append(kept | masks_lib._top_k_mask(score, n_drop))  # pylint: disable=protected-access
    return _with_prunable(all_masks, treedef, flags, new)

  return MaskSchedule(name, steps, new_masks, table,
                      _kept_counts_required(params, where, counts))


def rigl(params, *, sparsity: float, end_step: int, update_every: int = 100,
         start_step: int = 0, drop_fraction: float = 0.3, drop_fraction_anneal: str = "cosine",
         distribution: str = "erk", where=None, dense: Sequence[str] = ()) -> MaskSchedule:
  """RigL (Evci et al. 2020, "Rigging the Lottery", Sec. 3).

  At every step ``t`` with ``t % update_every == 0`` and ``start_step <= t <= end_step``, each
  prunable layer with ``k`` kept weights drops the ``floor(f(t) * k)`` active weights of
  smallest ``|theta|`` and grows as many of the others with the largest ``|dL/dtheta|`` of the
  dense (unmasked) gradient; grown weights start at 0. ``f`` is :func:`drop_fraction_at`. Each
  layer keeps exactly its count of ``masks.layer_densities(params, sparsity, distribution)``,
  so start from a mask with those counts (``masks.create_masks`` with the same arguments and
  ``scope='layer'``; :func:`sparse_training` refuses others). Defaults from the paper:
  ``update_every=100`` (Delta T), ``drop_fraction=0.3`` (alpha), cosine annealing; the
  paper's ``end_step`` is 75 % of training. Ties go to the lower flat index.
  """
  return _prune_and_grow(
      "rigl", params, sparsity=sparsity, update_every=update_every, end_step=end_step,
      start_step=start_step, drop_fraction=drop_fraction,
      drop_fraction_anneal=drop_fraction_anneal, distribution=distribution, where=where,
      dense=dense, grow_score=lambda g, key: jnp.abs(g).astype(jnp.float32))


def set_evolution(params, *, sparsity: float, end_step: int, update_every: int = 100,
                  start_step: int = 0, drop_fraction: float = 0.3,
                  drop_fraction_anneal: str = "cosine", distribution: str = "erk", where=None,
                  dense: Sequence[str] = ()) -> MaskSchedule:
  """SET (Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive
  sparse connectivity"): as :func:`rigl`, but the weights grown are chosen uniformly at random
  among the inactive ones (the state's PRNG key). SET's own zeta = 0.3 is the drop fraction;
  SET removes the weights closest to zero, i.e. of smallest ``|theta|``. The update period,
  end step and annealing follow RigL's SET baseline (Evci et al. 2020), so the two differ only
  in the growth criterion."""
  return _prune_and_grow(
      "set", params, sparsity=sparsity, update_every=update_every, end_step=end_step,
      start_step=start_step, drop_fraction=drop_fraction,
      drop_fraction_anneal=drop_fraction_anneal, distribution=distribution, where=where,
      dense=dense, grow_score=lambda g, key: jax.random.uniform(key, jnp.shape(g)))


def create_schedule(method: str, params, *, sparsity: float, num_steps: int,
                    update_every: int = 100, start: float = 0.0, end: float = 0.75,
                    initial_sparsity: float = 0.0, drop_fraction: float = 0.3,
                    drop_fraction_anneal: str = "cosine", warmup: float = 0.1,
                    phase: float = 0.05, final: float = 0.1, distribution: str = "erk",
                    scope: str = "layer", where=None, dense: Sequence[str] = ()) -> MaskSchedule:
  """A schedule whose times are fractions of a run of ``num_steps`` updates.

  ``method``: one of :data:`SCHEDULES`. The fractions become steps as
  ``round(fraction * num_steps)`` (phase and final lengths at least one step), so a schedule is
  complete for any run length:

  * 'gmp': prune from ``start`` to ``end`` every ``update_every`` steps (and at ``end``), from
    ``initial_sparsity`` to ``sparsity`` (:func:`gmp`).
  * 'acdc': dense ``warmup``, sparse/dense phases of ``phase``, sparse ``final`` (:func:`acdc`).
  * 'rigl', 'set': update every ``update_every`` steps from ``start`` to ``end``, dropping
    ``drop_fraction`` annealed by ``drop_fraction_anneal`` (:func:`rigl`, :func:`set_evolution`).
  * 'static': no updates; the other arguments are ignored.

  Which masks to start from: :func:`initial_masks_are_dense`.
  """
  masks_lib._check_choice("method", method, SCHEDULES)  # pylint: disable=protected-access
  steps = lambda fraction: int(round(fraction * num_steps))
  budget = dict(sparsity=sparsity, distribution=distribution, where=where, dense=dense)
  if method == "static":
    return static()
  if method == "gmp":
    return gmp(params, start_step=steps(start), end_step=steps(end), update_every=update_every,
               initial_sparsity=initial_sparsity, scope=scope, **budget)
  if method == "acdc":
    return acdc(params, num_steps=num_steps, warmup_steps=steps(warmup),
                phase_steps=max(steps(phase), 1), final_sparse_steps=max(steps(final), 1),
                scope=scope, **budget)
  grow = rigl if method == "rigl" else set_evolution
  return grow(params, start_step=steps(start), end_step=steps(end), update_every=update_every,
              drop_fraction=drop_fraction, drop_fraction_anneal=drop_fraction_anneal, **budget)


def initial_masks_are_dense(method: str) -> bool:
  """GMP and AC/DC start from the dense network; the others from a sparse mask at init."""
  return method in ("gmp", "acdc")


def dense_masks(params) -> PyTree:
  """All-True masks like params: where GMP and AC/DC start."""
  return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), params)


# --- the transformation ------------------------------------------------------------------------

def sparse_training(tx: optax.GradientTransformation, schedule: MaskSchedule, masks,
                    *, key: Optional[jax.Array] = None,
                    check_masks: bool = True) -> optax.GradientTransformationExtraArgs:
  """Trains with ``tx`` under masks that ``schedule`` changes (see the module docstring).

  Args:
    tx: any optax optimizer, e.g. ``signin.sign_in(sgd)``.
    schedule: :func:`static`, :func:`gmp`, :func:`acdc`, :func:`rigl` or
      :func:`set_evolution`.
    masks: the initial masks (bool or uint8 tree like params); ``init`` applies nothing to the
      params, so pass params that are already ``masks.apply_mask``-ed.
    key: PRNG key for random growth (needed by :func:`set_evolution`).
    check_masks: ``init`` refuses ``masks`` that cannot start ``schedule``
      (:func:`check_start_masks`: RigL and SET need the schedule's per-layer counts, GMP and
      AC/DC all-True masks; 'static' takes any mask) with a ValueError naming the layer and
      both counts. The counts are numpy counts of ``masks`` as given here, so the check also
      runs when ``init`` is traced under jit (only the params' shapes are read); masks that
      are themselves traced are not checked. Pass False where the masks in use will come from
      elsewhere, e.g. a run that resumes from a checkpoint.

  Every update: gradients at masked entries are zeroed before ``tx`` (so they reach neither its
  state nor a global-norm clip), ``tx`` gets ``params`` and any extra arguments, and the
  returned update makes masked parameters exactly 0.0. On a mask-update step the dropped and
  grown entries' state is reset (see :func:`reset_entries`).
  """
  tx = optax.with_extra_args_support(tx)
  if schedule.name == "set" and key is None:
    raise ValueError("sparse_training: the 'set' schedule grows at random and needs `key`.")
  key = jax.random.PRNGKey(0) if key is None else key
  update_steps = jnp.asarray(schedule.update_steps or (0,), jnp.int32)

  def init_fn(params):
    if check_masks:
      check_start_masks(schedule, masks, params)
    return SparseTrainingState(
        count=jnp.zeros([], jnp.int32),
        masks=jax.tree.map(lambda m, p: jnp.broadcast_to(jnp.asarray(m).astype(bool),
                                                         jnp.shape(p)), masks, params),
        key=jnp.asarray(key),
        inner_state=tx.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("sparse_training: update() needs `params` (the current parameters).")
    count = optax.safe_int32_increment(state.count)
    masks, inner_state, key = state.masks, state.inner_state, state.key
    inputs = params
    if schedule.update_steps:
      index = jnp.searchsorted(update_steps, count)
      is_update = (index < len(schedule.update_steps)) & (
          update_steps[jnp.minimum(index, len(schedule.update_steps) - 1)] == count)
      key, step_key = jax.random.split(key)
      new = jax.lax.cond(
          is_update,
          lambda: schedule.new_masks(jnp.minimum(index, len(schedule.update_steps) - 1), count,
                                     masks, params, updates, step_key),
          lambda: masks)
      changed = jax.tree.map(lambda a, b: a != b, masks, new)
      inner_state = reset_entries(inner_state, params, changed)
      masks = new
      inputs = masks_lib.apply_mask(params, masks)
    grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), updates, masks)
    inner_updates, inner_state = tx.update(grads, inner_state, inputs, **extra_args)
    if schedule.update_steps:  # theta_0 - theta + u: exactly u where nothing changed.
      inner_updates = jax.tree.map(lambda u, p0, p: (p0 - p) + u, inner_updates, inputs, params)
    new_updates = jax.tree.map(lambda u, m, p: jnp.where(m, u, -p), inner_updates, masks, params)
    return new_updates, SparseTrainingState(count=count, masks=masks, key=key,
                                            inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def reset_entries(opt_state, params, changed) -> optax.OptState:
  """The optimizer state with the per-weight state of the ``changed`` entries reset.

  ``changed`` is a bool tree like params. Every subtree of ``opt_state`` with the params'
  structure (momentum, Adam's moments, Sign-In's factor trees; ``optax.MaskedNode`` counts as a
  leaf) gets 0 at the changed entries of its leaves of the parameter's shape; inside a
  :class:`signin.SignInState` the factor ``m`` becomes ``sqrt(beta)``, the split of theta = 0.
  Scalar state (step counts, schedules, injected hyperparameters) is not touched.
  """
  treedef = jax.tree.structure(params)
  changed_leaves = treedef.flatten_up_to(changed)
  param_shapes = [jnp.shape(p) for p in treedef.flatten_up_to(params)]

  def like_params(x):
    if isinstance(x, (signin.SignInState, optax.MaskedNode)) or not _is_container(x):
      return False
    try:
      treedef.flatten_up_to(x)
    except (ValueError, TypeError):
      return False
    return True

  def zero(tree):
    return treedef.unflatten([
        jnp.where(c, jnp.zeros_like(x), x) if _same_shape(x, s) else x
        for x, c, s in zip(treedef.flatten_up_to(tree), changed_leaves, param_shapes)])

  def visit(x):
    if isinstance(x, signin.SignInState):
      ms = treedef.flatten_up_to(x.m)
      betas = treedef.flatten_up_to(x.beta)
      m = treedef.unflatten([
          jnp.where(c, jnp.sqrt(b).astype(m.dtype), m) if _same_shape(m, s) else m
          for m, b, c, s in zip(ms, betas, changed_leaves, param_shapes)])
      return x._replace(m=m, inner_state=reset_entries(x.inner_state, params, changed))
    if like_params(x):
      return zero(x)
    return x

  is_node = lambda x: isinstance(x, signin.SignInState) or like_params(x)
  return jax.tree.map(visit, opt_state, is_leaf=is_node)


def _is_container(x):
  return not (hasattr(x, "shape") or x is None or isinstance(x, (bool, int, float)))


def _same_shape(x, shape):
  return hasattr(x, "shape") and not isinstance(x, optax.MaskedNode) and x.shape == shape


# --- inspection ----------------------------------------------------------------------------

def find_state(opt_state) -> Optional[SparseTrainingState]:
  """The (first) :class:`SparseTrainingState` inside any optax state, or None."""
  is_state = lambda x: isinstance(x, SparseTrainingState)
  return next((x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)), None)


def current_masks(opt_state) -> Optional[PyTree]:
  """The masks in use (bool tree like params), read from any state that contains
  :func:`sparse_training`'s; None if there is none."""
  state = find_state(opt_state)
  return None if state is None else state.masks
