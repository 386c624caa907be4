"""signin_jax.sparsity: masks that change during training (GMP, AC/DC, RigL, SET), with and
without Sign-In, against references written here."""

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


def test_acdc_switches_phase_on_its_steps_dense_phases_dense_sparse_at_target():
  params = _params()
  schedule, m0 = _schedules(params)["acdc"]  # 30 steps: warm-up 5, phases of 4, final 6.
  tx = sparsity.sparse_training(optax.sgd(0.05, momentum=0.9), schedule, m0)
  p, state = params, tx.init(params)
  update = jax.jit(tx.update)
  sizes = {"a": 200, "b": 50}
  sparse_counts = {"a": 40, "b": 10}  # uniform 80 %: 20 % of each layer kept
  # Written from the schedule's definition: dense 1-5, sparse 6-9, dense 10-13, sparse 14-17,
  # dense 18-21, sparse 22-23 running into the final sparse phase 24-30.
  sparse_steps = set(range(6, 10)) | set(range(14, 18)) | set(range(22, 31))
  for t in range(1, 31):
    g = jax.tree.map(lambda x: jnp.cos(x * t) + 0.01 * t, p)
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
    for name in ("a", "b"):
      kept = int(state.masks[name]["kernel"].sum())
      nonzero = int(jnp.sum(p[name]["kernel"] != 0))
      if t in sparse_steps:
        assert kept == sparse_counts[name] and nonzero <= kept, (t, name, kept)
      else:  # dense: every weight active again and, after one step, moving
        assert kept == sizes[name] and nonzero == sizes[name], (t, name, kept, nonzero)


def test_set_grows_only_inactive_entries_at_random_and_drops_smallest_theta():
  params = {"w": jax.random.normal(KEY, (10, 8))}
  m0 = masks_lib.create_masks(KEY, params, 0.6, distribution="uniform")
  schedule = sparsity.set_evolution(params, sparsity=0.6, end_step=10, update_every=1,
                                    drop_fraction=0.5, drop_fraction_anneal="constant",
                                    distribution="uniform")
  theta = masks_lib.apply_mask(params, m0)
  mask, t = np.asarray(m0["w"]).ravel(), np.asarray(theta["w"]).ravel()
  active = np.flatnonzero(mask)
  n, n_drop = active.size, active.size // 2
  kept = active[np.argsort(-np.abs(t[active]), kind="stable")[:n - n_drop]]
  grown_sets = []
  for seed in range(3):
    new = np.asarray(schedule.new_masks(0, 1, m0, theta, params,
                                        jax.random.PRNGKey(seed))["w"]).ravel()
    assert new.sum() == n and new[kept].all()  # the largest |theta| stay, the count is exact
    grown = np.setdiff1d(np.flatnonzero(new), kept)
    assert grown.size == n_drop and not np.isin(grown, kept).any()
    grown_sets.append(tuple(grown))
  assert len(set(grown_sets)) == 3  # random growth: another key, other entries


def test_reset_entries_zeroes_exactly_the_changed_entries_state():
  params = _params()
  tx = sign_in(optax.chain(optax.add_decayed_weights(1e-3), optax.adam(0.01)), beta=0.5)
  state = tx.init(params)
  for i in range(3):  # non-trivial moments and factors
    g = jax.tree.map(lambda x: jnp.sin(x + i), params)
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
  changed = jax.tree.map(lambda x: jax.random.bernoulli(KEY, 0.3, x.shape), params)
  reset = sparsity.reset_entries(state, params, changed)
  flat_changed = {k: np.asarray(v) for k, v in
                  jax.tree_util.tree_flatten_with_path(changed)[0]}
  # Compare every array of the state, leaf by leaf: those shaped like a parameter are zero
  # (m: sqrt(beta)) at its changed entries and untouched elsewhere; all others untouched.
  seen = {"zeroed": 0, "m": 0}
  before, _ = jax.tree_util.tree_flatten_with_path(state)
  after, _ = jax.tree_util.tree_flatten_with_path(reset)
  for (path, x), (_, y) in zip(before, after):
    x, y = np.asarray(x), np.asarray(y)
    param_path = tuple(k for k in path if isinstance(k, jax.tree_util.DictKey))
    c = flat_changed.get(param_path)
    if c is None or x.shape != c.shape:
      np.testing.assert_array_equal(x, y)
      continue
    np.testing.assert_array_equal(y[~c], x[~c])
    is_m = isinstance(path[0], jax.tree_util.GetAttrKey) and path[0].name == "m"
    np.testing.assert_array_equal(y[c], np.float32(np.sqrt(0.5)) if is_m else 0.0)
    seen["m" if is_m else "zeroed"] += 1
  assert seen["m"] == 2 and seen["zeroed"] >= 2 * 2 * 2  # m; mu and nu of m and w per kernel


