"""Sparse inference (signin_jax.sparse_inference): logits equal the masked dense model's for the
shipped models whatever product each layer runs, provably-zero channels are removed and only
those, the plan is deterministic given the measurements, the export round trip keeps the plan,
and bad input is refused naming the tensor.

The reference everywhere is the plain Flax model applied to parameters multiplied by their
masks (computed here, not by the code under test). Measurements are injected (`forcing`), so
the tests time nothing and every product can be forced."""

import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signin_jax import masks as masks_lib
from signin_jax import models
from signin_jax import sparse_inference as si
from signin_jax import sparse_kernels as sk
from signin_jax import sparse_numba

TOLERANCE = 1e-5


def forcing(choice):
  """A measure that makes `choice(layer, batch, candidates)` the fastest product."""
  def measure(layer, batch, fns):
    pick = "per_layer" if layer == "<end to end>" else choice(layer, batch, list(fns))
    return {k: (0.0 if k == pick else 1.0) for k in fns}
  return measure


# Products the model tests rotate through (each product's own numerics are tested below; a
# few here keep the tests fast, as every numba kernel compiles once per process).
ROTATION = ("dense", "bcsr", "csr_rows", "csr_cols32", "conv_rows", "ell", "dense_rows")


def rotating(layer, batch, candidates):
  """A different product for each layer and batch size (deterministic)."""
  candidates = [c for c in candidates if c in ROTATION]
  return candidates[(sum(map(ord, layer)) + batch) % len(candidates)]


def random_batch_stats(variables, seed):
  """Non-trivial eval-mode BatchNorm statistics and affine parameters."""
  rng = np.random.default_rng(seed)
  out = jax.tree.map(np.asarray, dict(variables))
  def fill(tree, collection):
    for key, value in tree.items():
      if isinstance(value, dict):
        fill(value, collection)
      elif collection == "batch_stats":
        tree[key] = (rng.uniform(0.5, 2.0, value.shape) if key == "var"
                     else rng.normal(0, 0.5, value.shape)).astype(np.float32)
  out = {k: jax.tree.map(lambda x: np.array(x), v) for k, v in out.items()}
  if "batch_stats" in out:
    fill(out["batch_stats"], "batch_stats")
  return out


def reference_logits(model, variables, masks, x):
  params = jax.tree.map(lambda p, m: np.asarray(p) * np.asarray(m), variables["params"], masks)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return np.asarray(apply(dict(variables, params=params), x), np.float64)


def assert_close(got, expected, tolerance=TOLERANCE):
  got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
  error = np.abs(got - expected) / np.maximum(1.0, np.abs(expected))
  assert error.max() <= tolerance, error.max()


MODELS = {  # name: (width, input shape)
    "lenet300_100": (16, (28, 28, 1)),
    "small_cnn": (4, (28, 28, 1)),
    "resnet20": (4, (8, 8, 3)),
}


def init_with_masks(model, shape, sparsity):
  """Variables (with non-trivial BatchNorm statistics) and ERK random masks, compiled once."""
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1,) + shape), train=False))(
      jax.random.PRNGKey(0))
  masks = jax.jit(lambda k, p: masks_lib.create_masks(
      k, p, sparsity=sparsity, method="random", distribution="erk"))(
          jax.random.PRNGKey(1), variables["params"])
  return random_batch_stats(variables, 1), jax.tree.map(np.asarray, masks)


@pytest.mark.parametrize("name", [
    "lenet300_100", "small_cnn", pytest.param("resnet20", marks=pytest.mark.slow)])
def test_logits_equal_masked_dense_model(name):
  width, shape = MODELS[name]
  model = models.get_model(name, num_classes=10, width=width)
  variables, masks = init_with_masks(model, shape, 0.9)
  sparse = si.convert(model, variables, masks, input_shape=shape, batch_sizes=(1, 5),
                      apply_kwargs={"train": False}, measure=forcing(rotating))
  used = {p for e in sparse.plan["layers"].values() for p in e["products"].values()}
  assert len(used) >= 3  # the rotation really mixes products
  for batch in (1, 5, 3):  # 3 was not planned: it runs the nearest plan's products
    x = jax.random.normal(jax.random.PRNGKey(batch), (batch,) + shape)
    assert_close(sparse(x), reference_logits(model, variables, masks, x))


