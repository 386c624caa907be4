"""Structured masks (issue 21): N:M along the contraction axis, channels, blocks; every schedule
and STE / SR-STE keeping the structure, with and without Sign-In; the trainer and the export.

The invariants are checked in numpy, written here from the documentation (not the module)."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from signin_jax import masks
from signin_jax import models
from signin_jax import signin
from signin_jax import sparse_export
from signin_jax import sparsity
from signin_jax import straight_through
from signin_jax import structured

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NM = structured.structure("n:m", n=2, m=4)
CHANNEL = structured.structure("channel")
BLOCK = structured.structure("block", block_shape=(4, 3))


# --- independent numpy checks ----------------------------------------------------------------

def nm_ok(mask, n, m):
  """Every group of m consecutive entries along axis -2 keeps exactly n."""
  moved = np.moveaxis(np.asarray(mask, bool), -2, -1)
  return moved.shape[-1] % m == 0 and np.all(moved.reshape(-1, m).sum(-1) == n)


def channels_whole(mask):
  per_channel = np.asarray(mask, bool).reshape(-1, mask.shape[-1])
  return np.all(per_channel.all(0) | ~per_channel.any(0))


def tiles_whole(mask, rows, cols):
  """Each tile of the [fan_in, out] view (row-major flatten of all axes but the last; the last
  tiles ragged) is all kept or all pruned."""
  view = np.asarray(mask, bool).reshape(-1, mask.shape[-1])
  for r in range(0, view.shape[0], rows):
    for c in range(0, view.shape[1], cols):
      tile = view[r:r + rows, c:c + cols]
      if tile.any() and not tile.all():
        return False
  return True


def holds(s, path, mask, shape):
  """The structure's invariant for one prunable kernel (dense leaves: all kept)."""
  mask = np.asarray(mask, bool)
  if s.kind == "n:m":
    return nm_ok(mask, s.n, s.m) if shape[-2] % s.m == 0 else mask.all()
  if s.kind == "channel":
    return mask.all() if "classifier" in path else channels_whole(mask)
  return tiles_whole(mask, *s.block_shape)


def assert_structure(s, params, mask_tree):
  for (path, p), m in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(mask_tree)):
    name = masks.path_str(path)
    if np.ndim(p) >= 2:
      assert holds(s, name, m, np.shape(p)), (s.kind, name)
    else:
      assert np.all(np.asarray(m)), name


def model_params(name, width):
  model = models.get_model(name, num_classes=10, width=width)
  shape = (1, 28, 28, 1) if name in ("lenet300_100", "small_cnn") else (1, 8, 8, 3)
  return model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros(shape), train=False)["params"]


# resnet20 left out: compiling its per-leaf argsorts takes minutes on this shared 2-core machine;
# small_cnn has the 4-D (HWIO, 1-channel stem) and 2-D kernels.
SHIPPED = [("lenet300_100", 8), ("small_cnn", 4)]


# --- masks at initialization -----------------------------------------------------------------

@pytest.mark.parametrize("name,width", SHIPPED)
@pytest.mark.parametrize("s,sparsity_", [(NM, 0.5), (CHANNEL, 0.4), (BLOCK, 0.7)])
def test_masks_of_shipped_models_hold_their_structure(name, width, s, sparsity_):
  params = model_params(name, width)
  got = jax.jit(lambda k, p: masks.create_masks(k, p, sparsity_, structure=s))(
      jax.random.PRNGKey(1), params)
  assert_structure(s, params, got)
  labels = structured.describe(s, params)
  if s.kind == "n:m":  # the 1- or 3-channel stem is kept dense and says so
    stems = [p for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
             if np.ndim(x) == 4 and x.shape[-2] % 4]
    for path in stems:
      assert labels[masks.path_str(path)].startswith("dense (contraction size"), labels
  else:  # the budget in units is exact: round((1 - s) * all units), classifier included
    units = sum(structured._unit_total(s, lp) for lp in structured.plan(s, params)  # pylint: disable=protected-access
                if lp.role != "fixed")
    kept = [int(u) for u, lp in zip(structured.kept_units(s, params, got),
                                    structured.plan(s, params)) if lp.role != "fixed"]
    assert sum(kept) == round((1 - sparsity_) * units)