def test_rigl_with_signin_is_the_explicit_factor_model_across_mask_updates_and_resets():
  """theta = m * w trained as two explicit factors (numpy, SGD with momentum), RigL's masks
  read from the transform's state: at each change the dropped and grown entries restart at
  (m, w) = (sqrt(beta), 0) with zero momentum, masked entries get no gradient, every R steps a
  re-split. The transform must follow it over mask updates and resets. (The kernels' gradients
  do not depend on the bias here, so the reference reads the transform's.)"""
  beta, lr, mu, wd, reset_every, steps = 0.5, 0.05, 0.9, 0.01, 4, 24
  params = _params()
  m0 = masks_lib.create_masks(KEY, params, 0.8, distribution="uniform")
  schedule = sparsity.rigl(params, sparsity=0.8, end_step=18, update_every=3,
                           drop_fraction=0.4, distribution="uniform")
  tx = sparsity.sparse_training(
      sign_in(optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=mu)),
              beta=beta, reset_every=reset_every), schedule, m0)
  theta = masks_lib.apply_mask(params, m0)
  state = tx.init(theta)
  update = jax.jit(tx.update)

  def grad_fn(p):  # a fixed smooth loss, its gradient non-zero at theta = 0 (RigL grows there)
    offset = lambda x: 0.37 * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)
    return jax.grad(lambda q: sum(jnp.sum(jnp.sin(x + offset(x)) + 0.1 * x**2)
                                  for x in jax.tree.leaves(q)))(p)

  names = [("a", "kernel"), ("b", "kernel")]
  split = lambda t: (np.sqrt((beta + np.sqrt(beta**2 + 4 * t**2)) / 2),)
  ref = {}
  for n in names:
    t = np.asarray(theta[n[0]][n[1]], np.float64)
    (m,) = split(t)
    ref[n] = {"m": m, "w": t / m, "vm": np.zeros_like(t), "vw": np.zeros_like(t),
              "mask": np.asarray(m0[n[0]][n[1]])}
  changes = 0
  for step in range(1, steps + 1):
    g = grad_fn(theta)
    u, state = update(g, state, theta)
    theta = optax.apply_updates(theta, u)
    g_ref = grad_fn({"a": {"kernel": jnp.asarray(ref[names[0]]["m"] * ref[names[0]]["w"],
                                                 jnp.float32),
                           "bias": theta["a"]["bias"]},  # (kernels only are compared)
                     "b": {"kernel": jnp.asarray(ref[names[1]]["m"] * ref[names[1]]["w"],
                                                 jnp.float32)}})
    for n in names:
      r = ref[n]
      new_mask = np.asarray(state.masks[n[0]][n[1]])
      changed = new_mask != r["mask"]
      changes += int(changed.sum())
      r["m"][changed], r["w"][changed] = np.sqrt(beta), 0.0
      r["vm"][changed] = r["vw"][changed] = 0.0
      r["mask"] = new_mask
      gt = np.where(new_mask, np.asarray(g_ref[n[0]][n[1]], np.float64), 0.0)
      # Weight decay on both factors: inactive entries' m decays (so a grown entry's reset matters).
      r["vm"] = mu * r["vm"] + r["w"] * gt + wd * r["m"]
      r["vw"] = mu * r["vw"] + r["m"] * gt + wd * r["w"]
      r["m"], r["w"] = r["m"] - lr * r["vm"], r["w"] - lr * r["vw"]
      if step % reset_every == 0:
        t = r["m"] * r["w"]
        (r["m"],) = split(t)
        r["w"] = t / r["m"]
      np.testing.assert_allclose(np.asarray(theta[n[0]][n[1]]), r["m"] * r["w"],
                                 rtol=2e-4, atol=2e-6, err_msg=f"{n} step {step}")
      assert np.all(np.asarray(theta[n[0]][n[1]])[~new_mask] == 0.0)
  assert changes > 0  # the run did change masks


