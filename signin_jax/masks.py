"""Static binary masks for pruning at initialization (PaI), over any parameter pytree.

A mask is a pytree of bools with the params' structure (uint8 is accepted wherever a mask is
read), so it works alike on Flax Linen param dicts, Flax NNX ``State`` and plain dicts/tuples.
A leaf is *prunable* when ``leaf.ndim >= 2`` (conv and dense kernels) unless ``where`` (a pytree
or pytree prefix of bools, or a callable ``(key_path, leaf) -> bool`` as in ``optax`` and
``signin.sign_in``) says otherwise; other leaves always get an all-True mask. Regexes (``dense``,
``overrides``) are matched with ``re.search`` against the '/'-joined path (:func:`path_str`),
e.g. ``'stem_conv/kernel'`` or, for an NNX State, ``'linear/kernel/value'``.

A mask is built in two steps: a *layer budget* (how many weights each layer keeps,
:func:`layer_densities`: 'uniform', 'er' or 'erk') and *scores* (which weights: random,
magnitude, SNIP, GraSP, SynFlow; higher = keep), combined by :func:`masks_from_scores` with
exact counts and deterministic tie breaking. :func:`create_masks` does both. During training,
:func:`with_static_mask` keeps masked weights exactly 0.0 under any optax optimizer.

Depends only on jax, optax and the standard library.
"""

import contextlib
import math
import numbers
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import optax

PyTree = Any
# Which prunable leaves: regexes (re.search in the path string) or (key_path, leaf) -> bool.
LayerSelector = Union[str, Sequence[str], Callable[[tuple, Any], bool]]

DISTRIBUTIONS = ("uniform", "er", "erk")
METHODS = ("random", "magnitude", "snip", "grasp", "synflow")
DATA_DEPENDENT_METHODS = ("snip", "grasp")  # need loss_fn and a batch
SCOPES = ("layer", "global")


# --- paths and prunable leaves -------------------------------------------------------------

def path_str(path) -> str:
  """'/'-joined key names of a jax key path: ``(DictKey('conv'), DictKey('kernel'))`` ->
  ``'conv/kernel'`` (attribute names and sequence indices alike)."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _is_number(x) -> bool:
  """A python or numpy real number (not a bool, not a jax array: these must be static)."""
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and not hasattr(x, "aval")


def _check_choice(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")


def _broadcast(spec, tree, treedef, name) -> list:
  """A pytree (or prefix, or single value) `spec` as a flat list aligned with tree's leaves."""
  try:
    full = jax.tree.map(lambda v, sub: jax.tree.map(lambda _: v, sub), spec, tree)
    return treedef.flatten_up_to(full)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{name} must be a pytree like params (or a prefix of it): {e}") from e


