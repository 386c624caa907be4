"""Static binary masks for pruning at initialization (PaI), over any parameter pytree.

A mask is a pytree of bools with the params' structure (uint8 is accepted wherever a mask is
read). A leaf is *prunable* when ``leaf.ndim >= 2`` (conv and dense kernels) unless ``where``
(a pytree of bools or a callable ``(path, leaf) -> bool``) says otherwise; other leaves always
get an all-True mask. Paths are matched as '/'-joined key names, e.g. ``'stem_conv/kernel'``.

A mask is built in two steps: a *layer budget* (how many weights each layer keeps:
:func:`layer_densities`, 'uniform', 'er' or 'erk') and *scores* (which weights: random,
magnitude, SNIP, GraSP, SynFlow), combined by :func:`masks_from_scores` with exact counts and
deterministic tie breaking. :func:`create_masks` does both. During training,
:func:`with_static_mask` keeps masked weights exactly 0.0 under any optax optimizer.

Depends only on jax and optax.
"""

import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

PyTree = Any
DISTRIBUTIONS = ("uniform", "er", "erk")
METHODS = ("random", "magnitude", "snip", "grasp", "synflow")
DATA_DEPENDENT_METHODS = ("snip", "grasp")  # need loss_fn and a batch

SCOPES = ("layer", "global")


# --- paths and prunable leaves -------------------------------------------------------------

