"""Structured masks: N:M along the contraction axis, whole output channels, tiles.

A :class:`Structure` says what a mask may look like; :func:`structured_masks` turns the scores
of :mod:`signin_jax.masks` (random, magnitude, SNIP, GraSP, SynFlow; higher = keep) into masks
of that structure with exact, deterministic per-layer counts. ``masks.create_masks(...,
structure=...)`` calls it.

* ``'unstructured'``: any entries (:mod:`signin_jax.masks`, the default; nothing here runs).
* ``'n:m'``: in every group of ``m`` consecutive entries along the **contraction (input)
  axis** exactly ``n`` are kept: axis -2 of a Flax ``Dense`` kernel ``[in, out]`` and of an
  ``HWIO`` conv kernel (the input channels, for each tap and output channel). In PyTorch's
  ``Linear.weight [out, in]`` (and a conv's ``[O, I, kh, kw]`` permuted to ``[O, kh, kw, I]``
  as SR-STE's code does) these are groups of ``m`` consecutive entries of each row, what
  sparse tensor cores and ``to_sparse_semi_structured`` need: the Flax mask transposed
  (``mask.T`` for Dense) has that layout. jaxpruner's ``NByM`` groups along axis -1 of the
  Flax kernel, the *output* axis: not this layout. Kernels of another rank are refused unless
  ``axis`` names their contraction axis. Within a group the ``n`` highest scores are kept
  (ties: the lower index). The density is ``n / m`` on every N:M layer: ``sparsity`` must
  equal ``1 - n / m``; the budget distributions do not apply. A layer whose contraction size
  is not a multiple of ``m`` (a 1- or 3-channel stem) **is kept dense** (:func:`describe`
  says so, and the trainer's density table shows it); ``dense`` layers are kept dense too.
* ``'channel'``: whole output channels (the last axis: conv filters, Dense units) are kept or
  pruned. The per-layer budget is :func:`masks.layer_counts` counted in channels (uniform /
  ER / ERK from the kernels' shapes, ``n_l`` = the layer's channels). The ``output_layers``
  (default the models' ``'classifier'``) are never pruned: that would delete classes. A
  pruned filter followed by BatchNorm still emits BN's bias (the compact export's removal rule
  applies). A channel's score is the **sum of its entries' scores**.
* ``'block'``: tiles of ``block_shape = (rows, cols)`` over the kernel's 2-D view ``[fan_in,
  out]``: ``kernel.reshape(-1, out)``, so a conv's ``fan_in`` index is ``(h * W + w) * I + i``
  (row-major over H, W, I). The last row / column of tiles is ragged when the sizes do not
  divide: those smaller tiles are tiles like the others (scored by the sum over their
  entries). The budget is counted in tiles (as for channels); a tile's score is the sum of
  its entries' scores.

Aggregating by the plain sum keeps each method's meaning: the scores of random, magnitude,
SNIP and SynFlow are non-negative (the sum is the sum of ``|score|``), GraSP's signed
``theta * Hg`` summed is the group's first-order effect. Structured SynFlow uses one round
at the dense network (its iterative rounds prune single weights). Kept units: exact top-k of
the unit scores, ties to the lower unit index (:func:`masks._top_k_mask`).

Depends only on jax, numpy, :mod:`signin_jax.masks` and :mod:`signin_jax.sparsity`.
"""

import math
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from signin_jax import masks as masks_lib
from signin_jax import sparsity as sparsity_lib

PyTree = Any
STRUCTURES = ("unstructured", "n:m", "channel", "block")


class Structure(NamedTuple):
  """The shape of a mask (see the module docstring).

  Attributes:
    kind: one of :data:`STRUCTURES`.
    n, m: 'n:m': keep n of every m along the contraction axis (0 < n < m).
    block_shape: 'block': (rows over fan_in, columns over out).
    axis: 'n:m': the contraction axis of kernels whose rank is not 2 or 4 (else refused);
      2-D and 4-D kernels always use axis -2.
    output_layers: 'channel': regexes of the layers whose outputs are never pruned.
  """
  kind: str = "unstructured"
  n: int = 2
  m: int = 4
  block_shape: Tuple[int, int] = (4, 4)
  axis: Optional[int] = None
  output_layers: Tuple[str, ...] = ("classifier",)