def _flags(tree, where) -> list:
  """Per leaf of `tree`: is it prunable? Empty leaves never are."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
  leaves = [x for _, x in with_path]
  if where is None:
    flags = [jnp.ndim(x) >= 2 for x in leaves]
  elif callable(where):
    flags = [where(p, x) for p, x in with_path]
  else:
    flags = _broadcast(where, tree, treedef, "where")
  for f in flags:
    if not isinstance(f, bool) and not (hasattr(f, "dtype") and jnp.ndim(f) == 0):
      raise ValueError(f"where must give one bool per leaf (a bool pytree or a callable "
                       f"(key_path, leaf) -> bool), got {f!r}.")
  return [bool(f) and jnp.size(x) > 0 for f, x in zip(flags, leaves)]


def prunable(params, where=None) -> PyTree:
  """Like params: python ``True`` for the leaves masks may prune (default ``ndim >= 2``)."""
  return jax.tree.structure(params).unflatten(_flags(params, where))


def _selector(spec: LayerSelector, name: str, paths, leaves, key_paths, candidates):
  """Indices (among `candidates`) of the leaves `spec` selects; each regex must match one."""
  if callable(spec):
    return {i for i in candidates if spec(key_paths[i], leaves[i])}
  patterns = (spec,) if isinstance(spec, str) else tuple(spec)
  chosen = set()
  for pattern in patterns:
    hits = {i for i in candidates if re.search(pattern, paths[i])}
    if not hits:
      raise ValueError(f"{name} pattern {pattern!r} matches no prunable parameter; prunable: "
                       f"{[paths[i] for i in candidates]}.")
    chosen |= hits
  return chosen


# --- layer budgets ---------------------------------------------------------------------------

def _check_sparsity(sparsity):
  if not _is_number(sparsity) or not 0.0 <= sparsity < 1.0:
    raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}.")


def _raw_score(shape, distribution, erk_power_scale) -> float:
  """A layer's density up to the common factor eps (RigL's ``get_sparsities``)."""
  if distribution == "uniform":
    return 1.0
  if distribution == "er" and len(shape) >= 2:  # only (fan_in, fan_out): kernel dims ignored
    n_in, n_out = shape[-2], shape[-1]
    return (n_in + n_out) / (n_in * n_out)
  # 'erk' (and 'er' of a leaf with fewer than 2 dims, which `where` made prunable)
  return (sum(shape) / math.prod(shape)) ** erk_power_scale


def _largest_remainder(exact: Dict[int, float], sizes: Dict[int, int], total: int):
  """Integer counts <= sizes that add up to `total`, each floor(exact) or floor(exact) + 1:
  the largest fractional parts get the +1 (ties: the earlier leaf)."""
  counts = {i: min(math.floor(x), sizes[i]) for i, x in exact.items()}
  missing = total - sum(counts.values())
  eligible = sorted((i for i in exact if counts[i] < sizes[i]),
                    key=lambda i: (-(exact[i] - counts[i]), i))
  if not 0 <= missing <= len(eligible):  # sum(exact) == total up to rounding: cannot happen
    raise RuntimeError(f"largest-remainder rounding failed: {missing} counts to place.")
  for i in eligible[:missing]:
    counts[i] += 1
  return counts


def layer_densities(params, sparsity: float, distribution: str = "erk", *, where=None,
                    dense: LayerSelector = (), overrides: Optional[Dict[str, float]] = None,
                    erk_power_scale: float = 1.0) -> PyTree:
  """Per-layer densities (fractions of weights kept) whose total is exact.

  Of the ``N`` prunable weights exactly ``K = round((1 - sparsity) * N)`` are kept. Layers
  chosen by ``dense`` (regexes searched in the path, or a callable ``(key_path, leaf) -> bool``)
  keep all their weights and ``overrides`` (``{regex: density}``) fix a layer's density; both
  count in ``K``, and the other ("free") layers share the rest with RigL's semantics
  (Evci et al. 2020, ``sparse_utils.get_sparsities``)::

      density_l = eps * raw_l,   raw_l = 1                               ('uniform')
                                 raw_l = (n_in + n_out) / (n_in * n_out)  ('er', last 2 dims)
                                 raw_l = (sum(shape) / prod(shape))**p   ('erk', p=erk_power_scale)

  with eps solving ``sum_l eps * raw_l * n_l = K - fixed``. A layer with ``eps * raw_l > 1``
  becomes dense and eps is solved again for the others, until none exceeds 1. The real
  counts ``eps * raw_l * n_l`` are rounded by largest remainder so that the integer counts add
  up to ``K`` exactly.

  Returns:
    like params: python floats ``nnz_l / n_l`` (1.0 for non-prunable leaves), such that
    ``round(density_l * n_l) == nnz_l`` (what :func:`masks_from_scores` keeps).
  Raises:
    ValueError: sparsity outside [0, 1), unknown distribution, an override density outside
      [0, 1], a `dense`/`overrides` regex that matches no prunable leaf, a layer fixed twice,
      or fixed layers that alone exceed (or cannot reach) the budget.
  """
  treedef, flags, sizes, nnz, _ = _budget(params, sparsity, distribution, where, dense,
                                          overrides, erk_power_scale)
  return treedef.unflatten([nnz[i] / sizes[i] if f else 1.0 for i, f in enumerate(flags)])


def layer_counts(params, sparsity: float, distribution: str = "erk", *, where=None,
                 dense: LayerSelector = (), overrides: Optional[Dict[str, float]] = None,
                 erk_power_scale: float = 1.0,
                 units: Optional[Sequence[int]] = None) -> Tuple[List[int], List[float]]:
  """:func:`layer_densities`' budget as counts, per prunable leaf in tree order.

  Returns:
    ``(counts, quotas)``: the integer kept counts ``nnz_l`` (``round(density_l * n_l)``, what
    :func:`masks_from_scores` keeps; they add up to ``K`` exactly) and the real counts before
    rounding (``eps * raw_l * n_l``; ``nnz_l`` itself for the dense, overridden and saturated
    layers). Same arguments and errors as :func:`layer_densities`. ``units`` (one int per
    prunable leaf, tree order) counts each layer in units instead of weights (channels or
    tiles, :mod:`signin_jax.structured`): the same eps solve with ``n_l`` = the units, the
    raw scores still from the leaves' shapes.
  """
  _, flags, _, nnz, quotas = _budget(params, sparsity, distribution, where, dense, overrides,
                                     erk_power_scale, units)
  prunable_leaves = [i for i, f in enumerate(flags) if f]
  return [nnz[i] for i in prunable_leaves], [quotas[i] for i in prunable_leaves]


def _budget(params, sparsity, distribution, where, dense, overrides, erk_power_scale,
            units=None):
  """(treedef, flags, sizes, nnz, quotas) of :func:`layer_densities`: sizes, nnz and quotas
  are dicts over the prunable leaves' indices."""
  _check_sparsity(sparsity)
  _check_choice("distribution", distribution, DISTRIBUTIONS)
  if not _is_number(erk_power_scale):
    raise ValueError(f"erk_power_scale must be a number, got {erk_power_scale!r}.")
  with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  key_paths, leaves = [p for p, _ in with_path], [x for _, x in with_path]
  paths = [path_str(p) for p in key_paths]
  flags = _flags(params, where)
  idx = [i for i, f in enumerate(flags) if f]
  sizes = {i: math.prod(jnp.shape(leaves[i])) for i in idx}
  if units is not None:
    sizes = dict(zip(idx, (int(u) for u in units)))
  target = round((1.0 - sparsity) * sum(sizes.values()))

  fixed = {}  # leaf -> (count, what fixed it)
  for i in _selector(dense, "dense", paths, leaves, key_paths, idx) if dense else ():
    fixed[i] = (sizes[i], "dense")
  for pattern, d in (overrides or {}).items():
    if not _is_number(d) or not 0.0 <= d <= 1.0:
      raise ValueError(f"overrides[{pattern!r}] must be a density in [0, 1], got {d!r}.")
    for i in _selector(pattern, "overrides", paths, leaves, key_paths, idx):
      if i in fixed:
        raise ValueError(f"overrides pattern {pattern!r} fixes {paths[i]!r}, which "
                         f"{fixed[i][1]} already fixes.")
      fixed[i] = (round(d * sizes[i]), f"overrides pattern {pattern!r}")
  nnz = {i: count for i, (count, _) in fixed.items()}
  free = [i for i in idx if i not in nnz]
  budget = target - sum(nnz.values())
  if not 0 <= budget <= sum(sizes[i] for i in free):
    raise ValueError(
        f"sparsity={sparsity} is infeasible with dense={dense!r} and overrides={overrides!r}: "
        f"those layers keep {sum(nnz.values())} weights, the free layers hold "
        f"{sum(sizes[i] for i in free)}, and the target is {target} of {sum(sizes.values())}.")

  raw = {i: _raw_score(jnp.shape(leaves[i]), distribution, erk_power_scale) for i in free}
  saturated = set()
  while True:
    rest = [i for i in free if i not in saturated]
    left = budget - sum(sizes[i] for i in saturated)
    denom = sum(raw[i] * sizes[i] for i in rest)
    eps = left / denom if denom else 0.0
    newly = {i for i in rest if eps * raw[i] > 1.0}
    if not newly:
      break
    saturated |= newly
  nnz.update({i: sizes[i] for i in saturated})
  exact = {i: eps * raw[i] * sizes[i] for i in rest}
  quotas = {**{i: float(n) for i, n in nnz.items()}, **exact}
  nnz.update(_largest_remainder(exact, sizes, left))
  return treedef, flags, sizes, nnz, quotas