# --- GMP: a pruned weight stays pruned (issue 17, item 1) ------------------------------------

LENET_KERNELS = ((784, 300), (300, 100), (100, 10))  # LeNet-300-100's prunable leaves.


def _kernels(shapes, key=None):
  """{'l0': {'kernel': ...}, ...}: zeros, or standard normal draws of `key`."""
  keys = jax.random.split(key if key is not None else KEY, len(shapes))
  return {f"l{i}": {"kernel": (jax.random.normal(k, s) if key is not None else jnp.zeros(s))}
          for i, (s, k) in enumerate(zip(shapes, keys))}


def _cubic(t, *, sparsity_, start, end, initial=0.0):
  """Zhu and Gupta's Eq. 1: the sparsity at step t."""
  return sparsity_ + (initial - sparsity_) * (1 - (t - start) / (end - start)) ** 3


def _target_counts(params, sparsity_, distribution):
  """The per-layer counts masks.layer_densities gives at the target (what masks keep)."""
  densities = jax.tree.leaves(masks_lib.layer_densities(params, sparsity_, distribution))
  return [round(d * x.size) for d, x in zip(densities, jax.tree.leaves(params))]


def test_gmp_issue_17_reproduction_the_last_layer_never_grows_back():
  """Issue 17: uniform 0.9, start 0, end 2000, every step: between t=1339 and t=1340 the last
  layer went from 132 to 133 kept and the pruned entry at flat index 0 came back."""
  params = _kernels(LENET_KERNELS)
  schedule = sparsity.gmp(params, sparsity=0.9, start_step=0, end_step=2000, update_every=1,
                          distribution="uniform")
  u = schedule.update_steps.index(1339)
  before, after = schedule.target_counts[u], schedule.target_counts[u + 1]
  # The masks at t=1339 keep the largest |theta|; |theta| grows with the flat index, so the
  # entry at flat index 0 of every layer is pruned and ranks last among the pruned.
  theta = jax.tree.map(lambda x: jnp.arange(1, x.size + 1, dtype=jnp.float32).reshape(x.shape),
                       params)
  masks = jax.tree.map(lambda x, k: jnp.arange(x.size).reshape(x.shape) >= x.size - k,
                       theta, {f"l{i}": {"kernel": int(before[i])} for i in range(3)})
  new = schedule.new_masks(u + 1, 1340, masks, theta, theta, KEY)
  for name in ("l0", "l1", "l2"):
    old_mask, new_mask = np.asarray(masks[name]["kernel"]), np.asarray(new[name]["kernel"])
    assert not new_mask.ravel()[0], name  # flat index 0 stays pruned
    assert not (new_mask & ~old_mask).any(), name
  assert after[2] <= before[2], (before.tolist(), after.tolist())


GMP_CONFIGS = {  # name: (gmp's arguments beyond params, or the trainer's defaults)
    "issue_uniform_every_step": dict(sparsity=0.9, start_step=0, end_step=2000, update_every=1,
                                     distribution="uniform"),
    "issue_erk_every_step": dict(sparsity=0.9, start_step=0, end_step=2000, update_every=1,
                                 distribution="erk"),
    "uniform_global": dict(sparsity=0.95, start_step=0, end_step=2000, update_every=1,
                           distribution="uniform", scope="global"),
    "erk_from_0.5": dict(sparsity=0.98, start_step=100, end_step=1500, update_every=3,
                         initial_sparsity=0.5, distribution="erk"),
}
TRAINER_DEFAULT_STEPS = 100_000  # configs/default.py: every 100 steps from 0 to 75 % of a run.