def _kernel(shape, density, seed):
  rng = np.random.default_rng(seed)
  mask = rng.random(shape) < density
  kernel = rng.standard_normal(shape).astype(np.float32) * mask
  kernel[mask & (rng.random(shape) < 0.2)] = 0.0  # kept weights that are exactly 0.0
  return kernel, mask


@pytest.mark.parametrize("product", sorted(sk.DENSE_PRODUCTS))
def test_each_dense_product_against_numpy(product):
  kernel, mask = _kernel((37, 19), 0.2, 0)
  mask[3] = False  # an empty input row (dense_rows is offered only then)
  kernel[3] = 0.0
  spec = sk.LayerSpec(dtype=jnp.float32)
  offered, refused = sk.candidates("dense", mask, spec)
  if product not in offered:
    pytest.skip(f"{product}: {refused[product]}")
  arrays = sk.prepare_layer(offered[product], kernel, mask, spec)
  for batch in (1, 7, 40):  # below, at and beyond the tiles' lanes
    x = np.random.default_rng(batch).standard_normal((batch, 37)).astype(np.float32)
    y = jax.jit(lambda x, a: offered[product].apply(x, a, spec))(x, arrays)
    assert y.shape == (batch, 19) and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float64), x.astype(np.float64) @ kernel,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strides,padding", [((1, 1), "SAME"), ((2, 2), ((1, 1), (1, 1))),
                                             ((1, 2), "VALID")])
def test_sparse_convolution_against_xla(strides, padding):
  kernel, mask = _kernel((3, 3, 5, 6), 0.3, 1)
  mask[..., 2] = False  # a whole empty filter
  kernel[..., 2] = 0.0
  x = np.random.default_rng(2).standard_normal((3, 9, 10, 5)).astype(np.float32)
  expected = jax.lax.conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  spec = sk.LayerSpec(dtype=jnp.float32, strides=strides, padding=padding,
                      input_dilation=(1, 1), kernel_dilation=(1, 1), kernel_shape=kernel.shape)
  offered, refused = sk.candidates("conv", mask, spec)
  assert set(offered) | set(refused) == set(sk.CONV_PRODUCTS)
  for name, product in offered.items():
    arrays = sk.prepare_layer(product, kernel, mask, spec)
    y = jax.jit(lambda x, a: product.apply(x, a, spec))(x, arrays)
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-5,
                               err_msg=name)


