"""Tests of the Sign-In transformation (signin_jax.signin).

The central test trains small Flax models twice: once with ``sign_in`` on the ordinary
parameters, once written with explicit ``m`` and ``w`` parameters (kernel = mask * m * w) whose
gradients come from autodiff and whose resets use the textbook split formula. The two
trajectories must agree step for step.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest


from signin_jax import masks as masks_lib
from signin_jax import signin

BETA = 1.0


# --- an independent reference ------------------------------------------------------------

def reference_split(theta, beta):
  """The split as written in the method notes, in float64 numpy (w = 0 where m = 0)."""
  theta = np.asarray(theta, np.float64)
  r = np.sqrt(beta ** 2 + 4 * theta ** 2)
  m = np.sqrt((beta + r) / 2)
  return m, np.divide(theta, m, out=np.zeros_like(theta), where=m > 0)


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x, train=True):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(10)(x)


class SmallCNN(nn.Module):
  # No conv biases before BatchNorm: their gradient is zero up to rounding, which Adam would
  # blow up to +-lr differently in the two computations.

  @nn.compact
  def __call__(self, x, train=True):
    x = nn.Conv(8, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.Conv(16, (3, 3), strides=(2, 2), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(10)(x)


INNERS = {
    "sgd": lambda: optax.sgd(0.05),
    "sgd_momentum_wd": lambda: optax.chain(
        optax.add_decayed_weights(5e-3), optax.sgd(0.05, momentum=0.9)),
    "adam": lambda: optax.adam(3e-3),
}


def _data(model_name):
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 8, 8, 3))
  y = jax.random.randint(jax.random.PRNGKey(2), (16,), 0, 10)
  return x, y


def _loss(model, params, batch_stats, x, y):
  variables = {"params": params}
  if batch_stats is not None:
    variables["batch_stats"] = batch_stats
    logits, new = model.apply(variables, x, mutable=["batch_stats"])
    batch_stats = new["batch_stats"]
  else:
    logits = model.apply(variables, x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, batch_stats


def _rel_err(a, b):
  a, b = jax.tree.leaves(a), jax.tree.leaves(b)
  f64 = lambda v: np.asarray(v, np.float64)
  num = sum(float(np.sum((f64(x) - f64(y)) ** 2)) for x, y in zip(a, b))
  den = sum(float(np.sum(f64(y) ** 2)) for y in b)
  return np.sqrt(num / den)


@pytest.mark.parametrize("model_cls", [MLP, SmallCNN])
@pytest.mark.parametrize("inner_name", list(INNERS))
def test_matches_explicit_factor_model(model_cls, inner_name):
  """Sign-In on theta == the model written with explicit (m, w), over 60 steps, 7 resets."""

  steps, reset_every = 60, 8
  model = model_cls()
  x, y = _data(model_cls.__name__)
  variables = model.init(jax.random.PRNGKey(0), x)
  params0, stats0 = variables["params"], variables.get("batch_stats")
  mask = masks_lib.create_masks(jax.random.PRNGKey(3), params0, 0.7, method="random",
                                distribution="uniform")
  params0 = masks_lib.apply_mask(params0, mask)
  is_kernel = lambda p: p.ndim >= 2

  # Ours: ordinary parameters, Sign-In inside a static-mask wrapper.
  tx = masks_lib.with_static_mask(
      signin.sign_in(INNERS[inner_name](), beta=BETA, reset_every=reset_every), mask)

  @jax.jit
  def our_step(params, stats, opt_state):
    (loss, stats), g = jax.value_and_grad(
        functools.partial(_loss, model), has_aux=True)(params, stats, x, y)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  # Reference: explicit factors, kernel = mask * m * w, autodiff gradients, textbook split.
  def to_theta(ref):
    return jax.tree.map(lambda r, mk: mk * r["m"] * r["w"] if isinstance(r, dict) else r,
                        ref, mask, is_leaf=lambda r: isinstance(r, dict) and "m" in r)

  def split_all(theta):
    def one(t):
      if not is_kernel(t):
        return t
      m, w = reference_split(t, BETA)
      return {"m": jnp.asarray(m, jnp.float32), "w": jnp.asarray(w, jnp.float32)}
    return jax.tree.map(one, theta)

  ref_tx = INNERS[inner_name]()

  @jax.jit
  def ref_step(ref, stats, opt_state):
    loss_fn = lambda r: _loss(model, to_theta(r), stats, x, y)
    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(ref)
    updates, opt_state = ref_tx.update(g, opt_state, ref)
    return optax.apply_updates(ref, updates), stats, opt_state

  params, stats, opt_state = params0, stats0, tx.init(params0)
  ref, ref_stats = split_all(params0), stats0
  ref_opt_state = ref_tx.init(ref)
  worst = 0.0
  for step in range(1, steps + 1):
    params, stats, opt_state = our_step(params, stats, opt_state)
    ref, ref_stats, ref_opt_state = ref_step(ref, ref_stats, ref_opt_state)
    if step % reset_every == 0:
      # The reference re-splits; momentum/Adam state is kept, as sign_in's default does.
      ref = split_all(to_theta(ref))
    worst = max(worst, _rel_err(params, to_theta(ref)))
    if stats is not None:
      worst = max(worst, _rel_err(stats, ref_stats))
  assert worst < 1e-5, worst
  # The factor m itself matches too (after the last reset plus a few steps).
  ours = signin.factors(params, opt_state)  # any state that contains a SignInState
  treedef = jax.tree.structure(params)
  for m, r in zip(treedef.flatten_up_to(ours.m), treedef.flatten_up_to(ref)):
    if not isinstance(m, optax.MaskedNode):
      np.testing.assert_allclose(m, r["m"], rtol=1e-5, atol=1e-6)
  # Training moved the weights, and signs did flip somewhere (otherwise the test is weak).
  assert _rel_err(params, params0) > 1e-2


# --- split ---------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 4.0])
def test_split_matches_formula_and_inverts(beta):
  theta = jnp.asarray(np.random.default_rng(0).normal(size=1000) * 3, jnp.float32)
  theta = theta.at[:3].set(jnp.array([0.0, 1e-30, -2.0]))
  m, w = jax.jit(signin.split)(theta, beta)
  m_ref, w_ref = reference_split(theta, beta)
  np.testing.assert_allclose(m, m_ref, rtol=2e-6, atol=1e-30)
  np.testing.assert_allclose(w, w_ref, rtol=2e-6, atol=1e-30)
  np.testing.assert_allclose(signin.merge(m, w), theta, rtol=3e-7, atol=1e-30)
  np.testing.assert_allclose(m ** 2 - w ** 2, beta, atol=2e-6 * max(1.0, float(jnp.max(m ** 2))))
  assert bool(jnp.all(m >= np.sqrt(beta) * (1 - 1e-7)))
  assert bool(jnp.all(jnp.sign(w) == jnp.sign(theta)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_split_is_finite_at_zero_and_at_huge_theta(dtype):
  big = float(jnp.finfo(dtype).max)
  theta = jnp.array([0.0, -0.0, 1e-38, big, -big, big / 3], dtype)
  for beta in (0.0, 1.0, 1e30):  # 1e30: beta**2 overflows float32
    m, w = signin.split(theta, beta)
    assert m.dtype == dtype and w.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(m)) and jnp.all(jnp.isfinite(w)))
    np.testing.assert_allclose(jnp.asarray(m * w, jnp.float32)[3:],
                               jnp.asarray(theta, jnp.float32)[3:], rtol=2e-2)
    np.testing.assert_allclose(float(m[0]) ** 2, beta, rtol=2e-2)  # theta = 0
  m, w = signin.split(jnp.zeros(3, dtype), 0.0)
  assert bool(jnp.all(m == 0) and jnp.all(w == 0))


# --- the transformation on small trees -----------------------------------------------------

def _tree(key=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(key), 3)
  return {"conv": {"kernel": jax.random.normal(k1, (3, 3, 2, 4)) * 0.5, "bias": jnp.zeros(4)},
          "dense": {"kernel": jax.random.normal(k2, (4, 5)) * 0.5,
                    "bias": jax.random.normal(k3, (5,))}}


def _quadratic_grads(params, target):
  return jax.grad(lambda p: sum(jnp.sum((a - b) ** 2) for a, b in
                                zip(jax.tree.leaves(p), jax.tree.leaves(target))))(params)


def _run(tx, params, steps, jit=True, target=None):
  target = _tree(7) if target is None else target
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  for _ in range(steps):
    updates, state = update(_quadratic_grads(params, target), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_reset_keeps_theta_and_restores_beta():
  params = _tree()
  beta = 0.7
  tx = signin.sign_in(optax.chain(optax.add_decayed_weights(0.05), optax.sgd(0.1, momentum=0.9)),
                      beta=beta, reset_every=5)
  before, state = _run(tx, params, 4)  # 4 updates: no reset yet, beta has decayed
  betas = signin.factor_betas(before, state)
  assert float(jnp.max(jnp.abs(betas["dense"]["kernel"] - beta))) > 1e-3
  after, state = _run(tx, params, 5)  # the 5th update is a reset step
  betas = signin.factor_betas(after, state)
  for b in (betas["conv"]["kernel"], betas["dense"]["kernel"]):
    np.testing.assert_allclose(b, beta, atol=1e-5)
  # theta is what the 5th update made it: a reset does not change the network function.
  f = signin.factors(after, state)
  np.testing.assert_allclose(f.m["dense"]["kernel"] * f.w["dense"]["kernel"],
                             after["dense"]["kernel"], rtol=1e-6)


def test_beta_decays_as_predicted_between_resets():
  """With weight decay lambda and plain SGD, m'^2 - w'^2 = beta ((1 - lr lambda)^2 - lr^2 g^2)
  exactly, and beta(t) ~ beta0 exp(-2 lambda t) with t = lr * steps (the method notes' ODE)."""
  lr, lam, beta0 = 0.005, 1.0, 1.0
  params = _tree()
  tx = signin.sign_in(optax.chain(optax.add_decayed_weights(lam), optax.sgd(lr)), beta=beta0)
  state = tx.init(params)
  target = _tree(7)
  update = jax.jit(tx.update)
  b_prev = signin.factor_betas(params, state)["dense"]["kernel"]
  for step in range(1, 201):
    g = _quadratic_grads(params, target)
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    b = signin.factor_betas(params, state)["dense"]["kernel"]
    expected = b_prev * ((1 - lr * lam) ** 2 - lr ** 2 * g["dense"]["kernel"] ** 2)
    np.testing.assert_allclose(b, expected, rtol=2e-4)
    b_prev = b
  # The ODE's prediction holds up to the O(lr) discretisation terms.
  np.testing.assert_allclose(jnp.mean(b), beta0 * np.exp(-2 * lam * lr * 200), rtol=2e-2)


def test_unselected_leaves_get_plain_inner_updates():
  params = _tree()
  inner = optax.sgd(0.1, momentum=0.9)
  ours, _ = _run(signin.sign_in(inner, reset_every=3), params, 7)
  plain, _ = _run(inner, params, 7)
  for name in ("conv", "dense"):
    np.testing.assert_array_equal(ours[name]["bias"], plain[name]["bias"])
    assert not np.allclose(ours[name]["kernel"], plain[name]["kernel"])


@pytest.mark.parametrize("where", [
    {"conv": True, "dense": {"kernel": False, "bias": False}},
    lambda path, leaf: "conv" in jax.tree_util.keystr(path) and leaf.ndim >= 2,
])
def test_where_selects_leaves(where):
  params = _tree()
  tx = signin.sign_in(optax.sgd(0.1), where=where)
  state = tx.init(params)
  assert isinstance(state.m["dense"]["kernel"], optax.MaskedNode)
  assert state.m["conv"]["kernel"].shape == (3, 3, 2, 4)
  ours, _ = _run(tx, params, 3)
  plain, _ = _run(optax.sgd(0.1), params, 3)
  np.testing.assert_array_equal(ours["dense"]["kernel"], plain["dense"]["kernel"])


def test_per_leaf_beta_pytree_and_callable():
  params = _tree()
  per_leaf = {"conv": {"kernel": 2.0, "bias": 0.0}, "dense": {"kernel": 0.25, "bias": 0.0}}
  scaled = lambda path, p: 3.0 * jnp.mean(p ** 2)
  for beta, want in ((per_leaf, {"conv": 2.0, "dense": 0.25}),
                     (scaled, {k: 3.0 * float(jnp.mean(params[k]["kernel"] ** 2))
                               for k in ("conv", "dense")})):
    tx = signin.sign_in(optax.sgd(0.05, momentum=0.9), beta=beta, reset_every=4)
    after, state = _run(tx, params, 8)
    betas = signin.factor_betas(after, state)
    for k, v in want.items():
      np.testing.assert_allclose(betas[k]["kernel"], v, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("steps_before", [2, 3])  # right after a reset step, and after not
def test_external_change_of_theta_is_respected(steps_before):
  """A weight zeroed between steps (by a pruner, say) is the new theta: with zero gradient and
  no momentum it stays exactly zero; nothing stale brings the old value back."""
  params = _tree()
  tx = signin.sign_in(optax.sgd(0.1), reset_every=2)
  params, state = _run(tx, params, steps_before)
  params["dense"]["kernel"] = params["dense"]["kernel"].at[0, :].set(0.0)
  g = _quadratic_grads(params, _tree(7))
  g["dense"]["kernel"] = g["dense"]["kernel"].at[0, :].set(0.0)
  updates, state = jax.jit(tx.update)(g, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["dense"]["kernel"][0], 0.0)
  assert not np.allclose(new["dense"]["kernel"][1:], params["dense"]["kernel"][1:])


def test_inner_state_at_reset_reinit_zeroes_factor_momentum_only():
  params = _tree()
  tx = signin.sign_in(optax.sgd(0.1, momentum=0.9), reset_every=3, inner_state_at_reset="reinit")
  keep = signin.sign_in(optax.sgd(0.1, momentum=0.9), reset_every=3)
  p1, s1 = _run(tx, params, 3)
  p2, s2 = _run(keep, params, 3)
  # The reset step's theta does not depend on the choice (equal up to XLA's fusion rounding).
  np.testing.assert_allclose(p1["dense"]["kernel"], p2["dense"]["kernel"], rtol=1e-6)
  # The 3rd update is a reset step: 'reinit' leaves zero momentum for the factors only.
  trace = s1.inner_state[0].trace
  np.testing.assert_array_equal(trace.m["dense"]["kernel"], 0.0)
  np.testing.assert_array_equal(trace.w["dense"]["kernel"], 0.0)
  np.testing.assert_allclose(trace.other["dense"]["bias"],
                             s2.inner_state[0].trace.other["dense"]["bias"], rtol=1e-6)
  assert float(jnp.abs(trace.other["dense"]["bias"]).sum()) > 0  # not a factor: momentum kept
  assert float(jnp.abs(s2.inner_state[0].trace.m["dense"]["kernel"]).sum()) > 0
  # The next update starts from zero momentum: with zero gradients (and no weight decay)
  # nothing moves under 'reinit', while 'keep' still moves along its momentum.
  zeros = jax.tree.map(jnp.zeros_like, p1)
  u1, _ = jax.jit(tx.update)(zeros, s1, p1)
  u2, _ = jax.jit(keep.update)(zeros, s2, p2)
  np.testing.assert_array_equal(u1["dense"]["kernel"], 0.0)
  assert float(jnp.abs(u2["dense"]["kernel"]).sum()) > 0


def test_one_compilation_across_reset_and_ordinary_steps():
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(event) if (
      event == "/jax/core/compile/backend_compile_duration") else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    params = _tree()
    tx = signin.sign_in(optax.sgd(0.1, momentum=0.9), reset_every=3)
    update = jax.jit(tx.update)
    state = tx.init(params)
    grads = _quadratic_grads(params, _tree(7))
    jax.block_until_ready(update(grads, state, params))
    before = len(compiles)
    for _ in range(10):  # three reset steps among them
      updates, state = update(grads, state, params)
      params = optax.apply_updates(params, updates)
    jax.block_until_ready(params)
    assert len(compiles) == before
    assert update._cache_size() == 1
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_works_inside_chain_and_with_inject_hyperparams():
  params = _tree()
  inner = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
  tx = optax.chain(optax.clip_by_global_norm(1.0), signin.sign_in(inner, reset_every=2))
  state = tx.init(params)
  update = jax.jit(tx.update)
  grads = _quadratic_grads(params, _tree(7))
  _, state = update(grads, state, params)
  sis = signin.find_signin_state(state)
  assert isinstance(sis, signin.SignInState)
  # Setting the injected learning rate to zero freezes theta (the factors do not move).
  sis.inner_state.hyperparams["learning_rate"] = jnp.zeros([])
  sis2 = sis._replace(inner_state=sis.inner_state._replace(
      inner_state=(optax.TraceState(trace=jax.tree.map(jnp.zeros_like,
                                                       sis.inner_state.inner_state[0].trace)),)
      + tuple(sis.inner_state.inner_state[1:])))
  frozen_state = (state[0], sis2)
  updates, _ = update(grads, frozen_state, params)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, 0.0)


def test_flax_nnx_state():
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(4, 8, rngs=rngs)
      self.l2 = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.l1(x)))

  model = Net(nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = signin.sign_in(optax.sgd(0.1, momentum=0.9), reset_every=2)
  state = tx.init(params)
  x = jnp.ones((3, 4))

  @jax.jit
  def step(params, state):
    loss = lambda p: jnp.mean((nnx.merge(graphdef, p)(x) - 1.0) ** 2)
    g = jax.grad(loss)(params)
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state, loss(params)

  losses = []
  for _ in range(6):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert losses[-1] < losses[0]
  f = signin.factors(params, state)
  kernel = params["l1"]["kernel"].get_value()
  np.testing.assert_allclose(f.m["l1"]["kernel"].get_value() * f.w["l1"]["kernel"].get_value(),
                             kernel, rtol=1e-5)


def test_bfloat16_params():
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _tree())
  params["dense"]["kernel"] = params["dense"]["kernel"].at[0, 0].set(0.0)
  tx = signin.sign_in(optax.sgd(0.05, momentum=0.9), reset_every=2)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: p.astype(jnp.float32), _quadratic_grads(params, _tree(7)))
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
  for _ in range(5):
    updates, state = jax.jit(tx.update)(grads, state, params)
    chex.assert_trees_all_equal_dtypes(updates, params)
    params = optax.apply_updates(params, updates)
  for leaf in jax.tree.leaves((params, state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert bool(jnp.all(jnp.isfinite(leaf)))


def test_errors():
  params = _tree()
  tx = signin.sign_in(optax.sgd(0.1))
  state = tx.init(params)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, state)
  with pytest.raises(ValueError, match="reset_every"):
    signin.sign_in(optax.sgd(0.1), reset_every=0)
  with pytest.raises(ValueError, match="reset_every"):
    signin.sign_in(optax.sgd(0.1), reset_every=2.5)
  with pytest.raises(ValueError, match="inner_state_at_reset"):
    signin.sign_in(optax.sgd(0.1), inner_state_at_reset="zero")
  with pytest.raises(ValueError, match="beta"):
    signin.sign_in(optax.sgd(0.1), beta=-1.0)
  with pytest.raises(ValueError, match="beta"):
    signin.sign_in(optax.sgd(0.1), beta={"conv": -1.0, "dense": 1.0}).init(params)
