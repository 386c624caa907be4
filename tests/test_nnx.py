"""Sign-In in other people's code: Flax NNX's optimizer loop and optax's less common optimizers.

The NNX tests run the loop Flax's documentation teaches (``nnx.Optimizer`` and, while it exists,
``nnx.ModelAndOptimizer``, under ``nnx.jit``) and compare it with the same transformation on a
plain dict of the same weights, trained by a hand-written forward pass and ``jax.jit``. That dict
path is checked against an explicit ``m * w`` model in tests/test_signin.py, so agreement here
carries the exactness over to NNX.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from signin_jax import masks as masks_lib
from signin_jax import signin
from signin_jax import sign_in

STEPS = 32
RESET_EVERY = 4


class MLP(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(6, 16, rngs=rngs)
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def mlp_apply(p, x):
  """MLP's forward pass on a plain dict, written independently of NNX."""
  h = jax.nn.relu(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
  return h @ p["out"]["kernel"] + p["out"]["bias"]


def data():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
  return x, y


INNERS = {
    "sgd_momentum": lambda: optax.chain(optax.add_decayed_weights(1e-3),
                                        optax.sgd(0.05, momentum=0.9)),
    "adam": lambda: optax.adam(1e-2),
}


def make_tx(inner, mask):
  tx = sign_in(INNERS[inner](), reset_every=RESET_EVERY)
  return tx if mask is None else masks_lib.with_static_mask(tx, mask)


def train_dict(params, inner, mask):
  tx = make_tx(inner, mask)
  x, y = data()
  loss = lambda p: jnp.mean((mlp_apply(p, x) - y) ** 2)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(STEPS):
    params, state = step(params, state)
  return params


def nnx_model_and_mask(masked):
  model = MLP(nnx.Rngs(0))
  if not masked:
    return model, None
  params = nnx.state(model, nnx.Param)
  mask = masks_lib.create_masks(jax.random.PRNGKey(1), params, sparsity=0.6,
                                method="random", distribution="uniform")
  nnx.update(model, masks_lib.apply_mask(params, mask))
  return model, mask


def assert_matches_dict_path(model, params0, inner, mask):
  want = train_dict(params0, inner, None if mask is None else nnx.to_pure_dict(mask))
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
  # The run moved the weights (the comparison is not between two untrained models) ...
  moved = [float(jnp.max(jnp.abs(g - p))) for g, p in
           zip(jax.tree.leaves(got), jax.tree.leaves(params0))]
  assert max(moved) > 1e-2, moved
  if mask is not None:  # ... and masked weights are exactly zero.
    for g, m in zip(jax.tree.leaves(got), jax.tree.leaves(nnx.to_pure_dict(mask))):
      assert np.all(np.asarray(g)[~np.asarray(m, bool)] == 0.0)


@pytest.mark.parametrize("inner", sorted(INNERS))
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "with_static_mask"])
def test_nnx_optimizer_loop_matches_dict_path(inner, masked):
  model, mask = nnx_model_and_mask(masked)
  params0 = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  optimizer = nnx.Optimizer(model, make_tx(inner, mask), wrt=nnx.Param)
  x, y = data()

  @nnx.jit
  def train_step(model, optimizer, x, y):
    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer, x, y)) for _ in range(STEPS)]
  assert losses[-1] < losses[0]
  assert int(signin.find_signin_state(nnx.as_pure(optimizer.opt_state)).count) == STEPS
  assert_matches_dict_path(model, params0, inner, mask)


@pytest.mark.parametrize("inner", sorted(INNERS))
def test_nnx_model_and_optimizer_matches_dict_path(inner):
  if not hasattr(nnx, "ModelAndOptimizer"):
    pytest.skip("this flax has no nnx.ModelAndOptimizer")
  model, mask = nnx_model_and_mask(masked=True)
  params0 = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    optimizer = nnx.ModelAndOptimizer(model, make_tx(inner, mask))
  x, y = data()

  @nnx.jit
  def train_step(optimizer, x, y):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(optimizer.model)
    optimizer.update(grads)

  for _ in range(STEPS):
    train_step(optimizer, x, y)
  assert_matches_dict_path(model, params0, inner, mask)


def test_issue_snippet_runs_as_written():
  """The loop from the bug report (it raised on its second step), 30 steps, eagerly."""
  model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, sign_in(optax.sgd(0.1, momentum=0.9), reset_every=5),
                      wrt=nnx.Param)
  loss = lambda m: jnp.mean((m(jnp.ones((2, 4))) - 1.0) ** 2)
  first = float(loss(model))
  for _ in range(30):
    opt.update(model, nnx.grad(loss)(model))
  assert float(loss(model)) < 0.1 * first  # it trains (the NNX comparisons above check how)
  assert int(opt.step[...]) == int(signin.find_signin_state(nnx.as_pure(opt.opt_state)).count) == 30


# --- optax optimizers that need more than gradients ----------------------------------------