def path_str(path) -> str:
  """'/'-joined key names of a jax key path: ('conv', 'kernel') -> 'conv/kernel'."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _leaves_with_paths(tree):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return [path_str(p) for p, _ in leaves], [x for _, x in leaves], treedef


def prunable(params, where=None) -> PyTree:
  """Like params: True for leaves that masks may prune (default: ``ndim >= 2``)."""
  paths, leaves, treedef = _leaves_with_paths(params)
  return treedef.unflatten(_prunable_flags(params, paths, leaves, treedef, where))


def _prunable_flags(params, paths, leaves, treedef, where):
  if where is None:
    return [jnp.ndim(x) >= 2 for x in leaves]
  if callable(where):
    with_path, _ = jax.tree_util.tree_flatten_with_path(params)
    return [bool(where(p, x)) for p, x in with_path]
  full = jax.tree.map(lambda w, sub: jax.tree.map(lambda _: bool(w), sub), where, params)
  return treedef.flatten_up_to(full)


def _matcher(spec, name):
  """A predicate (path, leaf) -> bool from regexes (re.search on the path) or a callable."""
  if callable(spec):
    return spec
  if isinstance(spec, str):
    spec = (spec,)
  patterns = [re.compile(s) for s in spec]
  return lambda path, leaf: any(p.search(path) for p in patterns)


# --- layer budgets ---------------------------------------------------------------------------

def layer_densities(params, sparsity: float, distribution: str = "erk", *, where=None,
                    dense: Union[Sequence[str], Callable] = (),
                    overrides: Optional[Dict[str, float]] = None,
                    erk_power_scale: float = 1.0) -> PyTree:
  """Per-layer densities (fractions of weights kept) with an exact total.

  The total over all prunable leaves keeps exactly ``round((1 - sparsity) * N)`` weights.
  Layers named by ``dense`` (regexes on the path, or a callable ``(path, leaf) -> bool``) keep
  every weight and ``overrides`` ({regex: density}) fix a layer's density; both count in the
  budget, and the remaining ("free") layers share the rest (RigL's semantics,
  Evci et al. 2020):

  * ``'uniform'``: every free layer gets the same density;
  * ``'erk'`` (Erdos-Renyi-Kernel): density_l = eps * (sum(shape_l) / prod(shape_l)) ** p;
  * ``'er'`` (Erdos-Renyi): density_l = eps * (n_in + n_out) / (n_in * n_out), with the last
    two dims of the kernel as (n_in, n_out);

  eps solves ``sum_l density_l * n_l = budget``; a layer whose density would exceed 1 becomes
  dense and eps is solved again for the others, until none exceeds 1. The float densities are
  then turned into integer counts by largest-remainder rounding, so that the counts add up
  exactly. Returns a pytree of floats ``nnz_l / n_l`` (1.0 for non-prunable leaves).
  """
  if not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
    raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}.")
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}.")
  paths, leaves, treedef = _leaves_with_paths(params)
  flags = _prunable_flags(params, paths, leaves, treedef, where)
  with_path, _ = jax.tree_util.tree_flatten_with_path(params)
  idx = [i for i, f in enumerate(flags) if f]
  sizes = {i: int(math.prod(leaves[i].shape)) for i in idx}
  total = sum(sizes.values())
  target = round((1.0 - sparsity) * total)

  nnz = {}  # fixed integer counts: dense layers and overrides
  is_dense = _matcher(dense, "dense")
  if dense and not any(is_dense(paths[i], leaves[i]) for i in idx):
    raise ValueError(f"dense={dense!r} matches no prunable parameter; prunable: "
                     f"{[paths[i] for i in idx]}.")
  for i in idx:
    if is_dense(paths[i], leaves[i]) if dense else False:
      nnz[i] = sizes[i]
  for pattern, d in (overrides or {}).items():
    if not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0:
      raise ValueError(f"overrides[{pattern!r}] must be a density in [0, 1], got {d!r}.")
    hits = [i for i in idx if re.search(pattern, paths[i])]
    if not hits:
      raise ValueError(f"overrides pattern {pattern!r} matches no prunable parameter; "
                       f"prunable: {[paths[i] for i in idx]}.")
    for i in hits:
      nnz[i] = round(d * sizes[i])
  budget = target - sum(nnz.values())
  free = [i for i in idx if i not in nnz]
  if budget < 0 or budget > sum(sizes[i] for i in free):
    raise ValueError(
        f"sparsity={sparsity} is infeasible with dense={dense!r} and overrides={overrides!r}: "
        f"the fixed layers keep {sum(nnz.values())} of {total} weights, the target is {target}.")

  def raw(i):
    shape = leaves[i].shape
    if distribution == "uniform":
      return 1.0
    if distribution == "er":
      n_in, n_out = shape[-2], shape[-1]
      return (n_in + n_out) / (n_in * n_out)
    return (sum(shape) / math.prod(shape)) ** erk_power_scale

  saturated = set()
  while True:
    rest = [i for i in free if i not in saturated]
    left = budget - sum(sizes[i] for i in saturated)
    denom = sum(raw(i) * sizes[i] for i in rest)
    eps = left / denom if denom else 0.0
    newly = {i for i in rest if eps * raw(i) > 1.0}
    if not newly:
      break
    saturated |= newly
  for i in saturated:
    nnz[i] = sizes[i]
  rest = [i for i in free if i not in saturated]
  exact = {i: eps * raw(i) * sizes[i] for i in rest}
  counts = {i: min(int(math.floor(x)), sizes[i]) for i, x in exact.items()}
  missing = budget - sum(sizes[i] for i in saturated) - sum(counts.values())
  # Largest remainder first; ties broken by position in the tree (deterministic).
  for i in sorted(rest, key=lambda i: (-(exact[i] - counts[i]), i))[:max(missing, 0)]:
    counts[i] += 1
  nnz.update(counts)
  densities = [nnz[i] / sizes[i] if f else 1.0 for i, f in enumerate(flags)]
  return treedef.unflatten(densities)


# --- scores (higher = keep) ------------------------------------------------------------------

def random_scores(key, params) -> PyTree:
  """Uniform random scores: a uniformly random subset of each layer's budget."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([jax.random.uniform(k, jnp.shape(x)) for k, x in zip(keys, leaves)])


def magnitude_scores(params) -> PyTree:
  """|theta| at initialization."""
  return jax.tree.map(jnp.abs, params)


def snip_scores(loss_fn: Callable, params, batch) -> PyTree:
  """SNIP (Lee et al. 2019): |dL/dtheta * theta|, the connection sensitivity.

  ``loss_fn(params, batch) -> scalar`` wraps the model, e.g. for Flax:
  ``lambda p, b: cross_entropy(model.apply({'params': p, 'batch_stats': s}, b['image'],
  train=False), b['label'])``.
  """
  grads = jax.grad(loss_fn)(params, batch)
  return jax.tree.map(lambda g, p: jnp.abs(g * p), grads, params)


