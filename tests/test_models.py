"""Tests of signin_jax.models: exact sizes, dtypes, cross-device BatchNorm, FLOP positions."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signin_jax import models


def _shapes(name, num_classes, input_shape, **kw):
  model = models.get_model(name, num_classes=num_classes, **kw)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape),
                                           train=False))


def _conv(k, cin, cout):
  return k * k * cin * cout


def _bn(c):
  return 2 * c


def _basic_resnet_count(widths, blocks, num_classes, stem_in=3):
  """Parameters of a CIFAR-style basic-block ResNet with projection shortcuts, by hand."""
  total = _conv(3, stem_in, widths[0]) + _bn(widths[0])
  cin = widths[0]
  for stage, (width, n) in enumerate(zip(widths, blocks)):
    for b in range(n):
      total += _conv(3, cin, width) + _bn(width) + _conv(3, width, width) + _bn(width)
      if cin != width or (stage > 0 and b == 0):
        total += _conv(1, cin, width) + _bn(width)
      cin = width
  return total + cin * num_classes + num_classes


@pytest.mark.parametrize("name,num_classes,input_shape,expected", [
    ("resnet20", 10, (1, 32, 32, 3), _basic_resnet_count((16, 32, 64), (3, 3, 3), 10)),
    ("resnet18_cifar", 100, (1, 32, 32, 3),
     _basic_resnet_count((64, 128, 256, 512), (2, 2, 2, 2), 100)),
    ("resnet50", 1000, (1, 224, 224, 3), 25_557_032),  # torchvision's resnet50 count
    ("lenet300_100", 10, (1, 28, 28, 1), 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
])
def test_parameter_counts(name, num_classes, input_shape, expected):
  count = models.count_params(_shapes(name, num_classes, input_shape)["params"])
  assert count == expected
  assert {"resnet20": 272_474, "resnet18_cifar": 11_220_132}.get(name, count) == count


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_forward_shapes_dtypes_and_kernels(name):
  shape = (2, 64, 64, 3) if name == "resnet50" else (2, 32, 32, 3)
  model = models.get_model(name, num_classes=7, width=4, dtype=jnp.bfloat16)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  kernels = [p for p in jax.tree.leaves(variables["params"]) if p.ndim >= 2]
  assert kernels  # what the masks and Sign-In reparameterize
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  if "batch_stats" in variables:
    logits, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert jax.tree.structure(new["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
  else:
    logits = model.apply(variables, x, train=True)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  # The compute really is bfloat16: every submodule's output (all but the model's own) is.
  _, state = model.apply(variables, x, train=False, capture_intermediates=True,
                         mutable=["intermediates"])
  inner = [(path, a) for path, a in
           jax.tree_util.tree_flatten_with_path(state["intermediates"])[0] if len(path) > 2]
  assert inner and all(a.dtype == jnp.bfloat16 for _, a in inner), inner


def test_batchnorm_statistics_are_averaged_over_the_device_axis():
  """bn_axis_name: per-device statistics equal those of the whole batch (vmap as devices)."""
  model = models.get_model("resnet_narrow", num_classes=3, width=2, bn_axis_name="batch")
  plain = models.get_model("resnet_narrow", num_classes=3, width=2)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 8, 8, 3))  # 4 "devices" x 6 examples
  variables = plain.init(jax.random.PRNGKey(0), x[0], train=False)
  _, per_device = jax.vmap(
      lambda xb: model.apply(variables, xb, train=True, mutable=["batch_stats"]),
      axis_name="batch")(x)
  _, whole = plain.apply(variables, x.reshape(24, 8, 8, 3), train=True, mutable=["batch_stats"])
  for a, b in zip(jax.tree.leaves(per_device), jax.tree.leaves(whole)):
    np.testing.assert_allclose(a, jnp.broadcast_to(b, a.shape), rtol=1e-4, atol=1e-5)
  _, local = plain.apply(variables, x[0], train=True, mutable=["batch_stats"])
  assert not np.allclose(jax.tree.leaves(local)[0], jax.tree.leaves(whole)[0])


def test_output_positions():
  model = models.get_model("resnet20", num_classes=10, width=4)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  positions = models.output_positions(model, variables, (1, 32, 32, 3))
  kernels = {"/".join(k.key for k in path)
             for path, p in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
             if p.ndim >= 2}
  assert set(positions) == kernels
  assert positions["stem_conv/kernel"] == 32 * 32
  assert positions["stage1_block3/Conv_1/kernel"] == 32 * 32
  assert positions["stage2_block1/Conv_0/kernel"] == 16 * 16  # the stride-2 conv
  assert positions["stage2_block1/proj_conv/kernel"] == 16 * 16
  assert positions["stage3_block3/Conv_1/kernel"] == 8 * 8
  assert positions["classifier/kernel"] == 1


def test_resnet50_is_v1_5_with_torchvision_padding():
  """ImageNet stem 224 -> 112 -> 56 (max-pool); the stride sits on the 3x3 conv, not the 1x1."""
  model = models.get_model("resnet50", num_classes=1000)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                                               train=False))
  positions = models.output_positions(model, abstract, (1, 224, 224, 3))
  block = abstract["params"]["stage2_block1"]
  assert block["Conv_0"]["kernel"].shape[:2] == (1, 1)
  assert block["Conv_1"]["kernel"].shape[:2] == (3, 3)
  assert positions["stem_conv/kernel"] == 112 * 112
  assert positions["stage1_block1/Conv_0/kernel"] == 56 * 56
  assert positions["stage2_block1/Conv_0/kernel"] == 56 * 56
  assert positions["stage2_block1/Conv_1/kernel"] == 28 * 28
  assert positions["stage2_block1/proj_conv/kernel"] == 28 * 28
  assert positions["stage4_block3/Conv_2/kernel"] == 7 * 7
  assert positions["classifier/kernel"] == 1

  # Padding k // 2 on both sides (torchvision), not 'SAME' (which pads a stride-2 conv only at
  # the end): compare the stem and the max-pool with an explicit lax reference.
  tiny = models.get_model("resnet50", num_classes=3, width=4)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 16, 16, 3))
  variables = tiny.init(jax.random.PRNGKey(0), x, train=False)
  _, state = tiny.apply(variables, x, train=False, capture_intermediates=True,
                        mutable=["intermediates"])
  kernel = variables["params"]["stem_conv"]["kernel"]
  expected = jax.lax.conv_general_dilated(x, kernel, (2, 2), [(3, 3), (3, 3)],
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
  inter = state["intermediates"]
  np.testing.assert_allclose(inter["stem_conv"]["__call__"][0], expected, rtol=1e-5, atol=1e-5)
  pooled = jax.lax.reduce_window(jax.nn.relu(inter["stem_bn"]["__call__"][0]), -jnp.inf,
                                 jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 [(0, 0), (1, 1), (1, 1), (0, 0)])
  first_1x1 = variables["params"]["stage1_block1"]["Conv_0"]["kernel"][0, 0]
  np.testing.assert_allclose(inter["stage1_block1"]["Conv_0"]["__call__"][0],
                             pooled @ first_1x1, rtol=1e-5, atol=1e-5)


def test_zero_init_residual():
  for name, last_bn in [("resnet_narrow", "BatchNorm_1"), ("resnet50", "BatchNorm_2")]:
    model = models.get_model(name, num_classes=10, width=4, zero_init_residual=True)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    blocks = [k for k in params if "_block" in k]
    assert blocks
    for k in blocks:
      for bn, v in params[k].items():
        if "scale" in v:
          np.testing.assert_array_equal(v["scale"], 0.0 if bn == last_bn else 1.0)
    np.testing.assert_array_equal(params["stem_bn"]["scale"], 1.0)
  default = models.get_model("resnet_narrow", num_classes=10, width=4).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)["params"]
  np.testing.assert_array_equal(default["stage1_block1"]["BatchNorm_1"]["scale"], 1.0)
  with pytest.raises(ValueError, match="zero_init_residual.*lenet300_100"):
    models.get_model("lenet300_100", num_classes=10, zero_init_residual=True)


def test_unknown_model_and_bad_arguments():
  assert models.MODEL_NAMES == tuple(sorted(models.MODELS))
  with pytest.raises(ValueError, match=r"model must be one of \[.*'resnet20'.*'resnet21'"):
    models.get_model("resnet21", num_classes=10)
  with pytest.raises(ValueError, match="width"):
    models.get_model("resnet20", num_classes=10, width=0)
  with pytest.raises(ValueError, match="num_classes"):
    models.get_model("resnet20", num_classes=0)
