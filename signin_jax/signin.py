"""Sign-In as an optax gradient transformation.

Sign-In (Gadhikar, Jacobs, Zhou, Burkholz; arXiv 2504.12801) writes every reparameterized
weight as ``theta = m * w`` and trains both factors. Under gradient flow with
``g = dL/dtheta``::

    dm/dt = -w g,   dw/dt = -m g,   beta = m**2 - w**2 is conserved,
    dtheta/dt = -(m**2 + w**2) g = -sqrt(beta**2 + 4 theta**2) g,

so for ``beta > 0`` a weight can cross zero and flip its sign. Weight decay and discrete steps
shrink ``beta``; every ``reset_every`` steps the factors are re-split with the configured
``beta`` while ``theta`` (the network function) stays unchanged::

    r = sqrt(beta**2 + 4 theta**2),   m = sqrt((beta + r) / 2),   w = theta / m.

The transformation takes gradients with respect to the model's ordinary parameters theta and
returns updates for theta, so adding Sign-In to a training loop changes one line::

    tx = sign_in(optax.sgd(0.1, momentum=0.9), reset_every=steps_per_epoch)

The ``inner`` optimizer sees the factors as its parameters: a :class:`Factors` tree
``Factors(m, w, other)`` (three trees like the params), with the gradient ``w * g`` for ``m``
and ``m * g`` for ``w``, so its weight decay, momentum, schedules and
``optax.inject_hyperparams`` act on m and w exactly as if the model had been written with
explicit m and w parameters. Leaves that are not reparameterized (by default every leaf with
``ndim < 2``: biases, norm scales) sit in ``other`` and get ``inner``'s ordinary update.

Only ``m`` is stored; ``w = theta / m`` is derived from the current parameters at every step.
Hence (a) the state holds one extra float per reparameterized weight (plus whatever ``inner``
keeps for the two factors, e.g. two momenta for SGD with momentum), and (b) if code outside the
transform changes theta between steps (re-applying a mask, a pruner, regrowth at zero), the next
update starts from the new theta: there is no stale copy of theta that could come back.
After a split ``m >= sqrt(beta)``; under gradient flow ``m**2 - w**2`` then only shrinks
slowly through weight decay (``d beta/dt = -2 lambda beta``), so ``m`` stays away from zero.
Discrete steps do not conserve it: after large updates ``m`` can come close to zero before the
next reset (``experiments/trace_run.py`` prints the smallest ``|m|`` per layer; see
docs/results.md, part 2, for a run where it fell to 0.016 and the run diverged).

This module depends only on jax and optax.
"""

import numbers
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any
# A per-leaf choice: one value for every leaf, a pytree (or pytree prefix) of values, or a
# callable on (key path, leaf).
PerLeaf = Union[float, bool, PyTree, Callable[[tuple, jax.Array], Any]]

INNER_STATE_AT_RESET = ("keep", "reinit")


class Factors(NamedTuple):
  """What ``inner`` optimizes in place of the params: three trees with the params' structure.

  ``m`` and ``w`` hold the two factors of ``theta = m * w`` at the reparameterized leaves and
  ``optax.MaskedNode()`` elsewhere; ``other`` holds theta at the other leaves (biases, norm
  parameters) and ``optax.MaskedNode()`` at the reparameterized ones. ``inner``'s parameters,
  gradients and updates have this form, and so has its per-parameter state (momentum, Adam
  moments: e.g. ``TraceState(trace=Factors(m=..., w=..., other=...))``).

  Whole trees, not a ``(m, w)`` node per leaf: containers that rebuild an optimizer state from
  its arrays (Flax NNX's ``nnx.Optimizer`` turns every pytree node nested *under* a parameter's
  position into an ``nnx.State``) keep the state's structure only when nothing extra sits below
  the parameters' own leaves.
  """
  m: Any
  w: Any
  other: Any


class SignInState(NamedTuple):
  """State of :func:`sign_in`.

  Attributes:
    count: number of updates taken (int32).
    m: like params; the factor ``m`` at reparameterized leaves, ``optax.MaskedNode()`` elsewhere.
    beta: like params; the scalar beta each reparameterized leaf is re-split with (float32),
      ``optax.MaskedNode()`` elsewhere.
    inner_state: state of ``inner``, initialised on the factor tree.
  """
  count: jax.Array
  m: PyTree
  beta: PyTree
  inner_state: optax.OptState