def test_two_four_mask_transposed_to_out_in_is_semi_structured():
  """What torch's to_sparse_semi_structured needs of a Linear weight [out, in]: 2 nonzeros in
  every 4 consecutive entries of each row."""
  kernel = jax.random.normal(jax.random.PRNGKey(0), (16, 6))  # Flax Dense [in, out]
  mask = np.asarray(masks.create_masks(None, {"k": kernel}, 0.5, method="magnitude",
                                       structure=NM)["k"])
  weight = (np.asarray(kernel) * mask).T  # torch layout [out, in]
  for row in weight:
    for start in range(0, row.size, 4):
      assert np.count_nonzero(row[start:start + 4]) == 2
  # and magnitude keeps the 2 largest |w| of each group (ties cannot occur here)
  for row, w in zip(mask.T, np.abs(np.asarray(kernel)).T):
    for start in range(0, row.size, 4):
      assert set(np.flatnonzero(row[start:start + 4])) == set(
          np.argsort(-w[start:start + 4])[:2])


def test_channel_and_block_magnitude_masks_match_a_numpy_reference():
  k = jax.random.normal(jax.random.PRNGKey(3), (3, 3, 4, 10))
  params = {"conv": {"kernel": k}, "classifier": {"kernel": jnp.ones((10, 3))}}
  got = masks.create_masks(None, params, 0.6, method="magnitude", distribution="uniform",
                           structure=CHANNEL)
  # uniform in channels: 13 channels, keep round(0.4 * 13) = 5: the classifier's 3 + 2 filters
  filters = np.abs(np.asarray(k)).reshape(-1, 10).sum(0)
  want = np.zeros(10, bool)
  want[np.argsort(-filters, kind="stable")[:2]] = True
  np.testing.assert_array_equal(np.asarray(got["conv"]["kernel"]),
                                np.broadcast_to(want, k.shape))
  assert np.asarray(got["classifier"]["kernel"]).all()
  blk = masks.create_masks(None, {"conv": {"kernel": k}}, 0.5, method="magnitude",
                           distribution="uniform", structure=BLOCK)["conv"]["kernel"]
  view = np.abs(np.asarray(k)).reshape(36, 10)  # fan_in index (h * 3 + w) * 4 + i
  sums = [(view[r:r + 4, c:c + 3].sum(), r, c) for r in range(0, 36, 4)
          for c in range(0, 10, 3)]  # 9 x 4 tiles, the last column 1 wide
  keep = sorted(range(len(sums)), key=lambda i: -sums[i][0])[:round(0.5 * len(sums))]
  want = np.zeros((36, 10), bool)
  for i in keep:
    _, r, c = sums[i]
    want[r:r + 4, c:c + 3] = True
  np.testing.assert_array_equal(np.asarray(blk).reshape(36, 10), want)


class TinyNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))
    x = nn.relu(nn.Dense(8, name="dense")(jnp.mean(x, axis=(1, 2))))
    return nn.Dense(3, name="classifier")(x)


@pytest.mark.parametrize("method", masks.METHODS)
@pytest.mark.parametrize("s,sparsity_", [(NM, 0.5), (CHANNEL, 0.5), (BLOCK, 0.5)])
def test_every_scoring_method_gives_structured_masks(method, s, sparsity_):
  model = TinyNet()
  x = jax.random.normal(jax.random.PRNGKey(5), (4, 6, 6, 4))
  y = jnp.arange(4) % 3
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  loss_fn = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, b[0]), b[1]).mean()
  got = masks.create_masks(jax.random.PRNGKey(1), params, sparsity_, method=method,
                           structure=s, loss_fn=loss_fn, batch=(x, y),
                           apply_fn=lambda p, i: model.apply({"params": p}, i),
                           input_shape=(1, 6, 6, 4))
  assert_structure(s, params, got)
  assert not all(np.asarray(got[k]["kernel"]).all() for k in ("conv", "dense"))


def test_structured_refusals_name_the_fields():
  params = {"k": jnp.ones((8, 4)), "attn": jnp.ones((4, 8, 2))}
  with pytest.raises(ValueError, match="sparsity must be 0.5"):
    masks.create_masks(None, {"k": jnp.ones((8, 4))}, 0.9, method="magnitude", structure=NM)
  with pytest.raises(ValueError, match="name it with structure axis="):
    masks.create_masks(None, params, 0.5, method="magnitude", structure=NM)
  got = masks.create_masks(None, params, 0.5, method="magnitude",
                           structure=NM._replace(axis=1))  # the user names it
  assert nm_ok(np.moveaxis(np.asarray(got["attn"]), 1, -2), 2, 4)
  with pytest.raises(ValueError, match="0 < n < m"):
    structured.structure("n:m", n=4, m=4)
  with pytest.raises(ValueError, match="scope='layer'"):
    masks.create_masks(None, params, 0.5, method="magnitude", structure=CHANNEL,
                       scope="global", where=lambda p, x: x.ndim == 2)
  with pytest.raises(ValueError, match="'gmp' is not available"):
    structured.create_schedule("gmp", params, CHANNEL, sparsity=0.5, num_steps=10)


