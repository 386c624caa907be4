"""First tests of signin_jax.sparsity (masks that change during training; issue 10 in progress)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from signin_jax import masks as masks_lib
from signin_jax import sign_in, sparsity

KEY = jax.random.PRNGKey(0)


def _params():
  return {"a": {"kernel": jax.random.normal(KEY, (20, 10)), "bias": jnp.zeros(10)},
          "b": {"kernel": jax.random.normal(jax.random.PRNGKey(1), (10, 5))}}


def _schedules(params):
  return {
      "static": (sparsity.static(), masks_lib.create_masks(KEY, params, 0.8,
                                                           distribution="uniform")),
      "gmp": (sparsity.gmp(params, sparsity=0.8, start_step=2, end_step=20, update_every=5,
                           distribution="uniform"), sparsity.dense_masks(params)),
      "acdc": (sparsity.acdc(params, sparsity=0.8, num_steps=30, warmup_steps=5, phase_steps=4,
                             final_sparse_steps=6, distribution="uniform"),
               sparsity.dense_masks(params)),
      "rigl": (sparsity.rigl(params, sparsity=0.8, end_step=22, update_every=5,
                             distribution="uniform"),
               masks_lib.create_masks(KEY, params, 0.8, distribution="uniform")),
      "set": (sparsity.set_evolution(params, sparsity=0.8, end_step=22, update_every=5,
                                     distribution="uniform"),
              masks_lib.create_masks(KEY, params, 0.8, distribution="uniform")),
  }


@pytest.mark.parametrize("name", ["static", "gmp", "acdc", "rigl", "set"])
def test_counts_follow_the_schedule_and_masked_weights_stay_zero(name):
  params = _params()
  schedule, m0 = _schedules(params)[name]
  tx = sparsity.sparse_training(sign_in(optax.sgd(0.05, momentum=0.9), reset_every=3),
                                schedule, m0, key=KEY)
  p = masks_lib.apply_mask(params, m0)
  state = tx.init(p)
  update = jax.jit(tx.update)
  counts = [int(m.sum()) for m in (m0["a"]["kernel"], m0["b"]["kernel"])]
  for t in range(1, 31):
    g = jax.tree.map(lambda x: x + 0.1 * jnp.sin(jnp.arange(x.size).reshape(x.shape) + t), p)
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
    if t in schedule.update_steps:
      counts = schedule.target_counts[schedule.update_steps.index(t)].tolist()
    got = [int(state.masks["a"]["kernel"].sum()), int(state.masks["b"]["kernel"].sum())]
    assert got == counts, (t, got, counts)
    for m, x in zip(jax.tree.leaves(state.masks), jax.tree.leaves(p)):
      assert bool(jnp.all(jnp.where(m, True, x == 0.0)))
  assert update._cache_size() == 1  # one compilation for the whole run


def test_rigl_update_drops_smallest_and_grows_largest_gradient():
  params = {"w": jax.random.normal(KEY, (8, 6))}
  m0 = masks_lib.create_masks(KEY, params, 0.5, distribution="uniform")
  schedule = sparsity.rigl(params, sparsity=0.5, end_step=10, update_every=1,
                           drop_fraction=0.5, drop_fraction_anneal="constant",
                           distribution="uniform")
  theta = masks_lib.apply_mask(params, m0)
  grads = {"w": jax.random.normal(jax.random.PRNGKey(5), (8, 6))}
  new = schedule.new_masks(0, 1, m0, theta, grads, KEY)["w"]
  # numpy reference: keep the 12 largest |theta| of the 24 active, then add the 12 largest |g|
  # among the rest.
  mask, t, g = np.asarray(m0["w"]), np.asarray(theta["w"]).ravel(), np.asarray(grads["w"]).ravel()
  active = np.flatnonzero(mask.ravel())
  kept = active[np.argsort(-np.abs(t[active]), kind="stable")[:12]]
  others = np.setdiff1d(np.arange(t.size), kept)
  grown = others[np.argsort(-np.abs(g[others]), kind="stable")[:12]]
  want = np.zeros(t.size, bool)
  want[kept] = want[grown] = True
  np.testing.assert_array_equal(np.asarray(new).ravel(), want)


def test_gmp_counts_follow_the_cubic():
  params = _params()
  schedule = sparsity.gmp(params, sparsity=0.8, start_step=2, end_step=20, update_every=5,
                          distribution="uniform")
  assert schedule.update_steps == (2, 7, 12, 17, 20)  # the period, then the end step itself
  for t, row in zip(schedule.update_steps, schedule.target_counts):
    s_t = 0.8 * (1 - (1 - (t - 2) / 18) ** 3)  # Zhu and Gupta's Eq. 1 with s_i = 0
    # uniform budget: every layer keeps (1 - s_t) of its weights, up to the exact total's rounding
    for count, size in zip(row, (200, 50)):
      assert abs(count - (1 - s_t) * size) <= 1, (t, count, size)
