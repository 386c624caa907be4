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
BatchNorm starts at scale 1, bias 0, except that ``zero_init_residual=True`` starts the last
BatchNorm scale of every residual branch at 0 (each block then begins as its shortcut, as
torchvision's flag of that name; off by default). These are our choices (the paper does not
state its init).
"""

import functools
import math
import numbers
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel_size: Sequence[int], strides: Sequence[int] = (1, 1), *,
          dtype: Any, name: Optional[str] = None) -> nn.Conv:
  """A bias-free conv (BatchNorm follows) padded k // 2 on each side, as torchvision.

  Same output size as 'SAME' (ceil(H / stride)), but 'SAME' pads a stride-2 conv only at
  the end, which shifts the sampling grid of every strided layer relative to torchvision.
  Called inside a parent's compact method, so it is named Conv_<i> in the parent.
  """
  return nn.Conv(features, kernel_size, strides, padding=[(k // 2, k // 2) for k in kernel_size],
                 use_bias=False, kernel_init=conv_init, dtype=dtype, name=name)


def _last_norm(norm: Callable, zero_init: bool) -> nn.Module:
  """The residual branch's last BatchNorm; with `zero_init` its scale starts at 0."""
  return norm(scale_init=nn.initializers.zeros) if zero_init else norm()


class BasicBlock(nn.Module):
  """Two 3x3 convs; a 1x1 conv + BN projection shortcut when the shape changes."""
  features: int
  strides: int
  conv: Callable
  norm: Callable
  zero_init_last_bn: bool = False

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features, (3, 3))(y)
    y = _last_norm(self.norm, self.zero_init_last_bn)(y)
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
  zero_init_last_bn: bool = False

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.features, (1, 1))(x)))
    y = self.conv(self.features, (3, 3), (self.strides, self.strides))(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features * 4, (1, 1))(y)
    y = _last_norm(self.norm, self.zero_init_last_bn)(y)
    if x.shape[-1] != self.features * 4 or self.strides != 1:
      x = self.conv(self.features * 4, (1, 1), (self.strides, self.strides),
                    name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A ResNet: a stem, stages of residual blocks, global average pooling, a dense classifier.

  ``stem='cifar'``: 3x3 conv, stride 1, no max-pool. ``stem='imagenet'``: 7x7 conv, stride 2,
  then a 3x3 max-pool with stride 2 (convs and pool padded k // 2 on each side, as
  torchvision). Stage i has ``stage_sizes[i]`` blocks with ``widths[i]`` features; every stage
  but the first starts with stride 2.
  ``zero_init_residual`` starts the last BatchNorm scale of every block at 0.
  """
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  block: Any
  num_classes: int
  stem: str = "cifar"
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.stem not in ("cifar", "imagenet"):
      raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}.")
    conv = functools.partial(_conv, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype, axis_name=self.bn_axis_name)
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(self.widths[0], (7, 7), (2, 2), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(self.widths[0], (3, 3), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(size):
        x = self.block(width, strides=2 if i > 0 and j == 0 else 1, conv=conv, norm=norm,
                       zero_init_last_bn=self.zero_init_residual,
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
      x = _conv(width, (3, 3), dtype=self.dtype, name=f"conv{i + 1}")(x)
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
  return SmallCNN(num_classes, widths, 2 * widths[-1], dtype, bn_axis_name)


MODELS = {
    "resnet20": _resnet20,
    "resnet18_cifar": _resnet18_cifar,
    "resnet50": _resnet50,
    "lenet300_100": _lenet300_100,
    "small_cnn": _small_cnn,
    "resnet_narrow": _resnet_narrow,
}
MODEL_NAMES = tuple(sorted(MODELS))


def _is_positive_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 1


def get_model(name: str, *, num_classes: int, width: Optional[int] = None,
              dtype=jnp.float32, bn_axis_name: Optional[str] = None,
              zero_init_residual: bool = False) -> nn.Module:
  """The model called `name` (one of ``MODEL_NAMES``).

  `width` is the base width: the first layer's width, with every later width scaled by the
  same factor (rounded down, at least 1); None keeps the model's own widths (e.g. 16 for
  resnet20, 8 for resnet_narrow, 300 for lenet300_100). `dtype` is the compute dtype
  (parameters stay float32, logits are float32). `bn_axis_name` is the pmap axis BatchNorm
  averages its statistics over. `zero_init_residual` (residual models only) starts the last
  BatchNorm scale of every block at 0.
  """
  if name not in MODELS:
    raise ValueError(f"model must be one of {list(MODEL_NAMES)}, got {name!r}.")
  if not _is_positive_int(num_classes):
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
  if width is not None and not _is_positive_int(width):
    raise ValueError(f"width must be a positive int or None, got {width!r}.")
  model = MODELS[name](num_classes, width, dtype, bn_axis_name)
  if zero_init_residual:
    if not isinstance(model, ResNet):
      residual = [n for n in MODEL_NAMES if isinstance(MODELS[n](1, None, dtype, None), ResNet)]
      raise ValueError(f"zero_init_residual applies only to models {residual}, "
                       f"got model {name!r}.")
    model = model.clone(zero_init_residual=True)
  return model


def count_params(params) -> int:
  """The number of scalars in a pytree of arrays (or of ShapeDtypeStructs)."""
  return sum(int(p.size) for p in jax.tree.leaves(params))


def output_positions(model: nn.Module, variables, input_shape) -> dict:
  """For each kernel, the number of output positions it is applied at: H_out * W_out for a
  conv, 1 for a dense layer. Keyed by the kernel's '/'-joined parameter path, e.g.
  'stage1_block1/Conv_0/kernel' (the form ``masks.summary(..., positions=...)`` reads).
  Found by running the model abstractly (``jax.eval_shape``, so no FLOPs are spent and
  `variables` may themselves be ``ShapeDtypeStruct``s) and recording every Conv/Dense
  output shape with a method interceptor, never by hand.
  """
  shapes = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, (nn.Conv, nn.Dense)) and context.method_name == "__call__":
      path = "/".join(context.module.scope.path) + "/kernel"
      spatial = out.shape[1:-1]
      shapes[path] = math.prod(spatial)  # 1 for a dense layer (no spatial axes)
    return out

  def run(variables, x):
    with nn.intercept_methods(record):
      return model.apply(variables, x, train=False)

  jax.eval_shape(run, variables, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  return shapes