def _gmp_schedule(params, config):
  if config.startswith("trainer_default"):
    _, distribution, sparsity_ = config.split(":")
    schedule = sparsity.create_schedule("gmp", params, sparsity=float(sparsity_),
                                        num_steps=TRAINER_DEFAULT_STEPS,
                                        distribution=distribution)
    return schedule, dict(sparsity=float(sparsity_), start_step=0,
                          end_step=int(0.75 * TRAINER_DEFAULT_STEPS), distribution=distribution)
  return sparsity.gmp(params, **GMP_CONFIGS[config]), GMP_CONFIGS[config]


@pytest.mark.parametrize("config", list(GMP_CONFIGS) + [
    f"trainer_default:{d}:{s}" for d in ("uniform", "erk") for s in (0.9, 0.95, 0.98)])
def test_gmp_count_table_never_grows_a_layer_and_keeps_exact_totals(config):
  params = _kernels(LENET_KERNELS)
  schedule, args = _gmp_schedule(params, config)
  table = np.asarray(schedule.target_counts)
  sizes = [x.size for x in jax.tree.leaves(params)]
  assert np.all(np.diff(table, axis=0) <= 0), [
      (schedule.update_steps[u], schedule.update_steps[u + 1], table[u].tolist(),
       table[u + 1].tolist())
      for u in np.flatnonzero(np.any(np.diff(table, axis=0) > 0, axis=1))][:5]
  assert np.all(table >= 0) and np.all(table <= np.asarray(sizes))
  for t, row in zip(schedule.update_steps, table):
    s_t = _cubic(t, sparsity_=args["sparsity"], start=args["start_step"], end=args["end_step"],
                 initial=args.get("initial_sparsity", 0.0))
    assert row.sum() == round((1 - s_t) * sum(sizes)), t  # the exact total at s_t
    # Each count is still a rounding (down or up) of the budget's real count at s_t.
    _, quotas = masks_lib.layer_counts(params, s_t, args["distribution"])
    assert np.all(np.abs(row - np.asarray(quotas)) < 1), (t, row.tolist(), quotas)
  assert table[-1].tolist() == _target_counts(params, args["sparsity"], args["distribution"])


@pytest.mark.parametrize("shapes,distribution,scope", [
    (((100, 30), (30, 10), (10, 10)), "uniform", "layer"),
    (((40, 30), (30, 20), (20, 10)), "erk", "layer"),
    (((100, 30), (30, 10), (10, 10)), "uniform", "global"),
    (((40, 30), (30, 20), (20, 10)), "erk", "global"),
])
def test_gmp_masks_only_lose_entries_over_every_update(shapes, distribution, scope):
  """New |theta| at every update (pruned entries included, however large): a mask is a subset
  of the one before, with the table's counts (layer scope) or total (global scope)."""
  params = _kernels(shapes)
  schedule = sparsity.gmp(params, sparsity=0.9, start_step=0, end_step=200, update_every=1,
                          distribution=distribution, scope=scope)
  new_masks = jax.jit(schedule.new_masks)
  masks = sparsity.dense_masks(params)
  for u, t in enumerate(schedule.update_steps):
    theta = _kernels(shapes, jax.random.fold_in(KEY, t))
    new = new_masks(u, t, masks, theta, theta, KEY)
    counts = []
    for name in sorted(params):
      old_mask, new_mask = np.asarray(masks[name]["kernel"]), np.asarray(new[name]["kernel"])
      assert not (new_mask & ~old_mask).any(), (t, name, "a pruned weight came back")
      counts.append(int(new_mask.sum()))
    want = schedule.target_counts[u].tolist()
    assert (counts == want) if scope == "layer" else (sum(counts) == sum(want)), (t, counts, want)
    masks = new


