"""Flax Linen models: plain modules that know nothing of sparsity.

Every conv and dense weight is an ordinary ``kernel`` parameter (ndim >= 2), which is how the
masks and Sign-In find them. Call convention (as flax examples/imagenet)::

    logits, new_state = model.apply(variables, images, train=True, mutable=["batch_stats"])
    logits = model.apply(variables, images, train=False)

Images are NHWC floats; logits are float32 whatever the compute ``dtype``; parameters are
float32. Models without BatchNorm (``lenet300_100``) have no ``batch_stats`` collection.
``bn_axis_name`` names the ``pmap`` axis over which BatchNorm averages its batch statistics;
under ``jit`` over a device Mesh the batch is one global array and no axis name is needed.

Initialisation: convs use Kaiming-normal with fan_out (``variance_scaling(2, 'fan_out',
'normal')``, as torchvision's ResNets); dense layers use LeCun-normal (flax's default);
BatchNorm starts at scale 1, bias 0. These are our choices (the paper does not state its init).
"""

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
  """Two 3x3 convs; a 1x1 conv + BN projection shortcut when the shape changes."""
  features: int
  strides: int
  conv: Callable
  norm: Callable

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features, (3, 3))(y)
    y = self.norm()(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = self.conv(self.features, (1, 1), (self.strides, self.strides), name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  """ResNet v1.5 bottleneck: 1x1, 3x3 (carrying the stride), 1x1 with 4x the features."""
  features: int
  strides: int
  conv: Callable
  norm: Callable

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.features, (1, 1))(x)))
    y = self.conv(self.features, (3, 3), (self.strides, self.strides))(y)
    y = nn.relu(self.norm()(y))
    y = self.norm()(self.conv(self.features * 4, (1, 1))(y))
    if x.shape[-1] != self.features * 4 or self.strides != 1:
      x = self.conv(self.features * 4, (1, 1), (self.strides, self.strides),
                    name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A ResNet: a stem, stages of residual blocks, global average pooling, a dense classifier.

  ``stem='cifar'``: 3x3 conv, stride 1, no max-pool. ``stem='imagenet'``: 7x7 conv, stride 2,
  then a 3x3 max-pool with stride 2. Stage i has ``stage_sizes[i]`` blocks with
  ``widths[i]`` features; every stage but the first starts with stride 2.
  """
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  block: Any
  num_classes: int
  stem: str = "cifar"
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype, axis_name=self.bn_axis_name)
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(self.widths[0], (7, 7), (2, 2), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    else:
      x = conv(self.widths[0], (3, 3), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(size):
        x = self.block(width, strides=2 if i > 0 and j == 0 else 1, conv=conv, norm=norm,
                       name=f"stage{i + 1}_block{j + 1}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return x.astype(jnp.float32)


class MLP(nn.Module):
  """A fully connected ReLU network on flattened inputs (LeNet-300-100: hidden=(300, 100))."""
  hidden: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for i, h in enumerate(self.hidden):
      x = nn.relu(nn.Dense(h, dtype=self.dtype, name=f"dense{i + 1}")(x))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(jnp.float32)


class SmallCNN(nn.Module):
  """Two 3x3 conv + BN + ReLU + 2x2 max-pool stages, then a hidden dense layer."""
  num_classes: int
  widths: Sequence[int] = (32, 64)
  hidden: int = 128
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype, axis_name=self.bn_axis_name)
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      x = nn.Conv(width, (3, 3), use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                  name=f"conv{i + 1}")(x)
      x = nn.relu(norm(name=f"bn{i + 1}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="dense1")(x))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(jnp.float32)


def _scaled(widths, width, default):
  """Widths scaled so that the first equals `width` (None: the model's own widths)."""
  if width is None:
    return tuple(widths)
  return tuple(max(1, w * width // default) for w in widths)


def _resnet20(num_classes, width, dtype, bn_axis_name):
  return ResNet((3, 3, 3), _scaled((16, 32, 64), width, 16), BasicBlock, num_classes,
                "cifar", dtype, bn_axis_name)


def _resnet_narrow(num_classes, width, dtype, bn_axis_name):
  return ResNet((3, 3, 3), _scaled((8, 16, 32), width, 8), BasicBlock, num_classes,
                "cifar", dtype, bn_axis_name)


def _resnet18_cifar(num_classes, width, dtype, bn_axis_name):
  return ResNet((2, 2, 2, 2), _scaled((64, 128, 256, 512), width, 64), BasicBlock, num_classes,
                "cifar", dtype, bn_axis_name)


def _resnet50(num_classes, width, dtype, bn_axis_name):
  return ResNet((3, 4, 6, 3), _scaled((64, 128, 256, 512), width, 64), BottleneckBlock,
                num_classes, "imagenet", dtype, bn_axis_name)


def _lenet300_100(num_classes, width, dtype, bn_axis_name):
  del bn_axis_name  # no BatchNorm
  return MLP(_scaled((300, 100), width, 300), num_classes, dtype)


def _small_cnn(num_classes, width, dtype, bn_axis_name):
  widths = _scaled((32, 64), width, 32)
  return SmallCNN(num_classes, widths, 4 * widths[-1] // 2, dtype, bn_axis_name)


MODELS = {
    "resnet20": _resnet20,
    "resnet18_cifar": _resnet18_cifar,
    "resnet50": _resnet50,
    "lenet300_100": _lenet300_100,
    "small_cnn": _small_cnn,
    "resnet_narrow": _resnet_narrow,
}


def get_model(name: str, *, num_classes: int, width: Optional[int] = None,
              dtype=jnp.float32, bn_axis_name: Optional[str] = None) -> nn.Module:
  """The model called `name`; `width` sets its first layer's width (the rest scale along)."""
  if name not in MODELS:
    raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}.")
  if width is not None and (not isinstance(width, int) or width < 1):
    raise ValueError(f"width must be a positive int or None, got {width!r}.")
  return MODELS[name](num_classes, width, dtype, bn_axis_name)


def count_params(params) -> int:
  return sum(int(p.size) for p in jax.tree.leaves(params))


def output_positions(model: nn.Module, variables, input_shape) -> dict:
  """For each kernel, the number of output positions it is applied at: H_out * W_out for a
  conv, 1 for a dense layer. Keyed by the kernel's '/'-joined parameter path, e.g.
  'stage1_block1/Conv_0/kernel'. Found by running the model abstractly (``jax.eval_shape``)
  and recording every Conv/Dense output shape, never by hand.
  """
  shapes = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, (nn.Conv, nn.Dense)) and context.method_name == "__call__":
      path = "/".join(context.module.scope.path) + "/kernel"
      spatial = out.shape[1:-1]
      shapes[path] = math.prod(spatial)  # 1 for a dense layer (no spatial axes)
    return out

  def run(x):
    with nn.intercept_methods(record):
      return model.apply(variables, x, train=False)

  jax.eval_shape(run, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  return shapes