def _quadratic():
  rng = np.random.default_rng(3)
  params = {"w": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
  loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
  return params, loss


def _explicit_factors(params):
  """The reference model: explicit (m, w) for the kernel, theta for the bias."""
  m, w = signin.split(params["w"], 1.0)
  return {"w": {"m": m, "w": w}, "b": params["b"]}


def _explicit_theta(ref):
  return {"w": ref["w"]["m"] * ref["w"]["w"], "b": ref["b"]}


def test_lbfgs_with_line_search_matches_explicit_factor_model():
  params, loss = _quadratic()
  tx = sign_in(optax.lbfgs())
  state = tx.init(params)
  ref_tx = optax.lbfgs()
  ref = _explicit_factors(params)
  ref_loss = lambda r: loss(_explicit_theta(r))
  ref_state = ref_tx.init(ref)
  step = jax.jit(lambda p, s: _lbfgs_step(tx, loss, p, s))
  ref_step = jax.jit(lambda p, s: _lbfgs_step(ref_tx, ref_loss, p, s))
  for _ in range(15):
    params, state = step(params, state)
    ref, ref_state = ref_step(ref, ref_state)
  want = _explicit_theta(ref)
  for k in params:
    np.testing.assert_allclose(params[k], want[k], rtol=1e-4, atol=1e-5)
  first, _ = _quadratic()
  assert float(loss(params)) < 0.5 * float(loss(first))


def _lbfgs_step(tx, loss, params, state):
  # The idiom of optax's L-BFGS docs, with the value and gradient computed at params (in theta
  # space: sign_in translates `grad` and `value_fn` for its inner optimizer).
  value, grad = jax.value_and_grad(loss)(params)
  updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=loss)
  return optax.apply_updates(params, updates), state


def test_schedule_free_eval_params_in_theta_space():
  params, loss = _quadratic()
  make = lambda: optax.contrib.schedule_free_sgd(0.1, warmup_steps=3)
  tx = sign_in(make())
  state = tx.init(params)
  ref_tx = make()
  ref = _explicit_factors(params)
  ref_state = ref_tx.init(ref)
  for _ in range(20):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
    ref_grads = jax.grad(lambda r: loss(_explicit_theta(r)))(ref)
    ref_updates, ref_state = ref_tx.update(ref_grads, ref_state, ref)
    ref = optax.apply_updates(ref, ref_updates)
  got = signin.schedule_free_eval_params((optax.EmptyState(), state), params)  # in a chain too
  want = _explicit_theta(optax.contrib.schedule_free_eval_params(ref_state, ref))
  for k in params:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
  # The evaluation point is not the training point (y): the helper did something.
  assert float(jnp.max(jnp.abs(got["w"] - params["w"]))) > 1e-3
  with pytest.raises(ValueError, match="schedule-free"):
    signin.schedule_free_eval_params(sign_in(optax.sgd(0.1)).init(params), params)


def test_multisteps_counts_real_updates_outside_and_micro_steps_inside():
  params, loss = _quadratic()
  outside = optax.MultiSteps(sign_in(optax.sgd(0.1), reset_every=2), every_k_schedule=3)
  inside = sign_in(optax.MultiSteps(optax.sgd(0.1), every_k_schedule=3), reset_every=2)
  for tx, want_count in ((outside, 2), (inside, 6)):
    state, p = tx.init(params), params
    for _ in range(6):
      updates, state = tx.update(jax.grad(loss)(p), state, p)
      p = optax.apply_updates(p, updates)
    assert int(signin.find_signin_state(state).count) == want_count


# --- small API fixes -------------------------------------------------------------------------

def test_reset_every_accepts_numpy_integers():
  params, loss = _quadratic()
  runs = []
  for reset_every in (3, np.int64(3), np.int32(3)):
    tx = sign_in(optax.sgd(0.1, momentum=0.9), reset_every=reset_every)
    state, p = tx.init(params), params
    for _ in range(4):
      updates, state = tx.update(jax.grad(loss)(p), state, p)
      p = optax.apply_updates(p, updates)
    runs.append(p)
  for p in runs[1:]:
    np.testing.assert_array_equal(p["w"], runs[0]["w"])
  with pytest.raises(ValueError, match="reset_every"):
    sign_in(optax.sgd(0.1), reset_every=np.float64(3.0))
  with pytest.raises(ValueError, match="reset_every"):
    sign_in(optax.sgd(0.1), reset_every=np.int64(0))


def test_factors_accepts_any_state_that_contains_sign_in():
  params, loss = _quadratic()
  tx = optax.chain(optax.clip_by_global_norm(1.0), sign_in(optax.sgd(0.1), reset_every=2))
  state = tx.init(params)
  f = signin.factors(params, state)
  np.testing.assert_allclose(f.m["w"] * f.w["w"], params["w"], rtol=1e-6)
  assert isinstance(f.m["b"], optax.MaskedNode)
  np.testing.assert_array_equal(f.other["b"], params["b"])
  betas = signin.factor_betas(params, state)
  np.testing.assert_allclose(betas["w"], 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="no SignInState"):
    signin.factors(params, optax.sgd(0.1).init(params))


def test_default_where_skips_integer_leaves():
  params = {"kernel": jnp.ones((3, 2)), "index": jnp.zeros((3, 2), jnp.int32)}
  state = sign_in(optax.sgd(0.1)).init(params)
  assert isinstance(state.m["index"], optax.MaskedNode)
  assert state.m["kernel"].dtype == jnp.float32