def test_gmp_keeps_only_kept_entries_even_when_a_kept_weight_is_nan():
  """A kept NaN weight must not hand its place to a pruned one (NaN ranks below -inf in a
  sort): with the counts of the update equal to the mask's, the mask stays the same set."""
  params = {"w": jnp.zeros((8, 5))}
  schedule = sparsity.gmp(params, sparsity=0.5, start_step=0, end_step=4, update_every=1,
                          distribution="uniform")
  u = len(schedule.update_steps) - 1
  keep = int(schedule.target_counts[u][0])
  theta = {"w": jnp.arange(40.0).reshape(8, 5).at[4, 4].set(jnp.nan)}  # flat 24: kept, NaN
  masks = {"w": (jnp.arange(40) >= 40 - keep - 1).at[39].set(False).reshape(8, 5)}
  assert int(masks["w"].sum()) == keep and bool(masks["w"][4, 4])
  new = np.asarray(schedule.new_masks(u, 4, masks, theta, theta, KEY)["w"])
  assert not (new & ~np.asarray(masks["w"])).any()
  assert new.sum() == keep


def test_acdc_global_scope_keeps_the_largest_magnitudes_across_layers():
  """scope='global' (Peste et al. prune globally) crashed before issue 17's fix (a jnp.sum of
  a list of traced counts); the sparse phase keeps the top |theta| over both kernels."""
  params = _params()
  schedule = sparsity.acdc(params, sparsity=0.8, num_steps=30, warmup_steps=5, phase_steps=4,
                           final_sparse_steps=6, distribution="uniform", scope="global")
  new_masks = jax.jit(schedule.new_masks)
  sparse = new_masks(0, 6, sparsity.dense_masks(params), params, params, KEY)
  magnitudes = np.abs(np.concatenate([np.asarray(params["a"]["kernel"]).ravel(),
                                      np.asarray(params["b"]["kernel"]).ravel()]))
  want = np.zeros(250, bool)
  want[np.argsort(-magnitudes, kind="stable")[:50]] = True  # 20 % of the 250 kernel weights
  got = np.concatenate([np.asarray(sparse["a"]["kernel"]).ravel(),
                        np.asarray(sparse["b"]["kernel"]).ravel()])
  np.testing.assert_array_equal(got, want)
  assert bool(jnp.all(sparse["a"]["bias"]))
  dense = new_masks(1, 10, sparse, params, params, KEY)  # the next phase is dense
  assert all(bool(jnp.all(m)) for m in jax.tree.leaves(dense))


def test_gmp_refuses_an_initial_sparsity_above_the_target():
  with pytest.raises(ValueError, match="initial_sparsity"):
    sparsity.gmp(_params(), sparsity=0.5, initial_sparsity=0.8, start_step=0, end_step=10)


# --- the starting mask is checked (issue 17, item 2) -----------------------------------------