def split(theta: jax.Array, beta: Union[float, jax.Array] = 1.0):
  """Splits ``theta`` into factors ``(m, w)`` with ``m * w = theta`` and ``m**2 - w**2 = beta``.

  ``m = sqrt((beta + sqrt(beta**2 + 4 theta**2)) / 2) >= sqrt(beta)`` and ``w = theta / m``
  carries the sign. Finite for every finite theta (no intermediate overflows); low-precision
  inputs are computed in float32. For ``beta = 0`` and ``theta = 0`` the split is ``(0, 0)``.

  Args:
    theta: weights (any float dtype).
    beta: non-negative scalar or array broadcastable to ``theta``.

  Returns:
    ``(m, w)`` in ``theta``'s dtype.
  """
  theta = jnp.asarray(theta)
  m = _split_m(theta, beta)
  w = _div(_upcast(theta), m)
  return m.astype(theta.dtype), w.astype(theta.dtype)


def merge(m: jax.Array, w: jax.Array) -> jax.Array:
  """Inverse of :func:`split`: ``theta = m * w``."""
  return m * w


def _upcast(x):
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _split_m(theta, beta):
  """The factor m of split(theta, beta), in at least float32.

  ``m = sqrt(b + r)`` with ``b = beta / 2`` and ``r = sqrt(b**2 + theta**2)``, written with
  two square roots rather than ``hypot`` (dearer on CPU, and a split runs in every update's
  pass over m, see ``sign_in``). Where ``b**2 + theta**2`` would overflow, ``r`` becomes
  ``max(|theta|, b)`` (equal to float precision unless both are ~1e19); where ``theta**2``
  underflows, ``r >= |theta|`` keeps ``m * w = theta`` for tiny weights at ``beta = 0``.
  """
  t = _upcast(theta)
  b = jnp.asarray(beta, t.dtype) / 2
  r = jnp.sqrt(jnp.minimum(b * b + t * t, jnp.finfo(t.dtype).max))
  return jnp.sqrt(b + jnp.maximum(r, jnp.maximum(jnp.abs(t), b)))