def structure(kind: str = "unstructured", *, n: int = 2, m: int = 4,
              block_shape: Sequence[int] = (4, 4), axis: Optional[int] = None,
              output_layers: Sequence[str] = ("classifier",)) -> Structure:
  """A validated :class:`Structure`; ValueError naming the field and the allowed values."""
  masks_lib._check_choice("structure", kind, STRUCTURES)  # pylint: disable=protected-access
  isint = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
  if kind == "n:m" and not (isint(n) and isint(m) and 0 < n < m):
    raise ValueError(f"structure 'n:m' needs integers 0 < n < m, got n={n!r}, m={m!r}.")
  block_shape = tuple(block_shape)
  if kind == "block" and not (len(block_shape) == 2 and all(isint(b) and b >= 1
                                                            for b in block_shape)):
    raise ValueError(f"structure 'block' needs block_shape = (rows, cols), positive "
                     f"integers, got {block_shape!r}.")
  if axis is not None and not isint(axis):
    raise ValueError(f"structure axis must be an integer or None, got {axis!r}.")
  return Structure(kind, int(n), int(m), tuple(int(b) for b in block_shape), axis,
                   tuple(output_layers))


def as_structure(spec) -> Structure:
  """None / a kind string / a :class:`Structure` as a :class:`Structure`."""
  if spec is None:
    return Structure()
  if isinstance(spec, str):
    return structure(spec)
  if isinstance(spec, Structure):
    return structure(spec.kind, n=spec.n, m=spec.m, block_shape=spec.block_shape,
                     axis=spec.axis, output_layers=spec.output_layers)
  raise ValueError(f"structure must be one of {STRUCTURES} or a structured.Structure, got "
                   f"{spec!r}.")


# --- one leaf: its units ---------------------------------------------------------------------

class LeafPlan(NamedTuple):
  """How one leaf is masked: role 'fixed' (not prunable), 'dense' (kept whole, ``why``),
  'nm', 'channel', 'block' or 'unstructured'; ``units`` to count (channels, tiles)."""
  role: str
  shape: tuple
  units: int = 0
  axis: int = -2
  why: str = ""


def _nm_axis(s: Structure, shape, name) -> int:
  if len(shape) in (2, 4):
    return len(shape) - 2
  if s.axis is None:
    raise ValueError(f"structure 'n:m': {name!r} has shape {tuple(shape)}: only 2-D (Dense "
                     f"[in, out]) and 4-D (HWIO conv) kernels have a known contraction axis; "
                     f"name it with structure axis= or exclude the leaf with where=.")
  if not -len(shape) <= s.axis < len(shape):
    raise ValueError(f"structure axis={s.axis} is out of range for {name!r} of shape "
                     f"{tuple(shape)}.")
  return s.axis % len(shape)


