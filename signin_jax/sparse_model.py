"""A converted sparse model: what runs each planned layer, and its plan as a table.

``SparseModel.__call__`` applies the unchanged Flax model with ``flax.linen.intercept_methods``
replacing each planned ``Dense`` / ``Conv`` call by its product for the batch size (the plan of
the nearest planned batch size, in log-scale, for one that was not planned), and each
BatchNorm that lost channels by Flax's eval-mode formula on the channels kept. Made by
``sparse_inference.convert`` / ``from_plan`` / ``load``.
"""

import math
from typing import Dict, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from signin_jax import sparse_channels
from signin_jax import sparse_kernels


def path_str(path) -> str:
  return "/".join(str(p) for p in path)


class Layer(NamedTuple):
  """A planned Dense or Conv layer: static facts (the arrays live in SparseModel.arrays)."""
  name: str
  kind: str  # 'dense' or 'conv'
  spec: sparse_kernels.LayerSpec
  rows_per_sample: int  # Dense on [B, ..., F]: rows of the product per sample
  in_features: int  # after removed input channels
  has_bias: bool


def _nearest(planned: Sequence[int], batch: int) -> int:
  return min(planned, key=lambda b: (abs(math.log(b) - math.log(batch)), b))


class SparseModel:
  """A converted model: ``sparse_model(x)`` gives the logits; ``plan`` says how."""

  def __init__(self, model, variables, layers: Dict[str, Layer], arrays, norms, plan,
               apply_kwargs):
    self.model = model
    self.variables = variables  # what the model's own code still reads
    self.layers = layers
    self.arrays = arrays  # {layer: {'product/name': array, 'bias': array}} and BatchNorms
    self.norms = norms  # {BatchNorm path: (kept channel count)}
    self.plan = plan
    self.apply_kwargs = dict(apply_kwargs or {})
    self.source = None  # (variables, masks) it was converted from, for save()
    self._jitted = jax.jit(self._apply)

  def __call__(self, x):
    return self._jitted(self.variables, self.arrays, x)

  def products_at(self, batch: int) -> Dict[str, str]:
    """The product each layer runs at this batch size."""
    planned = [int(b) for b in self.plan["batch_sizes"]]
    b = str(_nearest(planned, batch))
    return {name: entry["products"][b] for name, entry in self.plan["layers"].items()}

  def _apply(self, variables, arrays, x):
    products = self.products_at(x.shape[0])
    with nn.intercept_methods(self._interceptor(arrays, products)):
      return self.model.apply(variables, x, **self.apply_kwargs)

  def _interceptor(self, arrays, products):
    def interceptor(next_fun, args, kwargs, context):
      module = context.module
      if context.method_name != "__call__":
        return next_fun(*args, **kwargs)
      name = path_str(module.scope.path)
      if name in self.norms and isinstance(module, nn.BatchNorm):
        return _batch_norm(module, args[0], arrays[name], kwargs)
      layer = self.layers.get(name)
      if layer is None or not sparse_channels.is_layer(module):
        return next_fun(*args, **kwargs)
      return _run_layer(layer, products[name], arrays[name], args[0])
    return interceptor


def _run_layer(layer: Layer, product_name: str, arrays, x):
  product = sparse_kernels.products(layer.kind)[product_name]
  spec = layer.spec
  if x.shape[-1] != layer.in_features:
    raise ValueError(f"layer '{layer.name}' was converted for {layer.in_features} input "
                     f"features, got an input of shape {x.shape}.")
  x = x.astype(spec.dtype)
  if layer.kind == "dense":
    lead = x.shape[:-1]
    y = product.apply(x.reshape((-1, x.shape[-1])), arrays[product_name], spec)
    y = y.reshape(lead + (y.shape[-1],))
  else:
    y = product.apply(x, arrays[product_name], spec)
  if layer.has_bias:
    y = y + arrays["bias"].reshape((1,) * (y.ndim - 1) + (-1,))
  return y


def _batch_norm(module, x, arrays, kwargs):
  """Flax's eval-mode BatchNorm (linen.normalization._normalize) on the kept channels."""
  if not nn.merge_param("use_running_average", module.use_running_average,
                        kwargs.get("use_running_average")):
    raise ValueError(f"BatchNorm '{path_str(module.scope.path)}' lost channels at conversion "
                     "and runs only in eval mode (use_running_average=True).")
  y = x - arrays["mean"]
  mul = lax.rsqrt(arrays["var"] + module.epsilon)
  args = [x]
  if module.use_scale:
    scale = arrays["scale"]
    if not module.force_float32_reductions:
      scale = jnp.asarray(scale, module.param_dtype)
    mul = mul * scale
    args.append(scale)
  y = y * mul
  if module.use_bias:
    bias = arrays["bias"]
    if not module.force_float32_reductions:
      bias = jnp.asarray(bias, module.param_dtype)
    y = y + bias
    args.append(bias)
  return jnp.asarray(y, nn.dtypes.canonicalize_dtype(*args, dtype=module.dtype))


def format_plan(plan) -> str:
  """The plan as a table: per layer, shape, kept weights, channels removed, product per batch."""
  batches = [str(b) for b in plan["batch_sizes"]]
  rows = [["layer", "kernel", "kept", "density", "removed out/in"]
          + [f"product @{b}" for b in batches] + [f"dense/chosen us @{b}" for b in batches]]
  for name, e in plan["layers"].items():
    times = []
    for b in batches:
      measured = e["measured_us"].get(b, {})
      chosen = e["products"][b]
      times.append(f"{measured.get('dense', float('nan')):.1f}/{measured.get(chosen, float('nan')):.1f}"
                   if measured else "-")
    rows.append([name, "x".join(map(str, e["kernel_shape"])), str(e["kept"]),
                 f"{e['density']:.3f}", f"{len(e['out_removed'])}/{len(e['in_removed'])}"]
                + [e["products"][b] for b in batches] + times)
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
  for b in batches:
    e2e = plan["end_to_end_us"].get(b)
    if e2e:
      lines.append(f"end to end @{b}: " + ", ".join(
          f"{k} {v:.1f} us" for k, v in e2e.items() if k != "chosen")
                   + f"; chosen: {e2e['chosen']}")
  for name, entry in plan["norms"].items():
    lines.append(f"BatchNorm {name}: keeps {len(entry['kept'])} channels")
  for name, channels in plan["kept_constant"].items():
    lines.append(f"{name}: dead channels {channels} kept (nonzero constant after activation)")
  for name, why in plan["why_not_removed"].items():
    lines.append(f"{name}: dead channels kept: {why}")
  for name, why in plan["not_planned"].items():
    lines.append(f"{name}: runs as written ({why})")
  return "\n".join(lines)