def sign_in(
    inner: optax.GradientTransformation,
    *,
    beta: PerLeaf = 1.0,
    reset_every: Optional[int] = None,
    where: Optional[PerLeaf] = None,
    inner_state_at_reset: str = "keep",
) -> optax.GradientTransformationExtraArgs:
  """Sign-In: trains ``theta = m * w`` through ``inner`` and re-splits every ``reset_every`` steps.

  One update, for a reparameterized leaf with gradient ``g`` and current parameter ``theta``::

      w = theta / m
      (u_m, u_w) = inner((w g, m g); params=(m, w))
      m' = m + u_m,  w' = w + u_w
      update = m' w' - theta                        (what the caller adds to theta)
      m <- split(theta + update, beta).m  if this is a reset step, else m'

  ``inner`` sees all leaves at once as one :class:`Factors` tree (its parameters
  ``Factors(m, w, other)``, its gradients ``Factors(w g, m g, g_other)``), so global
  operations such as ``optax.clip_by_global_norm`` see every factor. A reset step is every
  ``reset_every``-th update (the update that makes ``count`` a multiple of ``reset_every``). The
  split is selected inside the same jitted computation (reset and ordinary steps share one
  compilation; no Python branching). It splits the theta that the caller's
  ``optax.apply_updates`` makes, ``theta + update``; if code outside the transform then changes
  some weights before the next update, those weights keep the product exact (``w = theta / m``)
  but their ``m**2 - w**2`` differs from beta until the next reset.

  Extra arguments of ``update`` (``optax.GradientTransformationExtraArgs``) reach ``inner``;
  the two that live in theta space are translated into factor space: ``grad`` (a gradient with
  respect to theta, as optax's line searches take it) becomes ``Factors(w g, m g, g_other)``
  and ``value_fn`` (a function of theta) becomes ``value_fn(merge(factors))``; ``value`` and
  everything else pass unchanged.

  Args:
    inner: the optimizer of the factors (any optax transformation, e.g.
      ``optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))``). A
      ``mask`` or ``param_labels`` given to a transformation inside ``inner``
      (``optax.masked``, ``optax.multi_transform``, ``add_decayed_weights``) is applied to the
      :class:`Factors` tree: pass a callable (it receives that tree) rather than a tree shaped
      like the params.
    beta: ``m**2 - w**2`` after a split; a non-negative float, a pytree (or prefix) of floats
      like params, or a callable ``(path, leaf) -> float`` evaluated once, at ``init``, on the
      initial parameters (so ``lambda path, p: jnp.mean(p**2)`` scales beta to each layer's
      initial weight scale). The paper uses ``beta = 1`` for every layer.
    reset_every: re-split the factors every this many updates (any positive integer, numpy
      integers included); ``None`` never re-splits.
    where: which leaves are reparameterized: a pytree (or prefix) of bools like params or a
      callable ``(path, leaf) -> bool``; only floating-point leaves are ever reparameterized.
      Default: floating-point leaves with ``ndim >= 2`` (conv and dense kernels).
    inner_state_at_reset: what happens to ``inner``'s per-factor state (the ``m`` and ``w``
      trees of every :class:`Factors` node in its state, e.g. momentum) at a reset. ``'keep'``
      (default): leave it, since a reset changes m and w little when beta has decayed little,
      and the momentum stays a valid direction; the state of the other leaves and scalar state
      (step counts, schedules) are never touched. ``'reinit'``: replace it by ``inner.init`` of
      the new factors (zero momentum). For Adam-like optimizers ``'reinit'`` zeroes the second
      moment while the step count (and its bias correction) keeps going, which makes the next
      steps large: keep ``'keep'`` there.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` requires ``params``.
  """
  if reset_every is not None:
    if isinstance(reset_every, (bool, np.bool_)) or not isinstance(
        reset_every, numbers.Integral) or reset_every < 1:
      raise ValueError(
          f"sign_in: reset_every must be a positive integer or None, got {reset_every!r}.")
    reset_every = int(reset_every)
  if inner_state_at_reset not in INNER_STATE_AT_RESET:
    raise ValueError(
        f"sign_in: inner_state_at_reset must be one of {INNER_STATE_AT_RESET}, "
        f"got {inner_state_at_reset!r}.")
  if isinstance(beta, numbers.Real) and not isinstance(beta, bool) and beta < 0:
    raise ValueError(f"sign_in: beta must be >= 0, got {beta!r}.")
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    leaves, treedef = _flatten(params)
    selected = _selected(where, params, leaves, treedef)
    betas = _per_leaf_beta(beta, params, leaves, treedef, selected)
    ms = [_split_m(p, b).astype(p.dtype) if s else None
          for p, b, s in zip(leaves, betas, selected)]
    return SignInState(
        count=jnp.zeros([], jnp.int32),
        m=_masked_tree(treedef, ms, selected),
        beta=_masked_tree(treedef, betas, selected),
        inner_state=inner.init(_factor_params(treedef, leaves, ms, selected)),
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(
          "sign_in: update() needs `params` (the current theta), e.g. "
          "tx.update(grads, opt_state, params).")
    thetas, treedef = _flatten(params)
    ms = treedef.flatten_up_to(state.m)
    selected = [not isinstance(m, optax.MaskedNode) for m in ms]

    count = optax.safe_int32_increment(state.count)
    is_reset_step = (count % reset_every == 0) if reset_every else jnp.zeros([], bool)
    betas = treedef.flatten_up_to(state.beta)

    factor_params = _factor_params(treedef, thetas, ms, selected)
    extra_args = _extra_args_to_factors(extra_args, treedef, thetas, ms, selected)
    factor_updates, inner_state = inner.update(
        _factor_grads(treedef, thetas, treedef.flatten_up_to(updates), ms, selected),
        state.inner_state, factor_params, **extra_args)
    u_ms, u_ws, u_others = (treedef.flatten_up_to(t) for t in factor_updates)

    theta_updates, ms_next, thetas_next = [], [], []
    for t, u_m, u_w, u_other, m, b, s in zip(thetas, u_ms, u_ws, u_others, ms, betas, selected):
      if not s:
        theta_updates.append(u_other)
        ms_next.append(optax.MaskedNode())
        thetas_next.append(t)
        continue
      # m' w' - theta with w = theta / m, expanded so that no cancellation occurs and a zero
      # inner update gives exactly zero: (m + u_m)(theta / m + u_w) - theta.
      theta_update = (_div(u_m * t, m) + (m * u_w + u_m * u_w)).astype(t.dtype)
      # On a reset step the next m is split from theta as the caller's optax.apply_updates
      # makes it. A select inside the pass that writes m', not a lax.cond: XLA on CPU runs a
      # conditional's many small fusions one after another, and a branch passing m' through
      # copies it; the split's two square roots cost less than either.
      theta_next = (t + theta_update).astype(t.dtype)
      m_next = jnp.where(is_reset_step, _split_m(theta_next, b), m + u_m)
      theta_updates.append(theta_update)
      ms_next.append(m_next.astype(m.dtype))
      thetas_next.append(theta_next)

    if reset_every is not None and inner_state_at_reset == "reinit":
      inner_state = _reinit_factor_state(
          is_reset_step, inner, inner_state,
          _factor_params(treedef, thetas_next, ms_next, selected))
    new_state = SignInState(
        count=count,
        m=treedef.unflatten(ms_next),
        beta=state.beta,
        inner_state=inner_state)
    return treedef.unflatten(theta_updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _reinit_factor_state(is_reset_step, inner, inner_state, factor_params):
  """On a reset step, the m and w trees of every Factors node of inner's state become those of
  a fresh ``inner.init``; ``other`` (the leaves that are not reparameterized) is kept.

  A select, which XLA fuses into the pass that writes the state (a fresh state of zeros,
  as momentum's, costs nothing).
  """
  fresh = inner.init(factor_params)
  is_factors = lambda x: isinstance(x, Factors)
  select = lambda old, new: jax.tree.map(
      lambda o, n: jnp.where(is_reset_step, n, o), old, new)

  def reinit(old, new):
    if not is_factors(old):
      return old
    return old._replace(m=select(old.m, new.m), w=select(old.w, new.w))

  return jax.tree.map(reinit, inner_state, fresh, is_leaf=is_factors)


def _div(x, m):
  # m == 0 only for beta == 0 and theta == 0; such a weight has w = 0 (and gradient m g = 0).
  return jnp.where(m == 0, jnp.zeros_like(x), x / m)


def find_signin_state(opt_state) -> Optional[SignInState]:
  """Returns the (first) :class:`SignInState` inside any optax state, or None."""
  found = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, SignInState))
  return next((x for x in found if isinstance(x, SignInState)), None)