def _tiles(shape, block_shape) -> Tuple[int, int]:
  fan_in, out = math.prod(shape[:-1]), shape[-1]
  return -(-fan_in // block_shape[0]), -(-out // block_shape[1])


def plan(s: Structure, params, *, where=None, dense=()) -> List[LeafPlan]:
  """One :class:`LeafPlan` per leaf of params (tree order)."""
  with_path, _ = jax.tree_util.tree_flatten_with_path(params)
  flags = jax.tree.leaves(masks_lib.prunable(params, where))
  paths = [masks_lib.path_str(p) for p, _ in with_path]
  leaves = [x for _, x in with_path]
  key_paths = [p for p, _ in with_path]
  idx = [i for i, f in enumerate(flags) if f]
  chosen = masks_lib._selector(dense, "dense", paths, leaves, key_paths, idx) if dense else set()  # pylint: disable=protected-access
  outputs = set()
  if s.kind == "channel" and s.output_layers:
    outputs = masks_lib._selector(tuple(s.output_layers), "structure output_layers", paths,  # pylint: disable=protected-access
                                  leaves, key_paths, idx)
  out = []
  for i, (x, f) in enumerate(zip(leaves, flags)):
    shape = tuple(jnp.shape(x))
    if not f:
      out.append(LeafPlan("fixed", shape))
    elif i in chosen:
      out.append(LeafPlan("dense", shape, why="dense layer"))
    elif s.kind == "n:m":
      axis = _nm_axis(s, shape, paths[i])
      if shape[axis] % s.m:
        out.append(LeafPlan("dense", shape, axis=axis,
                            why=f"contraction size {shape[axis]} not a multiple of {s.m}"))
      else:
        out.append(LeafPlan("nm", shape, axis=axis))
    elif s.kind == "channel":
      if i in outputs:
        out.append(LeafPlan("dense", shape, why="output layer"))
      else:
        out.append(LeafPlan("channel", shape, units=shape[-1]))
    elif s.kind == "block":
      rows, cols = _tiles(shape, s.block_shape)
      out.append(LeafPlan("block", shape, units=rows * cols))
    else:
      out.append(LeafPlan("unstructured", shape, units=math.prod(shape)))
  return out


def describe(s: Structure, params, *, where=None, dense=()) -> dict:
  """``{path: label}`` for the prunable leaves, e.g. '2:4', 'channel', 'block 4x4',
  'dense (contraction size 3 not a multiple of 4)': the density table's structure column."""
  with_path, _ = jax.tree_util.tree_flatten_with_path(params)
  labels = {"nm": f"{s.n}:{s.m}", "channel": "channel",
            "block": f"block {s.block_shape[0]}x{s.block_shape[1]}",
            "unstructured": "unstructured"}
  return {masks_lib.path_str(p): (f"dense ({lp.why})" if lp.role == "dense"
                                  else labels[lp.role])
          for (p, _), lp in zip(with_path, plan(s, params, where=where, dense=dense))
          if lp.role != "fixed"}


def _float(x):
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def nm_view(x, axis: int, m: int):
  """``x`` with the contraction axis last, split into groups: shape ``[..., G, m]``."""
  y = jnp.moveaxis(x, axis, -1)
  return y.reshape(y.shape[:-1] + (y.shape[-1] // m, m))


def nm_unview(y, shape, axis: int):
  """Inverse of :func:`nm_view`."""
  moved = list(shape)
  moved.append(moved.pop(axis))
  return jnp.moveaxis(y.reshape(moved), -1, axis)


def group_ranks(score):
  """Rank of each entry within its group (last axis): 0 = highest score; ties to the lower
  index; NaN last."""
  order = jnp.argsort(-_float(score), axis=-1, stable=True)
  return jnp.argsort(order, axis=-1)


def nm_mask(score, n, axis: int, m: int):
  """The n (python int or an int array broadcast over the groups) highest scores of every
  group of m along ``axis``."""
  ranks = group_ranks(nm_view(score, axis, m))
  return nm_unview(ranks < jnp.expand_dims(jnp.asarray(n), -1) if jnp.ndim(n) else ranks < n,
                   jnp.shape(score), axis)


def unit_scores(lp: LeafPlan, s: Structure, score):
  """Sum of the scores over each unit (channel / tile) of the leaf, a 1-D array."""
  score = _float(score)
  if lp.role == "channel":
    return jnp.sum(score.reshape(-1, lp.shape[-1]), axis=0)
  fan_in, out = math.prod(lp.shape[:-1]), lp.shape[-1]
  (br, bc), (rows, cols) = s.block_shape, _tiles(lp.shape, s.block_shape)
  v = jnp.pad(score.reshape(fan_in, out), ((0, rows * br - fan_in), (0, cols * bc - out)))
  return jnp.sum(v.reshape(rows, br, cols, bc), axis=(1, 3)).reshape(-1)


def expand_units(lp: LeafPlan, s: Structure, unit_mask):
  """A leaf mask from a 1-D mask over its units."""
  if lp.role == "channel":
    return jnp.broadcast_to(unit_mask, lp.shape)
  fan_in, out = math.prod(lp.shape[:-1]), lp.shape[-1]
  (br, bc), (rows, cols) = s.block_shape, _tiles(lp.shape, s.block_shape)
  full = jnp.repeat(jnp.repeat(unit_mask.reshape(rows, cols), br, axis=0), bc, axis=1)
  return full[:fan_in, :out].reshape(lp.shape)


def leaf_mask(lp: LeafPlan, s: Structure, score, count):
  """One leaf's mask: its structure's top entries (``count`` units; unused by N:M)."""
  if lp.role in ("fixed", "dense"):
    return jnp.ones(lp.shape, bool)
  if lp.role == "nm":
    return nm_mask(score, s.n, lp.axis, s.m)
  if lp.role == "unstructured":
    return masks_lib._top_k_mask(score, count)  # pylint: disable=protected-access
  return expand_units(lp, s, masks_lib._top_k_mask(unit_scores(lp, s, score), count))  # pylint: disable=protected-access


# --- budgets and masks -----------------------------------------------------------------------

def check_nm_sparsity(s: Structure, sparsity) -> None:
  if s.kind == "n:m" and abs(sparsity - (1.0 - s.n / s.m)) > 1e-9:
    raise ValueError(f"structure '{s.n}:{s.m}' fixes the density of its layers at "
                     f"{s.n}/{s.m}: sparsity must be {1.0 - s.n / s.m!r}, got {sparsity!r}.")


def unit_counts(s: Structure, params, sparsity: float, distribution: str = "erk", *,
                where=None, dense=(), overrides=None, erk_power_scale: float = 1.0) -> list:
  """Per leaf (tree order): the kept units (channels, tiles, or weights for 'unstructured'),
  the size for a dense or fixed leaf, None for an N:M leaf (n per group)."""
  check_nm_sparsity(s, sparsity)
  if s.kind == "n:m" and overrides:
    raise ValueError("structure 'n:m' fixes every layer's density: overrides do not apply.")
  plans = plan(s, params, where=where, dense=dense)
  if s.kind == "n:m":
    return [None if lp.role == "nm" else math.prod(lp.shape) for lp in plans]
  with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [masks_lib.path_str(p) for p, _ in with_path]
  kept_dense = {paths[i] for i, lp in enumerate(plans) if lp.role == "dense"}
  units = [_unit_total(s, lp) for lp in plans if lp.role != "fixed"]
  try:
    counts, _ = masks_lib.layer_counts(
      params, sparsity, distribution,
      where=treedef.unflatten([lp.role != "fixed" for lp in plans]),
      dense=(lambda path, x: masks_lib.path_str(path) in kept_dense) if kept_dense else (),
      overrides=overrides, erk_power_scale=erk_power_scale, units=units)
  except ValueError as e:
    if not kept_dense:
      raise
    raise ValueError(f"structure {s.kind!r}: sparsity={sparsity} is infeasible, counted in "
                     f"units: the layers kept dense ({sorted(kept_dense)}) hold "
                     f"{sum(u for u, lp in zip(units, [q for q in plans if q.role != 'fixed']) if lp.role == 'dense')} "
                     f"of the {sum(units)} units ({e})") from None
  it = iter(counts)
  return [math.prod(lp.shape) if lp.role == "fixed" else next(it) for lp in plans]


def _unit_total(s: Structure, lp: LeafPlan) -> int:
  """A prunable leaf's units: channels, tiles or entries."""
  if s.kind == "channel":
    return lp.shape[-1]
  if s.kind == "block":
    rows, cols = _tiles(lp.shape, s.block_shape)
    return rows * cols
  return math.prod(lp.shape)


def structured_masks(scores, s: Structure, counts: Sequence, *, where=None,
                     dense=()) -> PyTree:
  """Masks of structure ``s`` from ``scores`` (like params) with :func:`unit_counts`."""
  leaves, treedef = jax.tree.flatten(scores)
  plans = plan(s, scores, where=where, dense=dense)
  return treedef.unflatten([leaf_mask(lp, s, x, c) for lp, x, c in zip(plans, leaves, counts)])


def kept_units(s: Structure, params, masks, *, where=None, dense=()) -> list:
  """Per leaf: how many units a (structured) mask keeps: channels / tiles with any kept entry,
  kept entries for 'unstructured'; all its units for a dense leaf; None for N:M and
  unprunable leaves."""
  plans = plan(s, params, where=where, dense=dense)
  out = []
  for lp, m in zip(plans, jax.tree.leaves(masks)):
    m = jnp.broadcast_to(jnp.asarray(m).astype(bool), lp.shape)
    if lp.role in ("nm", "fixed"):
      out.append(None)
    elif lp.role == "dense":
      out.append(_unit_total(s, lp))
    elif lp.role in ("channel", "block"):
      out.append(jnp.sum(unit_scores(lp, s, m) > 0))
    else:
      out.append(jnp.sum(m))
  return out


# --- starting-mask requirements (sparsity.check_start_masks) ---------------------------------

def requirements(s: Structure, params, counts: Optional[Sequence] = None, *, where=None,
                 dense=()) -> tuple:
  """Per leaf a ``mask -> problem or None`` (:data:`sparsity.MaskRequirement`): N:M leaves hold
  exactly n in every group of m; channel / block leaves keep whole units, and ``counts[i]``
  of them when counts are given; dense and fixed leaves are all True."""
  plans = plan(s, params, where=where, dense=dense)
  counts = [None] * len(plans) if counts is None else list(counts)

  def make(lp, count):
    def requirement(mask):
      with jax.ensure_compile_time_eval():  # Concrete numbers, also while init is traced.
        return check(np.asarray(mask, bool))

    def check(mask):
      if lp.role in ("fixed", "dense"):
        if not mask.all():
          return (f"prunes {mask.size - np.count_nonzero(mask):,} entries of a leaf the "
                  f"{s.kind!r} structure keeps dense ({lp.why or 'not prunable'})")
        return None
      if lp.role == "nm":
        per_group = np.asarray(nm_view(jnp.asarray(mask), lp.axis, s.m)).sum(-1)
        bad = int(np.count_nonzero(per_group != s.n))
        if bad:
          return (f"has {bad:,} of {per_group.size:,} groups of {s.m} along axis {lp.axis} "
                  f"that do not keep exactly {s.n}")
        return None
      if lp.role == "unstructured":
        kept = int(np.count_nonzero(mask))
        return (None if count is None or kept == count else
                f"keeps {kept:,} entries where the schedule needs {count:,}")
      sums = np.asarray(unit_scores(lp, s, jnp.asarray(mask, jnp.float32)))
      sizes = np.asarray(unit_scores(lp, s, jnp.ones(lp.shape, jnp.float32)))
      partial = int(np.count_nonzero((sums > 0) & (sums < sizes)))
      name = "channels" if lp.role == "channel" else "tiles"
      if partial:
        return f"has {partial:,} {name} partly kept (a {s.kind} mask keeps whole {name})"
      kept = int(np.count_nonzero(sums))
      if count is not None and kept != count:
        return f"keeps {kept:,} {name} where the schedule needs {count:,}"
      return None
    return requirement

  return tuple(None if lp.role == "fixed" else make(lp, c) for lp, c in zip(plans, counts))


# --- schedules that keep the structure (sparsity.sparse_training; straight-through) -----------

def magnitude_mask_fn(s: Structure, params, masks, *, where=None, dense=()) -> Callable:
  """``weights -> masks`` of structure ``s`` keeping the largest ``|w|`` (N:M: per group;
  channels / tiles: by the sum of ``|w|``, as many per layer as ``masks`` keeps; unstructured:
  as many entries per layer as ``masks``): STE's rule (:mod:`signin_jax.straight_through`)."""
  plans = plan(s, params, where=where, dense=dense)
  counts = [None if c is None else int(c)
            for c in kept_units(s, params, masks, where=where, dense=dense)]

  def mask_fn(weights):
    leaves, treedef = jax.tree.flatten(weights)
    return treedef.unflatten([leaf_mask(lp, s, jnp.abs(w), c)
                              for lp, w, c in zip(plans, leaves, counts)])

  return mask_fn


def check_structure_fn(s: Structure, params, *, where=None, dense=()) -> Callable:
  """``(masks, params) -> None``: raises unless ``masks`` hold the structure (counts free)."""
  name = f"{s.kind} structure"
  schedule = sparsity_lib.static()._replace(
      name=name, start_requirements=requirements(s, params, where=where, dense=dense))
  return lambda masks, p: sparsity_lib.check_start_masks(schedule, masks, p)


def _grow_within_groups(lp, s, active, theta, grow, n_drop):
  """N:M RigL / SET on one leaf: drop the n_drop smallest active |theta| of the layer, then in
  each group grow back as many as it lost, the highest ``grow`` scores among its others."""
  nnz = math.prod(lp.shape) * s.n // s.m
  kept = masks_lib._top_k_mask(jnp.where(active, jnp.abs(theta).astype(jnp.float32),  # pylint: disable=protected-access
                                         -jnp.inf), nnz - n_drop)
  missing = s.n - jnp.sum(nm_view(kept, lp.axis, s.m), axis=-1)
  score = jnp.where(kept, -jnp.inf, _float(grow))
  return kept | nm_mask(score, missing, lp.axis, s.m)


def _grow_units(lp, s, active, theta, grow, n_drop, count):
  """Channel / block RigL / SET on one leaf, in units: drop the n_drop active units of
  smallest sum of |theta|, grow as many of the others with the largest ``grow`` unit score."""
  active_units = unit_scores(lp, s, active.astype(jnp.float32)) > 0
  kept = masks_lib._top_k_mask(  # pylint: disable=protected-access
      jnp.where(active_units, unit_scores(lp, s, jnp.abs(theta)), -jnp.inf), count - n_drop)
  score = jnp.where(kept, -jnp.inf, grow)
  return expand_units(lp, s, kept | masks_lib._top_k_mask(score, n_drop))  # pylint: disable=protected-access


def create_schedule(method: str, params, s: Structure, *, sparsity: float, num_steps: int,
                    update_every: int = 100, start: float = 0.0, end: float = 0.75,
                    drop_fraction: float = 0.3, drop_fraction_anneal: str = "cosine",
                    warmup: float = 0.1, phase: float = 0.05, final: float = 0.1,
                    distribution: str = "erk", where=None, dense=(),
                    **unstructured_only) -> sparsity_lib.MaskSchedule:
  """:func:`sparsity.create_schedule` for structure ``s`` (same fractions of a run).

  * 'static': the start mask must hold the structure (any counts).
  * 'acdc': each sparse phase starts with the structure's top ``|theta|`` (N:M per group;
    channels / tiles by their sum of ``|theta|``, :func:`unit_counts` of them); dense phases
    as :func:`sparsity.acdc`. Starts dense.
  * 'rigl', 'set': every update drops ``floor(f(t) * k)`` of a layer's ``k`` kept entries
    (N:M: the smallest ``|theta|`` of the layer, then every group regrows as many as it lost,
    by ``|g|`` (RigL) or at random (SET) among its other entries, so each group still keeps
    n; channels / tiles: the same in units, unit scores the sums of ``|theta|`` and of
    ``|g|``, so each layer keeps its unit budget). Start from a structured mask with those
    counts.
  * 'gmp' is refused for structures (no gradual path implemented: use AC/DC, RigL/SET or
    STE / SR-STE, :mod:`signin_jax.straight_through`).
  """
  if s.kind == "unstructured":
    return sparsity_lib.create_schedule(
        method, params, sparsity=sparsity, num_steps=num_steps, update_every=update_every,
        start=start, end=end, drop_fraction=drop_fraction,
        drop_fraction_anneal=drop_fraction_anneal, warmup=warmup, phase=phase, final=final,
        distribution=distribution, where=where, dense=dense, **unstructured_only)
  masks_lib._check_choice("method", method, sparsity_lib.SCHEDULES)  # pylint: disable=protected-access
  if method == "gmp":
    raise ValueError(f"schedule method 'gmp' is not available with structure {s.kind!r} "
                     f"(config.schedule.method / config.mask.structure); use 'static', "
                     f"'acdc', 'rigl', 'set', 'ste' or 'sr_ste'.")
  plans = plan(s, params, where=where, dense=dense)
  counts = unit_counts(s, params, sparsity, distribution, where=where, dense=dense)
  if method == "static":
    return sparsity_lib.static()._replace(
        start_requirements=requirements(s, params, where=where, dense=dense))
  steps = lambda fraction: int(round(fraction * num_steps))
  # target_counts in the structure's units (N:M leaves: their kept entries).
  units = [math.prod(lp.shape) * s.n // s.m if c is None else c
           for lp, c in zip(plans, counts) if lp.role != "fixed"]
  if method == "acdc":
    base = sparsity_lib.acdc(params, sparsity=0.0, num_steps=num_steps,
                             warmup_steps=steps(warmup), phase_steps=max(steps(phase), 1),
                             final_sparse_steps=max(steps(final), 1), where=where)
    phase_steps, final_start = max(steps(phase), 1), num_steps - max(steps(final), 1)
    is_sparse = [t - 1 >= final_start or ((t - 1 - steps(warmup)) // phase_steps) % 2 == 0
                 for t in base.update_steps]
    sparse_flags = jnp.asarray(is_sparse)

    def acdc_masks(index, t, masks, params, grads, key):
      del t, grads, key
      leaves, treedef = jax.tree.flatten(params)
      new = [leaf_mask(lp, s, jnp.abs(p), c) for lp, p, c in zip(plans, leaves, counts)]
      return treedef.unflatten([jnp.where(sparse_flags[index], m, True) for m in new])

    table = np.asarray([units if sp else [_unit_total(s, lp) for lp in plans
                                          if lp.role != "fixed"] for sp in is_sparse])
    return sparsity_lib.MaskSchedule("acdc", base.update_steps, acdc_masks, table,
                                     base.start_requirements)  # The dense start.
  # 'rigl', 'set'
  base = sparsity_lib.rigl(params, sparsity=0.0, end_step=steps(end), start_step=steps(start),
                           update_every=update_every, drop_fraction=drop_fraction,
                           drop_fraction_anneal=drop_fraction_anneal, where=where)
  start_step, end_step = steps(start), steps(end)

  def grow_masks(index, t, masks, params, grads, key):
    del index
    fraction = sparsity_lib.drop_fraction_at(t, drop_fraction=drop_fraction,
                                             start_step=start_step, end_step=end_step,
                                             anneal=drop_fraction_anneal)
    m_leaves, treedef = jax.tree.flatten(masks)
    keys = jax.random.split(key, len(m_leaves))
    out = []
    for lp, m, p, g, k, c in zip(plans, m_leaves, jax.tree.leaves(params),
                                 jax.tree.leaves(grads), keys, counts):
      if lp.role in ("fixed", "dense"):
        out.append(m)
        continue
      if lp.role == "nm":
        n_drop = jnp.floor(fraction * (math.prod(lp.shape) * s.n // s.m)).astype(jnp.int32)
        grow = jnp.abs(g) if method == "rigl" else jax.random.uniform(k, lp.shape)
        out.append(_grow_within_groups(lp, s, m, p, grow, n_drop))
      else:
        n_drop = jnp.floor(fraction * c).astype(jnp.int32)
        grow = (unit_scores(lp, s, jnp.abs(g)) if method == "rigl"
                else jax.random.uniform(k, (lp.units,)))
        out.append(_grow_units(lp, s, m, p, grow, n_drop, c))
    return treedef.unflatten(out)

  table = np.asarray([units] * len(base.update_steps), np.int64).reshape(
      len(base.update_steps), len(units))
  return sparsity_lib.MaskSchedule(method, base.update_steps, grow_masks, table,
                                   requirements(s, params, counts, where=where, dense=dense))