# --- scores (higher = keep) ------------------------------------------------------------------
# Every scorer returns a score for every leaf (what it computes anyway: cheap); the masks only
# read the prunable leaves' scores.

def random_scores(key, params) -> PyTree:
  """Independent U[0, 1) scores: top-k of them is a uniformly random subset of size k."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([jax.random.uniform(k, jnp.shape(x)) for k, x in zip(keys, leaves)])


def magnitude_scores(params) -> PyTree:
  """``|theta|``."""
  return jax.tree.map(jnp.abs, params)


def snip_scores(loss_fn: Callable, params, batch) -> PyTree:
  """SNIP (Lee et al. 2019): the connection sensitivity ``|dL/dtheta * theta|``.

  ``loss_fn(params, batch) -> scalar`` wraps the model and the loss, e.g. for Flax Linen::

      def loss_fn(params, batch):
        logits = model.apply({'params': params, 'batch_stats': stats}, batch['image'],
                             train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
  """
  grads = jax.grad(loss_fn)(params, batch)
  return jax.tree.map(lambda g, p: jnp.abs(g * p), grads, params)


def grasp_scores(loss_fn: Callable, params, batch, *, where=None) -> PyTree:
  """GraSP (Wang et al. 2020): keep the weights whose removal reduces gradient flow most.

  GraSP scores ``S = -theta * (H g)`` and removes the *largest* S, with ``g`` the gradient and
  ``H g`` the Hessian-vector product over the prunable weights (``g`` is zero on the other
  leaves, as in the reference code that differentiates ``g_w . grad_w L`` only w.r.t. conv and
  linear weights). With this module's convention (higher = keep) the returned score is
  ``theta * (H g)``. ``H g`` is forward-over-reverse: ``jax.jvp`` of ``jax.grad``. GraSP's
  temperature (logits / T, T = 200 in the paper) belongs in ``loss_fn`` (see
  :func:`snip_scores`).
  """
  grad_fn = lambda p: jax.grad(loss_fn)(p, batch)
  grads = grad_fn(params)
  leaves, treedef = jax.tree.flatten(grads)
  tangent = treedef.unflatten([g if f else jnp.zeros_like(g)
                               for g, f in zip(leaves, _flags(params, where))])
  _, hg = jax.jvp(grad_fn, (params,), (tangent,))
  return jax.tree.map(lambda p, h: p * h, params, hg)


def synflow_scores(apply_fn: Callable, params, input_shape: Sequence[int], densities, *,
                   iterations: int = 100, scope: str = "layer", where=None,
                   dtype=None) -> PyTree:
  """SynFlow (Tanaka et al. 2020): data-free iterative pruning by synaptic flow.

  With ``x = |theta| * mask`` (every leaf in absolute value) and an all-ones input,
  ``R = sum(apply_fn(x, ones(input_shape)))`` and each weight's score is ``|x * dR/dx|``.
  Round ``k`` of ``iterations`` keeps the top scores down to the exponential schedule
  ``d ** (k / iterations)``: the layer's density ``d`` with ``scope='layer'``, the pooled
  density of the non-dense prunable leaves with ``scope='global'``; the last round reaches
  ``densities`` exactly. All rounds run one compiled function.

  ``R`` is the sum over all input-output paths of the products of ``|theta|``, which grows
  geometrically with depth: for a deep network (ResNet-50 at initialization) it exceeds
  float32's 3.4e38, and the rounds raise ``FloatingPointError``. Then pass
  ``dtype=jnp.float64``: the rounds run under ``jax.enable_x64`` with float64 parameters and
  input (Tanaka et al.'s ``double_precision``), which needs an ``apply_fn`` that computes and
  returns its outputs in the dtype of its inputs (e.g. a Flax model with ``dtype=None`` or
  ``jnp.float64`` and no cast of the logits to float32). Rescaling each layer instead is not
  an option: with residual connections it changes the scores, not only their scale.

  Args:
    apply_fn: ``apply_fn(params, inputs) -> outputs`` (any pytree; all leaves are summed) in
      inference mode (BatchNorm with its running statistics), e.g. ``lambda p, x:
      model.apply({'params': p, 'batch_stats': s}, x, train=False)``.
    params: the parameters (signs are ignored).
    input_shape: shape of the all-ones input, with a batch dimension, e.g. ``(1, 32, 32, 3)``.
    densities: target densities like params (e.g. from :func:`layer_densities`).
    iterations: number of pruning rounds (100 in the paper).
    scope, where: as in :func:`masks_from_scores`.
    dtype: the dtype of the rounds: None (the params' float dtype, at least float32) or
      ``jnp.float64``.
  Returns:
    like params, float32: the last round's scores (divided by their maximum when computed in
    float64, so that they fit float32), ``-inf`` at the weights pruned by the rounds, so that
    ``masks_from_scores(scores, densities, scope=scope, where=where)`` is the iterative mask.
  Raises:
    FloatingPointError: if ``R`` is not finite in some round.
  """
  _check_choice("scope", scope, SCOPES)
  if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
    raise ValueError(f"iterations must be a positive int, got {iterations!r}.")
  leaves, treedef = jax.tree.flatten(params)
  flags = _flags(params, where)
  if dtype is None:
    dtype = jnp.promote_types(
        jnp.result_type(*[leaves[i] for i, f in enumerate(flags) if f] or [jnp.float32]),
        jnp.float32)
  elif jnp.dtype(dtype) not in (jnp.float32, jnp.float64):
    raise ValueError(f"dtype must be None, jnp.float32 or jnp.float64, got {dtype!r}.")
  wide = jnp.dtype(dtype) == jnp.float64
  counts = _counts(leaves, flags, _broadcast(densities, params, treedef, "densities"))
  sparse = [i for i, f in enumerate(flags) if f and counts[i] < jnp.size(leaves[i])]
  sizes = [jnp.size(leaves[i]) for i in sparse]
  final = [counts[i] for i in sparse]
  # The schedule of counts, computed once on the host in float64 so that its last row is the
  # exact target; its rows are fed to one compiled round.
  fractions = [(k + 1) / iterations for k in range(iterations)] if sparse else [1.0]
  if scope == "layer":
    schedule = [[round((c / n) ** t * n) for c, n in zip(final, sizes)] for t in fractions]
  else:
    schedule = [[round((sum(final) / sum(sizes)) ** t * sum(sizes))] for t in fractions]

  def one_round(abs_leaves, keep, round_counts):
    x = list(abs_leaves)
    for j, i in enumerate(sparse):
      x[i] = jnp.where(keep[j], x[i], jnp.zeros_like(x[i]))

    def synaptic_flow(x):
      outputs = apply_fn(treedef.unflatten(x), jnp.ones(tuple(input_shape), dtype))
      return sum(jnp.sum(o, dtype=dtype) for o in jax.tree.leaves(outputs))

    r, grads = jax.value_and_grad(synaptic_flow)(x)
    scores = [jnp.abs(g * xi) for g, xi in zip(grads, x)]
    for j, i in enumerate(sparse):
      scores[i] = jnp.where(keep[j], scores[i], -jnp.inf)
    return r, scores, _top_counts([scores[i] for i in sparse], list(round_counts), scope)

  with jax.enable_x64(True) if wide else contextlib.nullcontext():
    one_round = jax.jit(one_round)
    abs_leaves = [jnp.abs(x).astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                  else x for x in leaves]
    keep = [jnp.ones(jnp.shape(leaves[i]), bool) for i in sparse]
    for k, row in enumerate(schedule):
      r, scores, keep = one_round(abs_leaves, keep, jnp.asarray(row, jnp.int32))
      if not math.isfinite(float(r)):
        raise FloatingPointError(
            f"synflow: R = sum(apply_fn(|params|, ones)) is {float(r)} in round {k + 1} "
            f"with dtype {jnp.dtype(dtype).name}"
            f"{'' if wide else '; try dtype=jnp.float64 (see the docstring)'}.")
    for j, i in enumerate(sparse):
      scores[i] = jnp.where(keep[j], scores[i], -jnp.inf)
    if wide:
      top = max(float(jnp.max(jnp.where(jnp.isfinite(s), s, 0.0))) for s in scores)
      scores = [(s / (top or 1.0)).astype(jnp.float32) for s in scores]
  return treedef.unflatten(scores)


# --- masks from scores -----------------------------------------------------------------------

def _counts(leaves, flags, densities) -> List[int]:
  """``round(density * size)`` per leaf (size for non-prunable leaves); validates densities."""
  counts = []
  for x, f, d in zip(leaves, flags, densities):
    size = math.prod(jnp.shape(x))
    if not f:
      counts.append(size)
      continue
    if not _is_number(d) or not 0.0 <= d <= 1.0:
      raise ValueError(f"densities must be python numbers in [0, 1] on prunable leaves "
                       f"(static, also under jit), got {d!r}.")
    counts.append(round(d * size))
  return counts


def _top_k_mask(score, k):
  """Exactly k True entries at the largest scores (k may be traced). Equal scores: the lower
  flat index wins (stable sort); -0.0 equals 0.0; NaN ranks below everything."""
  flat = jnp.ravel(score)
  if not jnp.issubdtype(flat.dtype, jnp.floating):
    flat = flat.astype(jnp.float32)
  order = jnp.argsort(-flat, stable=True)
  keep = jnp.zeros(flat.shape, bool).at[order].set(jnp.arange(flat.size) < k,
                                                   unique_indices=True)
  return keep.reshape(jnp.shape(score))


def _top_counts(scores: list, counts: list, scope: str) -> list:
  """Masks for the sparse leaves' scores: per leaf (counts[i] each) or pooled (counts[0])."""
  if scope == "layer":
    return [_top_k_mask(s, k) for s, k in zip(scores, counts)]
  if not scores:
    return []
  keep = _top_k_mask(jnp.concatenate([jnp.ravel(s) for s in scores]), sum(counts))
  out, offset = [], 0
  for s in scores:
    out.append(keep[offset:offset + jnp.size(s)].reshape(jnp.shape(s)))
    offset += jnp.size(s)
  return out


def masks_from_scores(scores, densities, *, scope: str = "layer", where=None) -> PyTree:
  """Boolean masks keeping the highest scores, with exact counts.

  ``densities`` (python floats like params, or a prefix such as one float) give each prunable
  leaf's count ``nnz_l = round(density_l * n_l)``; a leaf with ``nnz_l == n_l`` stays dense.

  * ``scope='layer'``: each prunable leaf keeps its ``nnz_l`` highest scores.
  * ``scope='global'``: dense leaves stay dense; the other prunable leaves together keep
    ``sum_l nnz_l`` weights, the highest scores across them (so only their total and which
    leaves are dense matter: with densities from :func:`layer_densities` the total is
    ``round((1 - sparsity) * N)`` including the dense layers).

  Ties go to the lower flat index (in 'global', the earlier leaf). Usable under ``jax.jit``
  with ``densities`` static (closed over), e.g. ``jax.jit(lambda s: masks_from_scores(s, d))``.
  """
  _check_choice("scope", scope, SCOPES)
  leaves, treedef = jax.tree.flatten(scores)
  flags = _flags(scores, where)
  counts = _counts(leaves, flags, _broadcast(densities, scores, treedef, "densities"))
  sparse = [i for i, f in enumerate(flags) if f and counts[i] < jnp.size(leaves[i])]
  out = [jnp.ones(jnp.shape(x), bool) for x in leaves]
  chosen = _top_counts([leaves[i] for i in sparse], [counts[i] for i in sparse], scope)
  for i, m in zip(sparse, chosen):
    out[i] = m
  return treedef.unflatten(out)


def create_masks(key, params, sparsity: float, *, method: str = "random",
                 distribution: str = "erk", scope: str = "layer", where=None,
                 dense: LayerSelector = (), overrides: Optional[Dict[str, float]] = None,
                 loss_fn: Optional[Callable] = None, apply_fn: Optional[Callable] = None,
                 batch=None, input_shape: Optional[Sequence[int]] = None,
                 synflow_iterations: int = 100, synflow_dtype=None,
                 erk_power_scale: float = 1.0, structure=None) -> PyTree:
  """Masks for `params` at `sparsity`: a layer budget, then scores, then exact top-k.

  ``method``: 'random' (needs ``key``), 'magnitude', 'snip' and 'grasp' (need ``loss_fn`` and
  ``batch``), 'synflow' (needs ``apply_fn`` and ``input_shape``; ``synflow_iterations``
  rounds in ``synflow_dtype``, see :func:`synflow_scores`). See :func:`layer_densities` for ``distribution``, ``dense``, ``overrides`` and
  ``erk_power_scale``; :func:`masks_from_scores` for ``scope``; the scorers for ``loss_fn``
  and ``apply_fn``. ``sparsity=0.0`` gives all-True masks without computing scores. All
  arguments are checked before any score is computed.

  ``structure`` (None or 'unstructured': the above; 'n:m', 'channel', 'block' or a
  ``structured.Structure``): masks of that structure from the same scores, see
  :mod:`signin_jax.structured` (budgets in channels / tiles; N:M fixes the density, so
  ``sparsity`` must be ``1 - n / m``; ``scope`` must be 'layer').
  """
  _check_choice("method", method, METHODS)
  _check_choice("scope", scope, SCOPES)
  if method == "random" and key is None:
    raise ValueError("method='random' needs a PRNG key, got key=None.")
  if method in DATA_DEPENDENT_METHODS and (loss_fn is None or batch is None):
    raise ValueError(f"method={method!r} needs loss_fn and batch.")
  if method == "synflow" and (apply_fn is None or input_shape is None):
    raise ValueError("method='synflow' needs apply_fn and input_shape.")
  if structure is not None and structure != "unstructured":
    return _create_structured(key, params, sparsity, method, distribution, scope, where, dense,
                              overrides, loss_fn, apply_fn, batch, input_shape, synflow_dtype,
                              erk_power_scale, structure)
  densities = layer_densities(params, sparsity, distribution, where=where, dense=dense,
                              overrides=overrides, erk_power_scale=erk_power_scale)
  if all(d == 1.0 for d in jax.tree.leaves(densities)):
    return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), params)
  if method == "random":
    scores = random_scores(key, params)
  elif method == "magnitude":
    scores = magnitude_scores(params)
  elif method == "snip":
    scores = snip_scores(loss_fn, params, batch)
  elif method == "grasp":
    scores = grasp_scores(loss_fn, params, batch, where=where)
  else:
    scores = synflow_scores(apply_fn, params, input_shape, densities,
                            iterations=synflow_iterations, scope=scope, where=where,
                            dtype=synflow_dtype)
  return masks_from_scores(scores, densities, scope=scope, where=where)