def _require_signin_state(opt_state, caller: str) -> SignInState:
  state = opt_state if isinstance(opt_state, SignInState) else find_signin_state(opt_state)
  if state is None:
    raise ValueError(
        f"{caller}: the optimizer state contains no SignInState (got a "
        f"{type(opt_state).__name__}); pass the state of a sign_in(...) transformation or of "
        "any optax chain / wrapper around one.")
  return state


def factors(params, opt_state) -> Factors:
  """The factor tree ``inner`` optimizes: ``Factors(m, w, other)`` (see :class:`Factors`).

  ``opt_state`` is a :class:`SignInState` or any optax state that contains one (a chain, a
  mask wrapper, ...). Right after a reset step ``m**2 - w**2`` equals the configured beta.
  """
  state = _require_signin_state(opt_state, "factors")
  thetas, treedef = _flatten(params)
  ms = treedef.flatten_up_to(state.m)
  selected = [not isinstance(m, optax.MaskedNode) for m in ms]
  return _factor_params(treedef, thetas, ms, selected)


def merge_factors(factor_tree: Factors) -> PyTree:
  """Theta from a :class:`Factors` tree: ``m * w`` at reparameterized leaves, ``other``
  elsewhere. The inverse of :func:`factors`, and how a function of theta reads factors."""
  ms, treedef = jax.tree_util.tree_flatten(
      factor_tree.m, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  ws, others = treedef.flatten_up_to(factor_tree.w), treedef.flatten_up_to(factor_tree.other)
  return treedef.unflatten([
      o if isinstance(m, optax.MaskedNode) else merge(m, w).astype(m.dtype)
      for m, w, o in zip(ms, ws, others)])


def factor_betas(params, opt_state) -> PyTree:
  """Like params: elementwise ``m**2 - w**2`` (the current beta) at reparameterized leaves,
  ``optax.MaskedNode()`` elsewhere. Right after a reset it equals the configured beta.
  ``opt_state`` as in :func:`factors`."""
  f = factors(params, opt_state)
  ms, treedef = jax.tree_util.tree_flatten(
      f.m, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  return treedef.unflatten([
      m if isinstance(m, optax.MaskedNode) else _upcast(m) ** 2 - _upcast(w) ** 2
      for m, w in zip(ms, treedef.flatten_up_to(f.w))])


def schedule_free_eval_params(opt_state, params) -> PyTree:
  """Evaluation parameters (theta) of a schedule-free ``inner`` (``optax.contrib``).

  ``optax.contrib.schedule_free_eval_params(state, params)`` expects the schedule-free state
  itself and the parameters it optimizes; inside Sign-In those are the factors. This applies it
  in factor space, ``x = (y - (1 - b1) z) / b1`` for ``m`` and ``w`` alike, and returns
  ``theta_x = m_x * w_x`` (the other leaves: their own ``x``). ``opt_state`` is the state of
  ``sign_in(schedule_free_...)`` or of any wrapper around it.
  """
  state = _require_signin_state(opt_state, "schedule_free_eval_params")
  is_sf = lambda x: isinstance(x, optax.contrib.ScheduleFreeState)
  found = [x for x in jax.tree.leaves(state.inner_state, is_leaf=is_sf) if is_sf(x)]
  if not found:
    raise ValueError(
        "schedule_free_eval_params: the Sign-In inner optimizer has no schedule-free state; "
        "use optax.contrib.schedule_free_sgd / schedule_free_adamw / schedule_free as inner.")
  factor_x = optax.contrib.schedule_free_eval_params(found[0], factors(params, state))
  return merge_factors(factor_x)


# --- pytree plumbing -----------------------------------------------------------------------

def _flatten(params):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  return leaves, treedef


def _per_leaf(spec, params, treedef, name):
  """Broadcasts a per-leaf spec (value, pytree prefix, or callable(path, leaf)) to a flat list."""
  if callable(spec):
    with_path, _ = jax.tree_util.tree_flatten_with_path(params)
    return [spec(path, leaf) for path, leaf in with_path]
  if not _is_tree(spec):
    return [spec] * treedef.num_leaves
  try:
    full = jax.tree.map(lambda v, sub: jax.tree.map(lambda _: v, sub), spec, params)
    return treedef.flatten_up_to(full)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f"sign_in: `{name}` must be a scalar, a callable (path, leaf), or a pytree whose "
        f"structure is a prefix of the params' structure: {e}") from e


def _is_tree(x):
  return not (x is None or isinstance(x, (bool, int, float)) or
              (hasattr(x, "shape") and getattr(x, "ndim", 1) == 0))


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _selected(where, params, leaves, treedef):
  if where is None:
    return [jnp.ndim(p) >= 2 and _is_float(p) for p in leaves]
  flags = _per_leaf(where, params, treedef, "where")
  for f in flags:
    if not isinstance(f, (bool, jnp.bool_)) and not (hasattr(f, "dtype") and f.dtype == bool):
      raise ValueError(f"sign_in: `where` must give python bools per leaf, got {f!r}.")
  return [bool(f) and _is_float(p) for f, p in zip(flags, leaves)]


def _per_leaf_beta(beta, params, leaves, treedef, selected):
  values = _per_leaf(beta, params, treedef, "beta")
  betas = []
  for b, s in zip(values, selected):
    if not s:
      betas.append(None)
      continue
    if not isinstance(b, jax.core.Tracer) and np.any(np.asarray(b) < 0):
      raise ValueError(f"sign_in: beta must be >= 0 for every leaf, got {b!r}.")
    betas.append(jnp.asarray(b, jnp.float32))
  return betas


def _masked_tree(treedef, values, selected):
  return treedef.unflatten([v if s else optax.MaskedNode() for v, s in zip(values, selected)])


def _factor_params(treedef, thetas, ms, selected) -> Factors:
  masked = optax.MaskedNode()
  return Factors(
      m=treedef.unflatten([m if s else masked for m, s in zip(ms, selected)]),
      w=treedef.unflatten([_div(t, m) if s else masked for t, m, s in zip(thetas, ms, selected)]),
      other=treedef.unflatten([masked if s else t for t, s in zip(thetas, selected)]))


def _factor_grads(treedef, thetas, grads, ms, selected) -> Factors:
  # Each use of w = theta / m is its own division, on purpose: XLA does not duplicate a
  # division into several consumers, so a shared w would be written to memory and read back;
  # separate divisions fuse into their consumers (one pass over memory per output).
  masked = optax.MaskedNode()
  return Factors(
      m=treedef.unflatten([_div(t * g, m) if s else masked
                           for t, g, m, s in zip(thetas, grads, ms, selected)]),
      w=treedef.unflatten([m * g if s else masked for g, m, s in zip(grads, ms, selected)]),
      other=treedef.unflatten([masked if s else g for g, s in zip(grads, selected)]))


def _extra_args_to_factors(extra_args, treedef, thetas, ms, selected):
  """``grad`` and ``value_fn`` (optax's line-search arguments, in theta space) in factor space."""
  extra_args = dict(extra_args)
  if extra_args.get("grad") is not None:
    extra_args["grad"] = _factor_grads(
        treedef, thetas, treedef.flatten_up_to(extra_args["grad"]), ms, selected)
  if extra_args.get("value_fn") is not None:
    value_fn = extra_args["value_fn"]
    extra_args["value_fn"] = lambda factor_tree, *args, **kwargs: value_fn(
        merge_factors(factor_tree), *args, **kwargs)
  return extra_args