def grasp_scores(loss_fn: Callable, params, batch) -> PyTree:
  """GraSP (Wang et al. 2020): keeps the weights whose removal least reduces gradient flow.

  GraSP's score is ``S = -theta * (H g)`` and it removes the *largest* S; with this module's
  convention (higher = keep) the returned score is ``theta * (H g)``. ``H g`` is a
  Hessian-vector product (forward-over-reverse), with ``g`` held fixed.
  """
  grad_fn = lambda p: jax.grad(loss_fn)(p, batch)
  g = jax.lax.stop_gradient(grad_fn(params))
  _, hg = jax.jvp(grad_fn, (params,), (g,))
  return jax.tree.map(lambda p, h: p * h, params, hg)


def synflow_scores(apply_fn: Callable, params, input_shape, densities, *, iterations: int = 100,
                   scope: str = "layer", where=None) -> PyTree:
  """SynFlow (Tanaka et al. 2020): data-free iterative pruning by synaptic flow.

  Each of ``iterations`` rounds scores ``|dR/dtheta * theta|`` with
  ``R = sum(apply_fn(|theta| * mask, ones(input_shape)))`` and prunes to the round's density
  ``d ** (k / iterations)`` (the exponential schedule), per layer or globally (``scope``).
  Returns the last round's scores with pruned weights at -inf, so that
  ``masks_from_scores(scores, densities, scope=scope)`` gives the iterative mask exactly.
  ``apply_fn(params, inputs) -> outputs`` should run the model in inference mode (BatchNorm
  with its running statistics). Computed in the params' dtype (float32 may overflow R for
  very deep networks).
  """
  mask = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
  abs_params = jax.tree.map(jnp.abs, params)
  ones = jnp.ones(input_shape, jax.tree.leaves(params)[0].dtype)

  @jax.jit
  def round_scores(mask):
    r = lambda p: jnp.sum(apply_fn(jax.tree.map(lambda a, m: a * m, p, mask), ones))
    g = jax.grad(r)(abs_params)
    return jax.tree.map(lambda gi, a, m: jnp.where(m, jnp.abs(gi * a), -jnp.inf),
                        g, abs_params, mask)

  scores = None
  for k in range(1, iterations + 1):
    scores = round_scores(mask)
    step_densities = jax.tree.map(lambda d: d ** (k / iterations), densities)
    mask = masks_from_scores(scores, step_densities, scope=scope, where=where)
  return jax.tree.map(lambda s, m: jnp.where(m, s, -jnp.inf), scores, mask)


# --- masks from scores -----------------------------------------------------------------------

def _top_k_mask(score, k):
  """Exactly k True entries at the largest scores; equal scores: the lower flat index wins."""
  flat = jnp.ravel(score)
  order = jnp.argsort(-flat, stable=True)
  keep = jnp.zeros(flat.shape, bool).at[order[:k]].set(True)
  return keep.reshape(jnp.shape(score))


def masks_from_scores(scores, densities, *, scope: str = "layer", where=None) -> PyTree:
  """Boolean masks keeping the highest scores, with exact counts.

  ``scope='layer'``: each prunable leaf keeps exactly ``round(density_l * n_l)`` weights.
  ``scope='global'``: leaves with density 1.0 stay dense; the other prunable leaves together
  keep exactly ``sum_l round(density_l * n_l)`` weights, chosen by score across layers (so only
  the densities' total matters; use ``distribution='uniform'`` to set it).
  """
  if scope not in SCOPES:
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
  paths, leaves, treedef = _leaves_with_paths(scores)
  flags = _prunable_flags(scores, paths, leaves, treedef, where)
  dens = treedef.flatten_up_to(densities)
  counts = [round(float(d) * int(math.prod(jnp.shape(s)))) for d, s in zip(dens, leaves)]
  out = [jnp.ones(jnp.shape(s), bool) for s in leaves]
  if scope == "layer":
    for i, (s, d, f) in enumerate(zip(leaves, dens, flags)):
      if f and d < 1.0:
        out[i] = _top_k_mask(s, counts[i])
    return treedef.unflatten(out)
  pooled = [i for i, f in enumerate(flags) if f and dens[i] < 1.0]
  if pooled:
    flat = jnp.concatenate([jnp.ravel(leaves[i]).astype(jnp.float32) for i in pooled])
    keep = _top_k_mask(flat, sum(counts[i] for i in pooled))
    offset = 0
    for i in pooled:
      n = int(math.prod(jnp.shape(leaves[i])))
      out[i] = keep[offset:offset + n].reshape(jnp.shape(leaves[i]))
      offset += n
  return treedef.unflatten(out)