def _create_structured(key, params, sparsity, method, distribution, scope, where, dense,
                       overrides, loss_fn, apply_fn, batch, input_shape, synflow_dtype,
                       erk_power_scale, structure):
  """create_masks with a structure: scores as above, then :mod:`signin_jax.structured`."""
  from signin_jax import structured  # pylint: disable=import-outside-toplevel (it imports us)
  s = structured.as_structure(structure)
  if s.kind == "unstructured":
    return create_masks(key, params, sparsity, method=method, distribution=distribution,
                        scope=scope, where=where, dense=dense, overrides=overrides,
                        loss_fn=loss_fn, apply_fn=apply_fn, batch=batch,
                        input_shape=input_shape, synflow_dtype=synflow_dtype,
                        erk_power_scale=erk_power_scale)
  if scope != "layer":
    raise ValueError(f"structure {s.kind!r} needs scope='layer' (per-layer counts of "
                     f"units), got scope={scope!r}.")
  _check_sparsity(sparsity)
  counts = structured.unit_counts(s, params, sparsity, distribution, where=where, dense=dense,
                                  overrides=overrides, erk_power_scale=erk_power_scale)
  if method == "random":
    scores = random_scores(key, params)
  elif method == "magnitude":
    scores = magnitude_scores(params)
  elif method == "snip":
    scores = snip_scores(loss_fn, params, batch)
  elif method == "grasp":
    scores = grasp_scores(loss_fn, params, batch, where=where)
  else:  # One round at the dense network: its iterative rounds prune single weights.
    scores = synflow_scores(apply_fn, params, input_shape, 1.0, iterations=1, where=where,
                            dtype=synflow_dtype)
  return structured.structured_masks(scores, s, counts, where=where, dense=dense)