def _kept(tree):
  return {masks_lib.path_str(p): int(np.count_nonzero(m))
          for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _budget_counts(params, sparsity_, distribution):
  """{path: kept count} of masks.layer_densities at the prunable leaves (the kernels)."""
  flat = jax.tree_util.tree_flatten_with_path(
      masks_lib.layer_densities(params, sparsity_, distribution))[0]
  sizes = _kept(jax.tree.map(lambda x: jnp.ones(x.shape, bool), params))
  return {masks_lib.path_str(p): round(d * sizes[masks_lib.path_str(p)])
          for p, d in flat if masks_lib.path_str(p).endswith("kernel")}


@pytest.mark.parametrize("factory", [sparsity.rigl, sparsity.set_evolution])
def test_rigl_and_set_refuse_a_uniform_mask_under_their_default_erk_budget(factory):
  params = _params()
  uniform = masks_lib.create_masks(KEY, params, 0.8, distribution="uniform")
  tx = sparsity.sparse_training(optax.sgd(0.1), factory(params, sparsity=0.8, end_step=10),
                                uniform, key=KEY)
  have, need = _kept(uniform), _budget_counts(params, 0.8, "erk")
  assert have["a/kernel"] != need["a/kernel"] and have["b/kernel"] != need["b/kernel"]
  for init in (tx.init, jax.jit(tx.init)):  # the trainer initializes under jit
    with pytest.raises(ValueError) as error:
      init(masks_lib.apply_mask(params, uniform))
    for path, size in (("a/kernel", 200), ("b/kernel", 50)):
      assert (f"'{path}' keeps {have[path]:,} of {size:,} entries where the schedule needs "
              f"{need[path]:,}") in str(error.value)
  erk = masks_lib.create_masks(KEY, params, 0.8)  # the schedule's own budget: accepted
  sparsity.sparse_training(optax.sgd(0.1), factory(params, sparsity=0.8, end_step=10), erk,
                           key=KEY).init(masks_lib.apply_mask(params, erk))


@pytest.mark.parametrize("name", ["gmp", "acdc"])
def test_gmp_and_acdc_refuse_a_mask_that_is_not_dense(name):
  params = _params()
  schedule, dense = _schedules(params)[name]
  sparse = masks_lib.create_masks(KEY, params, 0.8, distribution="uniform")
  with pytest.raises(ValueError, match=r"'a/kernel' keeps 40 of 200 entries where the schedule "
                                       r"needs 200; 'b/kernel' keeps 10 of 50 entries"):
    sparsity.sparse_training(optax.sgd(0.1), schedule, sparse).init(params)
  masked_bias = {**dense, "a": {**dense["a"], "bias": dense["a"]["bias"].at[3].set(False)}}
  with pytest.raises(ValueError, match=r"'a/bias' keeps 9 of 10 entries where the schedule "
                                       r"needs 10"):
    sparsity.sparse_training(optax.sgd(0.1), schedule, masked_bias).init(params)
  sparsity.sparse_training(optax.sgd(0.1), schedule, dense).init(params)
  # uint8 masks and leaves given as one scalar, broadcast to the parameters' shapes.
  sparsity.sparse_training(optax.sgd(0.1), schedule,
                           jax.tree.map(lambda _: np.uint8(1), params)).init(params)


def test_a_static_schedule_takes_any_mask_and_the_check_can_be_skipped():
  params = _params()
  any_masks = [masks_lib.create_masks(KEY, params, 0.8, distribution="uniform"),
               masks_lib.create_masks(KEY, params, 0.5),
               jax.tree.map(lambda x: jnp.zeros(x.shape, bool), params)]
  for m in any_masks:
    sparsity.sparse_training(optax.sgd(0.1), sparsity.static(), m).init(params)
  rigl = sparsity.rigl(params, sparsity=0.8, end_step=10)
  sparsity.sparse_training(optax.sgd(0.1), rigl, any_masks[0], check_masks=False).init(params)

  @jax.jit
  def init_from_traced_masks(m):  # masks only known under jit: cannot be counted, not checked
    return sparsity.sparse_training(optax.sgd(0.1), rigl, m).init(params).count

  init_from_traced_masks(any_masks[0])


def test_a_schedule_states_its_own_requirement_on_the_starting_mask():
  """How structured masks (N:M, channels, blocks) will state theirs: a requirement per leaf,
  called with the leaf's mask; its message names what is wrong, the check names the leaf."""
  params = _params()

  def two_of_four(mask):  # an N:M pattern: 2 kept in every 4 consecutive entries (flat order)
    if (mask.reshape(-1, 4).sum(axis=1) != 2).any():
      return "is not 2:4 in flat order"
    return None

  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  schedule = sparsity.rigl(params, sparsity=0.5, end_step=10)._replace(start_requirements=tuple(
      two_of_four if masks_lib.path_str(p) == "a/kernel" else None for p, _ in flat))
  masks = {"a": {"kernel": np.tile([True, True, False, False], 50).reshape(20, 10),
                 "bias": np.ones(10, bool)},
           "b": {"kernel": np.zeros((10, 5), bool)}}  # no requirement: anything goes
  sparsity.check_start_masks(schedule, masks, params)
  kernel = masks["a"]["kernel"].ravel().copy()
  kernel[2], kernel[4] = True, False  # the same count: groups of 3 and 1 kept
  masks["a"]["kernel"] = kernel.reshape(20, 10)
  with pytest.raises(ValueError, match=r"'a/kernel' is not 2:4 in flat order"):
    sparsity.sparse_training(optax.sgd(0.1), schedule, masks).init(params)