def test_start_check_refuses_masks_without_the_structure():
  params = {"k": jax.random.normal(jax.random.PRNGKey(0), (8, 4))}
  unstructured = masks.create_masks(None, params, 0.5, method="magnitude")
  if nm_ok(unstructured["k"], 2, 4):  # the test needs a mask that breaks the pattern
    unstructured = {"k": jnp.zeros((8, 4), bool).at[:4].set(True)}
  schedule = structured.create_schedule("static", params, NM, sparsity=0.5, num_steps=10)
  with pytest.raises(ValueError, match="groups of 4 along axis 0 that do not keep exactly 2"):
    sparsity.sparse_training(optax.sgd(0.1), schedule, unstructured).init(params)
  rigl = structured.create_schedule("rigl", params, CHANNEL._replace(output_layers=()),
                                    sparsity=0.5, num_steps=10)
  half = {"k": jnp.zeros((8, 4), bool).at[:, :1].set(True)}  # 1 channel, the budget is 2
  with pytest.raises(ValueError, match="keeps 1 channels where the schedule needs 2"):
    sparsity.sparse_training(optax.sgd(0.1), rigl, half).init(params)
  partial = {"k": jnp.ones((8, 4), bool).at[0, 0].set(False)}
  with pytest.raises(ValueError, match="partly kept"):
    sparsity.sparse_training(optax.sgd(0.1), rigl, partial).init(params)


# --- every schedule keeps the structure, with and without Sign-In ----------------------------

def _tree():
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  return {"stem": {"kernel": jax.random.normal(ks[0], (3, 3, 3, 8))},  # 3 inputs: not 2:4
          "conv": {"kernel": jax.random.normal(ks[1], (3, 3, 8, 12)), "bias": jnp.zeros(12)},
          "classifier": {"kernel": jax.random.normal(ks[2], (12, 5)), "bias": jnp.zeros(5)}}


def _optimizer(signin_enabled):
  inner = optax.sgd(0.05, momentum=0.9)
  return signin.sign_in(inner, reset_every=3) if signin_enabled else inner


def _loop(tx, params, steps=12):
  state = tx.init(params)

  @jax.jit
  def step(params, state, key):
    grads = jax.tree.map(lambda x: jax.random.normal(key, x.shape), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for i in range(steps):
    params, state = step(params, state, jax.random.PRNGKey(i))
    yield params, sparsity.current_masks(state)


# A few combinations run in the quick loop; the whole grid (3 structures x 6 schedules x Sign-In
# on / off, a compilation each: minutes on the shared 2-core machine) is marked slow.
_QUICK = {("n:m", "rigl", True), ("n:m", "sr_ste", False), ("channel", "set", True),
          ("block", "acdc", False), ("n:m", "static", True)}
_GRID = [pytest.param(s, sp, method, on, id=f"{s.kind}-{method}-{'signin' if on else 'plain'}",
                      marks=() if (s.kind, method, on) in _QUICK else pytest.mark.slow)
         for s, sp in ((NM, 0.5), (CHANNEL, 0.6), (BLOCK, 0.6))
         for method in ("static", "acdc", "rigl", "set", "ste", "sr_ste")
         for on in (False, True)]


@pytest.mark.parametrize("s,sparsity_,method,signin_enabled", _GRID)
def test_every_schedule_keeps_the_structure_after_every_step(s, sparsity_, method,
                                                             signin_enabled):
  params = _tree()
  if method == "acdc":
    start = sparsity.dense_masks(params)
  else:
    start = masks.create_masks(jax.random.PRNGKey(1), params, sparsity_, structure=s)
  assert_structure(s, params, start) if method != "acdc" else None
  if method in ("ste", "sr_ste"):
    tx = straight_through.straight_through(
        _optimizer(signin_enabled), structured.magnitude_mask_fn(s, params, start), start,
        sr_ste_lambda=2e-4 if method == "sr_ste" else 0.0,
        # From the dense initialization: the magnitude rule then picks other units than the
        # random start mask at once. (From the masked one, pruned channels start at 0.0 and 12
        # steps of noise do not lift them past kept ones: the mask would never move.)
        dense_params=params, check_masks=structured.check_structure_fn(s, params))
  else:
    schedule = structured.create_schedule(method, params, s, sparsity=sparsity_,
                                          num_steps=12, update_every=2, warmup=0.1,
                                          phase=0.25, final=0.25, drop_fraction=0.5)
    tx = sparsity.sparse_training(_optimizer(signin_enabled), schedule, start,
                                  key=jax.random.PRNGKey(2))
  changed, previous, sparse_steps = 0, start, 0
  for params_t, masks_t in _loop(tx, masks.apply_mask(params, start)):
    for p, m in zip(jax.tree.leaves(params_t), jax.tree.leaves(masks_t)):
      assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)  # masked: exactly 0.0
    dense_phase = method == "acdc" and all(np.asarray(m).all() for m in jax.tree.leaves(masks_t))
    if not dense_phase:
      assert_structure(s, params, masks_t)
      sparse_steps += 1
    changed += any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(previous),
                                                           jax.tree.leaves(masks_t)))
    previous = masks_t
  assert sparse_steps > 0
  if method != "static":
    assert changed > 0  # the masks did move, so the invariant was tested across updates