# --- training under a static mask ------------------------------------------------------------

def _as_bool(m):
  return jnp.asarray(m).astype(bool)


def apply_mask(params, masks) -> PyTree:
  """Params with masked entries exactly 0.0 (dtypes kept)."""
  return jax.tree.map(lambda p, m: jnp.where(_as_bool(m), p, jnp.zeros_like(p)), params, masks)


def _keep_zero(updates, masks, params):
  # p + (-p) is exactly +0.0 in IEEE arithmetic, whatever p (finite) and the updates were.
  return jax.tree.map(lambda u, m, p: jnp.where(_as_bool(m), u, -p), updates, masks, params)


def keep_masked_zero(masks) -> optax.GradientTransformation:
  """For the end of an optax chain: ``u' = where(mask, u, -params)``, so that
  ``params + u'`` is exactly 0.0 at masked entries. Stateless; ``update`` needs ``params``."""

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("keep_masked_zero: update() needs `params` (the current parameters).")
    return _keep_zero(updates, masks, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def with_static_mask(tx: optax.GradientTransformation,
                     masks) -> optax.GradientTransformationExtraArgs:
  """Trains under a static mask with any optimizer `tx`, e.g. ``signin.sign_in(sgd)``.

  ``update`` (1) zeroes the incoming gradients at masked entries, so they reach neither
  ``tx``'s state (momentum, Adam moments) nor global-norm clipping; (2) calls ``tx.update``
  with ``params`` and any extra arguments; (3) applies :func:`keep_masked_zero`'s rule, so
  masked parameters are exactly 0.0 after every step (weight decay, Sign-In's resets or
  anything else in ``tx`` cannot revive them). The state is ``tx``'s own.
  """
  tx = optax.with_extra_args_support(tx)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("with_static_mask: update() needs `params` (the current parameters).")
    updates = jax.tree.map(lambda g, m: jnp.where(_as_bool(m), g, jnp.zeros_like(g)),
                           updates, masks)
    updates, state = tx.update(updates, state, params, **extra_args)
    return _keep_zero(updates, masks, params), state

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def sparsity_aware_init(params, masks, where=None) -> PyTree:
  """Rescales each prunable leaf by ``1 / sqrt(d_l)``, ``d_l`` the mask's density.

  A unit's pre-activation ``sum_i w_i x_i`` over ``fan_in`` inputs has variance
  ``fan_in * Var(w) * E[x^2]``; with a random fraction ``d_l`` of its weights kept, about
  ``d_l * fan_in`` terms remain and the variance shrinks by ``d_l``. Scaling the weights by
  ``1 / sqrt(d_l)`` restores the dense init's variance: the sparsity-aware ("scaled")
  initialization of Liu et al. 2019 ("Rethinking the Value of Network Pruning") and
  Evci et al. 2022 ("Gradient Flow in Sparse Neural Networks"), here per layer rather than
  per unit. Leaves with an empty mask are left as they are.
  """
  leaves, treedef = jax.tree.flatten(params)
  mask_leaves = treedef.flatten_up_to(masks)
  out = []
  for p, m, f in zip(leaves, mask_leaves, _flags(params, where)):
    if f:
      d = jnp.mean(_as_bool(m), dtype=jnp.float32)
      p = (p / jnp.sqrt(jnp.where(d > 0, d, 1.0))).astype(p.dtype)
    out.append(p)
  return treedef.unflatten(out)


# --- reporting -------------------------------------------------------------------------------

def density(masks, where=None) -> float:
  """Fraction of prunable weights the masks keep (1.0 if nothing is prunable)."""
  pairs = [(m, f) for m, f in zip(jax.tree.leaves(masks), _flags(masks, where)) if f]
  total = sum(math.prod(jnp.shape(m)) for m, _ in pairs)
  return sum(int(jnp.sum(_as_bool(m))) for m, _ in pairs) / total if total else 1.0


def _positions(positions, params, paths, treedef) -> list:
  if positions is None:
    return [1] * len(paths)
  if isinstance(positions, dict) and all(
      isinstance(k, str) and isinstance(v, (int, float)) for k, v in positions.items()):
    unknown = sorted(set(positions) - set(paths))
    if unknown:
      raise ValueError(f"positions has keys that are no parameter path: {unknown}; paths "
                       f"look like {paths[:3]}.")
    return [positions.get(p, 1) for p in paths]
  return _broadcast(positions, params, treedef, "positions")


def summary(params, masks, positions=None, where=None,
            structures: Optional[Dict[str, str]] = None) -> List[Dict[str, Any]]:
  """One row per prunable leaf, then a 'total' row.

  Each row has path, shape, size, nnz (the mask's True count), density (nnz / size),
  dense_flops ``= 2 * size * positions_l``, sparse_flops ``= 2 * nnz * positions_l`` and
  flops_share = sparse_flops / (dense FLOPs of all prunable leaves). ``positions_l`` is the
  number of output positions a kernel is applied at (H_out * W_out for a conv, 1 for a dense
  layer, the default): a dict ``{path: positions}`` (paths as :func:`path_str`, e.g. from
  ``models.output_positions``) or a pytree (prefix) like params. ``structures`` (``{path:
  label}``, ``structured.describe``) adds a 'structure' column.
  """
  with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [path_str(p) for p, _ in with_path]
  mask_leaves = treedef.flatten_up_to(masks)
  pos = _positions(positions, params, paths, treedef)
  rows = []
  for (_, p), path, m, f, n_pos in zip(with_path, paths, mask_leaves, _flags(params, where),
                                       pos):
    if not f:
      continue
    if jnp.shape(m) != jnp.shape(p):
      raise ValueError(f"masks[{path!r}] has shape {jnp.shape(m)}, the parameter "
                       f"{jnp.shape(p)}.")
    size, nnz = math.prod(jnp.shape(p)), int(jnp.sum(_as_bool(m)))
    rows.append({"path": path, "shape": tuple(jnp.shape(p)), "size": size, "nnz": nnz,
                 "density": nnz / size, "dense_flops": 2 * size * int(n_pos),
                 "sparse_flops": 2 * nnz * int(n_pos)})
    if structures is not None:
      rows[-1]["structure"] = structures.get(path, "")
  dense_total = sum(r["dense_flops"] for r in rows)
  for r in rows:
    r["flops_share"] = r["sparse_flops"] / dense_total
  size, nnz = sum(r["size"] for r in rows), sum(r["nnz"] for r in rows)
  sparse_total = sum(r["sparse_flops"] for r in rows)
  rows.append({"path": "total", "shape": (), "size": size, "nnz": nnz,
               "density": nnz / size if size else 1.0, "dense_flops": dense_total,
               "sparse_flops": sparse_total,
               "flops_share": sparse_total / dense_total if dense_total else 1.0})
  return rows


def format_summary(rows: List[Dict[str, Any]]) -> str:
  """A fixed-width text table of :func:`summary` rows."""
  width = max([len(r["path"]) for r in rows] + [5])
  head = (f"{'layer':<{width}}  {'shape':>18}  {'size':>11}  {'nnz':>11}  {'density':>8}  "
          f"{'sparse FLOPs':>15}  {'FLOPs share':>11}"
          + ("  structure" if any("structure" in r for r in rows) else ""))
  lines = [head, "-" * len(head)]
  for r in rows:
    shape = "x".join(map(str, r["shape"]))
    lines.append(f"{r['path']:<{width}}  {shape:>18}  {r['size']:>11,}  {r['nnz']:>11,}  "
                 f"{r['density']:>8.4f}  {r['sparse_flops']:>15,}  {r['flops_share']:>11.4f}"
                 + (f"  {r['structure']}" if "structure" in r else ""))
  return "\n".join(lines)