class ConvNet(nn.Module):
  """conv -> BN -> relu -> pool -> conv -> BN -> relu -> flatten -> dense -> relu -> dense."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), use_bias=False, name="conv1")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn1")(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Conv(3, (3, 3), use_bias=False, name="conv2")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn2")(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(5, name="dense1")(x))
    return nn.Dense(2, name="out")(x)


def _convnet():
  model = ConvNet()
  variables = jax.tree.map(np.array, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 2))))
  masks = jax.tree.map(lambda p: np.ones(p.shape, bool), variables["params"])
  # conv1: channel 1 and 2 fully pruned. BN(0) = (0 - mean) * rsqrt(var + eps) * scale + bias.
  masks["conv1"]["kernel"][..., 1:3] = False
  stats, bn = variables["batch_stats"]["bn1"], variables["params"]["bn1"]
  stats["mean"][:] = [0.0, -1.0, 0.5, 0.0]
  stats["var"][:] = [1.0, 1.0, 1.0, 1.0]
  bn["scale"][:] = [1.0, 1.0, 1.0, 1.0]
  # channel 1: bias -0.1 but BN(0) = 1 - 0.1 > 0 -> relu keeps a constant 0.9: kept.
  # channel 2: bias +0.1 but BN(0) = -0.5 + 0.1 < 0 -> relu gives exactly 0: removed.
  bn["bias"][:] = [0.0, -0.1, 0.1, 0.0]
  # conv2: channel 0 fully pruned, BN(0) < 0 -> removed, with dense1's rows s * 3 + 0.
  masks["conv2"]["kernel"][..., 0] = False
  variables["batch_stats"]["bn2"]["mean"][:] = [2.0, 0.0, 0.0]
  # dense1: unit 4 fully pruned with a negative bias -> relu 0 -> out's row 4 removed.
  masks["dense1"]["kernel"][:, 4] = False
  variables["params"]["dense1"]["bias"][:] = [0.1, 0.2, 0.3, 0.4, -0.5]
  return model, variables, masks


def test_provably_zero_channels_are_removed_and_constant_ones_kept():
  model, variables, masks = _convnet()
  sparse = si.convert(model, variables, masks, input_shape=(8, 8, 2), batch_sizes=(2,),
                      measure=forcing(lambda layer, b, c: c[0]))
  layers = sparse.plan["layers"]
  assert layers["conv1"]["out_removed"] == [2]
  assert layers["conv2"]["in_removed"] == [2]
  assert sparse.plan["kept_constant"] == {"conv1": [1]}
  assert sparse.plan["norms"]["bn1"]["kept"] == [0, 1, 3]
  assert layers["conv2"]["out_removed"] == [0]
  spatial = 4 * 4  # conv2's output positions (after conv1's 2x2 pooling of 8 x 8)
  assert layers["dense1"]["in_removed"] == [s * 3 for s in range(spatial)]
  assert layers["dense1"]["kernel_shape"] == [spatial * 2, 4]
  assert layers["dense1"]["out_removed"] == [4]
  assert layers["out"]["in_removed"] == [4]
  assert layers["conv1"]["kernel_shape"] == [3, 3, 2, 3]
  for seed in range(3):
    x = jax.random.normal(jax.random.PRNGKey(seed), (2, 8, 8, 2))
    assert_close(sparse(x), reference_logits(model, variables, masks, x))


def test_positive_batchnorm_output_keeps_every_channel():
  model, variables, masks = _convnet()
  variables["params"]["bn1"]["bias"][:] = 5.0  # relu(BN(0)) > 0 for every channel
  sparse = si.convert(model, variables, masks, input_shape=(8, 8, 2), batch_sizes=(2,),
                      measure=forcing(lambda layer, b, c: c[-1]))
  assert sparse.plan["layers"]["conv1"]["out_removed"] == []
  assert sparse.plan["kept_constant"]["conv1"] == [1, 2]
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 2))
  assert_close(sparse(x), reference_logits(model, variables, masks, x))


class Residual(nn.Module):

  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.Conv(2, (3, 3), use_bias=False, name="a")(x))
    return nn.Dense(3, name="head")(jnp.mean(x + y, axis=(1, 2)))


def test_a_channel_added_to_another_tensor_is_not_removed():
  model = Residual()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 2)))
  masks = jax.tree.map(lambda p: np.ones(p.shape, bool), variables["params"])
  masks["a"]["kernel"][..., 0] = False  # relu(0) = 0, but the zero is added to x
  sparse = si.convert(model, variables, masks, input_shape=(5, 5, 2), batch_sizes=(1,),
                      measure=forcing(lambda layer, b, c: c[0]))
  assert sparse.plan["layers"]["a"]["out_removed"] == []
  assert "add" in sparse.plan["why_not_removed"]["a"]


def test_plan_is_deterministic_given_measurements_and_json():
  model, variables, masks = _convnet()
  plans = [si.convert(model, variables, masks, input_shape=(8, 8, 2), batch_sizes=(1, 4),
                      measure=forcing(rotating)).plan for _ in range(2)]
  assert json.dumps(plans[0], sort_keys=True) == json.dumps(plans[1], sort_keys=True)
  assert "conv1" in si.format_plan(plans[0])


def test_export_round_trip_keeps_plan_and_logits(tmp_path):
  model, variables, masks = _convnet()
  sparse = si.convert(model, variables, masks, input_shape=(8, 8, 2), batch_sizes=(1, 3),
                      measure=forcing(rotating))
  path = os.path.join(tmp_path, "model.sjx")
  si.save(path, sparse, metadata={"model": "ConvNet"})
  loaded = si.load(path, model, input_shape=(8, 8, 2))
  assert loaded.plan["layers"] == sparse.plan["layers"]
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 2))
  np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(sparse(x)))


def test_bfloat16_layers_run_sparse_in_float32_accumulation():
  model = models.get_model("lenet300_100", num_classes=4, width=8, dtype=jnp.bfloat16)
  variables, masks = init_with_masks(model, (6, 6, 1), 0.8)
  for product in ("bcsr", "csr_tile8"):
    sparse = si.convert(model, variables, masks, input_shape=(6, 6, 1), batch_sizes=(2,),
                        measure=forcing(lambda l, b, c, p=product: p if p in c else "dense"))
    layers = sparse.plan["layers"]
    assert {e["dtype"] for e in layers.values()} == {"bfloat16"}
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 1))
    expected = reference_logits(model, variables, masks, x)
    assert_close(sparse(x), expected, tolerance=2e-2)


def test_bad_masks_are_refused_naming_the_tensor():
  model, variables, masks = _convnet()
  kwargs = dict(input_shape=(8, 8, 2), batch_sizes=(1,), measure=forcing(lambda *a: "dense"))
  wrong_shape = jax.tree.map(lambda m: m, masks)
  wrong_shape["conv2"]["kernel"] = np.ones((3, 3, 4, 4), bool)
  with pytest.raises(ValueError, match="conv2/kernel.*shape"):
    si.convert(model, variables, wrong_shape, **kwargs)
  missing = {k: v for k, v in masks.items() if k != "dense1"}
  with pytest.raises(ValueError, match="dense1"):
    si.convert(model, variables, missing, **kwargs)
  extra = dict(masks, ghost={"kernel": np.ones((2, 2), bool)})
  with pytest.raises(ValueError, match="ghost"):
    si.convert(model, variables, extra, **kwargs)
  floats = jax.tree.map(lambda m: m, masks)
  floats["out"]["kernel"] = np.full(masks["out"]["kernel"].shape, 0.5)
  with pytest.raises(ValueError, match="out/kernel.*booleans"):
    si.convert(model, variables, floats, **kwargs)
  with pytest.raises(ValueError, match="batch_sizes"):
    si.convert(model, variables, masks, input_shape=(8, 8, 2), batch_sizes=(0,))
  with pytest.raises(TypeError, match="Linen"):
    si.convert(object(), variables, masks, **kwargs)


def test_a_plan_naming_an_unknown_product_is_refused():
  model, variables, masks = _convnet()
  sparse = si.convert(model, variables, masks, input_shape=(8, 8, 2), batch_sizes=(1,),
                      measure=forcing(lambda *a: "dense"))
  plan = json.loads(json.dumps(sparse.plan))
  plan["layers"]["dense1"]["products"]["1"] = "warp_drive"
  with pytest.raises(ValueError, match="warp_drive.*dense1"):
    si.from_plan(model, variables, masks, plan, input_shape=(8, 8, 2))


def test_generated_tile_kernels_are_current():
  path = os.path.join(os.path.dirname(sparse_numba.__file__), "sparse_numba_tiles.py")
  with open(path, encoding="utf-8") as f:
    assert f.read() == sparse_numba.tiles_module_source()


def test_command_line_converts_a_run_and_reports_speed(tmp_path, capsys):
  model = models.get_model("lenet300_100", num_classes=10, width=8)
  variables, masks = init_with_masks(model, (28, 28, 1), 0.9)
  arrays = {}
  for prefix, tree in (("params", variables["params"]), ("masks", masks)):
    for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
      name = jax.tree_util.keystr(path, simple=True, separator="/")
      if prefix == "params" or name.endswith("kernel"):  # the trainer saves kernels' masks
        arrays[f"{prefix}/{name}"] = np.asarray(value)
  arrays["params/dense1/kernel"] *= arrays["masks/dense1/kernel"]
  np.savez(tmp_path / "final_weights.npz", **arrays)
  with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
    json.dump({"model": "lenet300_100", "width": 8, "dataset": "fashion_mnist",
               "batch_size": 4, "dtype": "float32"}, f)
  assert si.main([str(tmp_path), "--rounds", "1"]) == 0
  out = capsys.readouterr().out
  assert "converted and written" in out and "dense1" in out
  assert len(re.findall(r"batch +(1|4): dense .* us, sparse .* us: [\d.]+x", out)) == 2
  assert os.path.exists(tmp_path / si.EXPORT_FILE)
  assert si.main([str(tmp_path), "--rounds", "1"]) == 0  # now from the export, no measuring
  assert "loaded from" in capsys.readouterr().out
  with pytest.raises(FileNotFoundError, match="finished run"):
    si.main([str(tmp_path / "missing")])