# --- STE against a reference written here ----------------------------------------------------

@pytest.mark.parametrize("signin_enabled", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_ste_equals_a_dense_shadow_with_top_n_per_group(signin_enabled, lam):
  """Reference: w <- w + tx(g + lam * (1 - mask) * w; at w); mask = top 2 |w| of every 4 along
  the input axis; params = mask * w. With Sign-In the factors reparameterize w (the same
  sign_in instance run on the dense shadow)."""
  params = {"dense": {"kernel": jax.random.normal(jax.random.PRNGKey(0), (8, 6))},
            "classifier": {"kernel": jax.random.normal(jax.random.PRNGKey(1), (6, 3)),
                           "bias": jnp.zeros(3)}}  # 6 inputs: kept dense
  start = masks.create_masks(None, params, 0.5, method="magnitude", structure=NM)
  x = masks.apply_mask(params, start)
  tx = straight_through.straight_through(_optimizer(signin_enabled),
                                         structured.magnitude_mask_fn(NM, params, start), start,
                                         sr_ste_lambda=lam)
  state = tx.init(x)
  ref_tx = _optimizer(signin_enabled)
  w, ref_state, mask = x, ref_tx.init(x), jax.tree.map(np.asarray, start)
  update = jax.jit(tx.update)
  for i in range(6):
    g = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(10 + i), a.shape), x)
    u, state = update(g, state, x)
    x = optax.apply_updates(x, u)
    g_ref = jax.tree.map(lambda g, m, w: np.where(m, g, g + lam * np.asarray(w)), g, mask, w)
    u_ref, ref_state = ref_tx.update(g_ref, ref_state, w)
    w = optax.apply_updates(w, u_ref)
    k = np.abs(np.asarray(w["dense"]["kernel"]))
    top = np.zeros(k.shape, bool)
    for c in range(k.shape[1]):
      for g0 in range(0, k.shape[0], 4):
        top[g0 + np.argsort(-k[g0:g0 + 4, c], kind="stable")[:2], c] = True
    mask = jax.tree.map(lambda a: np.ones(np.shape(a), bool), w)
    mask["dense"]["kernel"] = top
    want = jax.tree.map(lambda w, m: np.where(m, np.asarray(w), 0.0), w, mask)
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(sparsity.current_masks(state)["dense"]["kernel"]),
                                  top)
    # the kept dense weights are the params exactly; the pruned ones keep training
    dense = straight_through.dense_weights(state)
    np.testing.assert_array_equal(np.asarray(dense["dense"]["kernel"])[top],
                                  np.asarray(x["dense"]["kernel"])[top])
  assert np.any(np.asarray(dense["dense"]["kernel"])[~top] != 0.0)


# --- the compact export detects trained structured masks ------------------------------------

def test_export_round_trips_a_trained_two_four_mask_and_a_channel_mask():
  params = _tree()
  for s, sparsity_ in ((NM, 0.5), (CHANNEL, 0.6)):
    start = masks.create_masks(jax.random.PRNGKey(1), params, sparsity_, structure=s)
    tx = straight_through.straight_through(_optimizer(True),
                                           structured.magnitude_mask_fn(s, params, start),
                                           start)
    *_, (trained, mask) = _loop(tx, masks.apply_mask(params, start), steps=4)
    trained, mask = jax.device_get((trained, mask))
    data, stats = sparse_export.encode(params=trained, masks=mask)
    back = sparse_export.decode(data)
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(back.params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(mask), jax.tree.leaves(back.masks)):
      np.testing.assert_array_equal(np.asarray(a, bool), np.asarray(b, bool))
    by_name = {t.name: t for t in stats.tensors}
    conv = by_name["params/conv/kernel"]
    if s.kind == "n:m":
      assert conv.encoding == "nm" and tuple(conv.nm) == (2, 4), conv
      assert by_name["params/classifier/kernel"].encoding == "nm"
    assert conv.bytes < conv.dense_bytes