def create_masks(key, params, sparsity: float, *, method: str = "random",
                 distribution: str = "erk", scope: str = "layer", where=None,
                 dense: Union[Sequence[str], Callable] = (), overrides=None,
                 loss_fn: Optional[Callable] = None, apply_fn: Optional[Callable] = None,
                 batch=None, input_shape=None, synflow_iterations: int = 100) -> PyTree:
  """Masks for `params` at the given sparsity: a layer budget, then scores, then top-k.

  ``method``: 'random' (needs ``key``), 'magnitude', 'snip' and 'grasp' (need ``loss_fn`` and
  ``batch``), 'synflow' (needs ``apply_fn`` and ``input_shape``). See :func:`layer_densities`
  for ``distribution``, ``dense``, ``overrides``; :func:`masks_from_scores` for ``scope``.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  if scope not in SCOPES:
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
  if method in ("snip", "grasp") and (loss_fn is None or batch is None):
    raise ValueError(f"method={method!r} needs loss_fn and batch.")
  if method == "synflow" and (apply_fn is None or input_shape is None):
    raise ValueError("method='synflow' needs apply_fn and input_shape.")
  densities = layer_densities(params, sparsity, distribution, where=where, dense=dense,
                              overrides=overrides)
  if method == "random":
    scores = random_scores(key, params)
  elif method == "magnitude":
    scores = magnitude_scores(params)
  elif method == "snip":
    scores = snip_scores(loss_fn, params, batch)
  elif method == "grasp":
    scores = grasp_scores(loss_fn, params, batch)
  else:
    scores = synflow_scores(apply_fn, params, input_shape, densities,
                            iterations=synflow_iterations, scope=scope, where=where)
  return masks_from_scores(scores, densities, scope=scope, where=where)


# --- using masks -----------------------------------------------------------------------------

def apply_mask(params, masks) -> PyTree:
  """Params with masked entries exactly 0.0 (dtypes kept)."""
  return jax.tree.map(lambda p, m: jnp.where(m.astype(bool), p, jnp.zeros_like(p)), params, masks)


def _keep_zero(updates, masks, params):
  # params + (-params) is exactly 0.0 in IEEE arithmetic, whatever came before.
  return jax.tree.map(lambda u, m, p: jnp.where(m.astype(bool), u, -p), updates, masks, params)


def keep_masked_zero(masks) -> optax.GradientTransformation:
  """For the end of an optax chain: ``u' = where(mask, u, -params)``, so that
  ``params + u'`` is exactly 0.0 at masked entries. Needs ``params`` in ``update``."""

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("keep_masked_zero: update() needs `params`.")
    return _keep_zero(updates, masks, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def with_static_mask(tx: optax.GradientTransformation, masks) -> optax.GradientTransformationExtraArgs:
  """Trains under a static mask with any optimizer `tx` (e.g. ``sign_in(...)``).

  Gradients at masked entries are zeroed before `tx` sees them (so they reach neither its
  state, e.g. momentum, nor global-norm clipping), and the updates are corrected so that
  masked parameters stay exactly 0.0 after any number of steps. Needs ``params`` in update.
  """
  tx = optax.with_extra_args_support(tx)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("with_static_mask: update() needs `params`.")
    updates = jax.tree.map(lambda g, m: jnp.where(m.astype(bool), g, jnp.zeros_like(g)),
                           updates, masks)
    updates, state = tx.update(updates, state, params, **extra_args)
    return _keep_zero(updates, masks, params), state

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def sparsity_aware_init(params, masks, where=None) -> PyTree:
  """Rescales each prunable leaf by ``1 / sqrt(density_l)``.

  A unit of a layer with density d sums over about ``d * fan_in`` nonzero inputs, so the
  variance of its pre-activation shrinks by d; the rescaling restores the dense init's
  variance (the "sparse init" of Liu et al. 2019 and Evci et al. 2022).
  """
  paths, leaves, treedef = _leaves_with_paths(params)
  flags = _prunable_flags(params, paths, leaves, treedef, where)
  mask_leaves = treedef.flatten_up_to(masks)
  out = []
  for p, m, f in zip(leaves, mask_leaves, flags):
    d = jnp.mean(m.astype(jnp.float32))
    out.append((p / jnp.sqrt(jnp.where(d > 0, d, 1.0))).astype(p.dtype) if f else p)
  return treedef.unflatten(out)


# --- reporting -------------------------------------------------------------------------------

def density(masks, where=None) -> float:
  """Fraction of prunable weights kept."""
  paths, leaves, treedef = _leaves_with_paths(masks)
  flags = _prunable_flags(masks, paths, leaves, treedef, where)
  kept = sum(int(jnp.sum(m.astype(bool))) for m, f in zip(leaves, flags) if f)
  total = sum(int(math.prod(jnp.shape(m))) for m, f in zip(leaves, flags) if f)
  return kept / total if total else 1.0


def summary(params, masks, positions=None, where=None) -> List[Dict[str, Any]]:
  """One row per prunable leaf and a 'total' row: path, shape, size, nnz, density,
  dense_flops, sparse_flops and flops_share (the layer's sparse FLOPs over the whole dense
  network's FLOPs). A layer's dense FLOPs are ``2 * size * positions`` where ``positions``
  (a dict keyed by path, or a pytree like params) gives the number of output positions the
  kernel is applied at (1, the default, for a dense layer). nnz counts nonzero parameters, so
  it is measured on the weights themselves (pass the final params to see the final sparsity).
  """
  paths, leaves, treedef = _leaves_with_paths(params)
  flags = _prunable_flags(params, paths, leaves, treedef, where)
  mask_leaves = treedef.flatten_up_to(masks)
  if positions is None:
    pos = [1] * len(leaves)
  elif isinstance(positions, dict) and set(positions) <= set(paths):  # keyed by path
    pos = [positions.get(p, 1) for p in paths]
  else:
    pos = treedef.flatten_up_to(positions)
  rows = []
  for path, p, m, f, n_pos in zip(paths, leaves, mask_leaves, flags, pos):
    if not f:
      continue
    size = int(math.prod(jnp.shape(p)))
    nnz = int(jnp.sum((p != 0) & m.astype(bool)))
    rows.append({"path": path, "shape": tuple(jnp.shape(p)), "size": size, "nnz": nnz,
                 "density": nnz / size, "dense_flops": 2 * size * int(n_pos),
                 "sparse_flops": 2 * nnz * int(n_pos)})
  total_flops = sum(r["dense_flops"] for r in rows) or 1
  for r in rows:
    r["flops_share"] = r["sparse_flops"] / total_flops
  size, nnz = sum(r["size"] for r in rows), sum(r["nnz"] for r in rows)
  sparse = sum(r["sparse_flops"] for r in rows)
  rows.append({"path": "total", "shape": (), "size": size, "nnz": nnz,
               "density": nnz / size if size else 1.0, "dense_flops": total_flops,
               "sparse_flops": sparse, "flops_share": sparse / total_flops})
  return rows


def format_summary(rows) -> str:
  """A fixed-width text table of :func:`summary` rows."""
  width = max([len(r["path"]) for r in rows] + [5])
  head = (f"{'layer':<{width}}  {'shape':>18}  {'size':>10}  {'nnz':>10}  {'density':>8}  "
          f"{'FLOPs share':>11}")
  lines = [head, "-" * len(head)]
  for r in rows:
    shape = "x".join(map(str, r["shape"])) if r["shape"] else ""
    lines.append(f"{r['path']:<{width}}  {shape:>18}  {r['size']:>10,}  {r['nnz']:>10,}  "
                 f"{r['density']:>8.4f}  {r['flops_share']:>11.4f}")
  return "\n".join(lines)
