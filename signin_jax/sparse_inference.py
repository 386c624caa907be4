"""Sparse inference for any Flax Linen model built from Dense and Conv layers, unchanged.

``convert(model, variables, masks, input_shape=...)`` returns a :class:`SparseModel` whose
``__call__`` runs ``model.apply`` with every ``flax.linen.Dense`` and ``flax.linen.Conv``
call replaced, through ``flax.linen.intercept_methods``, by the product that was *measured*
fastest for that layer and batch size when the model was converted (``sparse_kernels.py``:
XLA's dense dot or conv, BCSR, a JAX gather kernel, scipy, and numba CSR / direct-convolution
kernels run by XLA as FFI custom calls). The model's code is not touched and knows nothing of
sparsity; its other modules and functions run as written.

Output channels whose every weight is pruned are removed physically where their value is
provably zero at every use (``sparse_channels.py``): after an eval-mode BatchNorm and a relu
that maps its constant to 0, with the consumers' matching input channels found from the
traced dataflow. A channel that carries a nonzero constant is kept.

The per-layer plan (products per batch size, channels removed, what each candidate measured)
is a JSON-able dict, ``SparseModel.plan``, printed by :func:`format_plan` and saved in the
export's metadata; :func:`from_plan` rebuilds a SparseModel from it without measuring.
Conversion checks the sparse model's logits against the masked dense model's.

Choices: a batch size that was not planned uses the plan of the nearest planned one (in
log-scale); the whole-model plan of a batch size is the fastest end to end of (a) each layer's
fastest product, (b) each layer's fastest feature-major product (XLA then needs no transposes
between consecutive such layers) and (c) XLA's dense products everywhere, where (a) or (b) must
be at least 5 % faster than (c) to be chosen, so that the sparse model is not slower than
dense where measuring can tell. Flax NNX is not supported: its modules are
Python objects called directly, with no method interception; convert an NNX model's state with
``nnx.bridge`` to Linen, or use Linen. Module dtypes: see ``sparse_kernels.py``.

Command line: ``python -m signin_jax.sparse_inference WORKDIR`` converts a finished run (its
``config.json`` and ``final_weights.npz``) and reports the measured speed of the sparse model
against the dense one at batch 1 and the run's batch size, with the plan.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from signin_jax import sparse_channels
from signin_jax import sparse_kernels
from signin_jax.sparse_model import Layer, SparseModel, format_plan, path_str

PLAN_VERSION = 1
Measure = Callable[[str, int, Dict[str, Callable[[], Any]]], Dict[str, float]]


# --------------------------------------------------------------------------------------------
# Masks and parameters.

def full_masks(params, masks):
  """`masks` checked against `params` leaf for leaf, with ``None`` leaves (unmasked, as
  sparse_export returns them) made all True; a clear error names the first tensor that does
  not fit."""
  if not isinstance(masks, Mapping):
    raise ValueError(f"masks must be a nested mapping like the parameters, got "
                     f"{type(masks).__name__}.")

  def walk(p, m, path):
    if isinstance(p, Mapping):
      if m is None:
        return {k: walk(v, None, path + (k,)) for k, v in p.items()}
      if not isinstance(m, Mapping):
        raise ValueError(f"masks['{path_str(path)}'] is a tensor where the parameters have a "
                         f"subtree ({sorted(p)}).")
      for k in m:
        if k not in p:
          raise ValueError(f"masks has a tensor '{path_str(path + (k,))}' that the parameters "
                           "do not have.")
      for k in p:
        if k not in m:
          raise ValueError(f"masks has no entry for parameter '{path_str(path + (k,))}' "
                           "(give None or an all-True mask for a dense one).")
      return {k: walk(v, m[k], path + (k,)) for k, v in p.items()}
    name = path_str(path)
    if m is None:
      return np.ones(np.shape(p), bool)
    if isinstance(m, Mapping):
      raise ValueError(f"masks['{name}'] is a subtree where the parameter is a tensor.")
    m = np.asarray(m)
    if m.shape != np.shape(p):
      raise ValueError(f"mask '{name}' has shape {m.shape}, its parameter {np.shape(p)}.")
    if not (m.dtype == bool or np.issubdtype(m.dtype, np.integer)) or \
        not np.isin(m, (0, 1)).all():
      raise ValueError(f"mask '{name}' must hold booleans (or 0/1), got {m.dtype} values.")
    return m.astype(bool)

  return walk(params, masks, ())


def masked_variables(variables, masks):
  """The variables with ``params`` multiplied by their masks (exact zeros where pruned)."""
  params = jax.tree.map(lambda p, m: np.where(np.asarray(m, bool), np.asarray(p),
                                              np.zeros((), np.asarray(p).dtype)),
                        variables["params"], masks)
  return dict(variables, params=params)


def _node(tree, path):
  for name in path:
    tree = tree[name]
  return tree


# --------------------------------------------------------------------------------------------
# Layers and their plan.

def _supported(call: sparse_channels.Call) -> Optional[str]:
  module = call.module
  if isinstance(module, nn.Dense):
    if module.dot_general is not None or module.dot_general_cls is not None:
      return "a custom dot_general"
    return None
  if module.conv_general_dilated is not None or module.conv_general_dilated_cls is not None:
    return "a custom conv_general_dilated"
  if module.feature_group_count != 1 or module.mask is not None:
    return "grouped or built-in-masked convolution"
  kernel_size = ((module.kernel_size,) if isinstance(module.kernel_size, int)
                 else tuple(module.kernel_size))
  if len(call.in_shape) != len(kernel_size) + 2:
    return "an input without exactly one batch dimension"
  padding = module.padding
  if isinstance(padding, str) and padding.upper() not in ("SAME", "VALID"):
    return f"padding {padding!r}"
  return None


def _broadcast(value, n):
  if value is None:
    value = 1
  return (value,) * n if isinstance(value, int) else tuple(value)


def _spec(call, params, kernel_shape) -> sparse_kernels.LayerSpec:
  module = call.module
  args = [jnp.zeros((), call.in_dtype), jnp.zeros((), params["kernel"].dtype)]
  if "bias" in params:
    args.append(jnp.zeros((), params["bias"].dtype))
  dtype = jnp.dtype(nn.dtypes.canonicalize_dtype(*args, dtype=module.dtype))
  if isinstance(module, nn.Dense):
    return sparse_kernels.LayerSpec(dtype=dtype, precision=module.precision,
                                    kernel_shape=tuple(kernel_shape))
  n = len(kernel_shape) - 2
  padding = module.padding
  if isinstance(padding, str):
    padding = padding.upper()
  elif isinstance(padding, int):
    padding = ((padding, padding),) * n
  else:
    padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
  return sparse_kernels.LayerSpec(
      dtype=dtype, precision=module.precision, strides=_broadcast(module.strides, n),
      padding=padding, input_dilation=_broadcast(module.input_dilation, n),
      kernel_dilation=_broadcast(module.kernel_dilation, n), kernel_shape=tuple(kernel_shape))


def _dead_channels(call, params, mask, dtype):
  """(dead output channels, their constant output) of a layer: bias, or 0 without one."""
  dead = np.flatnonzero(~np.asarray(mask, bool).reshape(-1, mask.shape[-1]).any(axis=0))
  if "bias" in params:
    values = np.asarray(jnp.asarray(np.asarray(params["bias"])[dead]).astype(dtype))
  else:
    values = np.zeros(dead.shape, dtype)
  return [int(c) for c in dead], values


def _slice(kernel, mask, bias, out_removed, in_removed):
  keep_out = np.setdiff1d(np.arange(kernel.shape[-1]), out_removed)
  keep_in = np.setdiff1d(np.arange(kernel.shape[-2]), in_removed)
  kernel = np.take(np.take(kernel, keep_out, axis=-1), keep_in, axis=-2)
  mask = np.take(np.take(mask, keep_out, axis=-1), keep_in, axis=-2)
  if bias is not None:
    bias = bias[keep_out]
  return kernel, mask, bias


def measure_median(name: str, batch: int, fns: Dict[str, Callable[[], Any]], *,
                   rounds: int = 7, min_round_seconds: float = 0.005,
                   clock: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
  """Seconds per call of each function: the median over `rounds` of one round's mean, the
  functions taking turns within every round (so a change of machine load hits them alike).
  `clock`: wall time by default; ``time.process_time`` (this process's CPU time, all its
  threads) leaves out the time other processes hold the CPU, for a shared machine."""
  del name, batch
  calls = {}
  for key, fn in fns.items():
    jax.block_until_ready(fn())  # compile and warm up
    start = clock()
    jax.block_until_ready(fn())
    once = max(clock() - start, 1e-6)
    calls[key] = max(1, min(1000, int(min_round_seconds / once)))
  times = {key: [] for key in fns}
  for _ in range(rounds):
    for key, fn in fns.items():
      start = clock()
      for _ in range(calls[key]):
        out = fn()
      jax.block_until_ready(out)
      times[key].append((clock() - start) / calls[key])
  return {key: statistics.median(values) for key, values in times.items()}


# --------------------------------------------------------------------------------------------
# Conversion.

def convert(model, variables, masks, *, input_shape: Sequence[int],
            batch_sizes: Sequence[int] = (1, 128), apply_kwargs: Optional[Mapping] = None,
            products: Optional[Sequence[str]] = None, measure: Optional[Measure] = None,
            remove_channels: bool = True, verify: bool = True,
            input_dtype=jnp.float32) -> SparseModel:
  """The sparse model of ``model`` with ``variables`` (``{'params': ..., 'batch_stats':
  ...}``) and ``masks`` (bools like ``variables['params']``), planned for ``batch_sizes`` on
  inputs of shape ``[batch, *input_shape]``.

  ``apply_kwargs``: extra arguments of ``model.apply`` (e.g. ``{'train': False}``).
  ``products``: the candidates to measure (default: all of ``sparse_kernels``). ``measure``:
  ``(layer, batch, {candidate: fn}) -> {candidate: seconds}`` (default
  :func:`measure_median`); a test can inject one to force a product. ``remove_channels``:
  remove provably-zero channels. ``verify``: check the logits against the masked dense
  model's (float32 layers: within 1e-5 * max(1, |logit|)).
  """
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a Flax Linen module (flax.linen.Module), got "
                    f"{type(model).__name__}; Flax NNX modules are called directly and cannot "
                    "be intercepted: convert with a Linen model (nnx.bridge) instead.")
  if not isinstance(variables, Mapping) or "params" not in variables:
    raise ValueError("variables must be a mapping with a 'params' collection.")
  variables = jax.device_get(dict(variables))
  masks = full_masks(variables["params"], jax.device_get(masks))
  batch_sizes = _check_batch_sizes(batch_sizes)
  apply_kwargs = dict(apply_kwargs or {})
  source = (variables, masks)
  variables = masked_variables(variables, masks)
  analysis = _analyze(model, variables, masks, input_shape, input_dtype, apply_kwargs,
                      remove_channels)
  plan = {"version": PLAN_VERSION, "batch_sizes": list(batch_sizes), "layers": {},
          "norms": {k: {"kept": v} for k, v in analysis["removal"].norm_kept.items()},
          "kept_constant": analysis["removal"].kept_constant,
          "why_not_removed": analysis["removal"].why_not,
          "not_planned": analysis["not_planned"], "end_to_end_us": {}}
  measure = measure or measure_median
  layers, prepared = {}, {}
  for name, (call, kernel, mask, bias, in_removed, out_removed) in analysis["layers"].items():
    layers[name], plan["layers"][name], prepared[name] = _plan_layer(
        name, call, kernel, mask, bias, in_removed, out_removed, batch_sizes, products, measure)
  build = lambda plan: _build(model, variables, layers, prepared, plan, apply_kwargs)
  _choose_end_to_end(build, plan, model, variables, input_shape, input_dtype, measure,
                     apply_kwargs)
  sparse = build(plan)
  if verify:
    verify_logits(sparse, model, variables, input_shape, input_dtype)
  sparse.source = source
  return sparse


def _check_batch_sizes(batch_sizes):
  sizes = tuple(batch_sizes)
  if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
    raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes!r}.")
  return tuple(sorted(set(sizes)))


def _analyze(model, variables, masks, input_shape, input_dtype, apply_kwargs, remove_channels):
  example = jax.ShapeDtypeStruct((2,) + tuple(input_shape), input_dtype)
  calls, eqns, outputs, shapes = sparse_channels.trace(model, variables, example, apply_kwargs)
  seen, not_planned, candidates = {}, {}, {}
  for tag, call in enumerate(calls):
    if not sparse_channels.is_layer(call.module):
      continue
    name = path_str(call.path)
    if name in seen:
      continue
    seen[name] = tag
    why = _supported(call)
    if why:
      not_planned[name] = why
    else:
      candidates[name] = tag
  dead = {}
  for name, tag in candidates.items():
    params = _node(variables["params"], calls[tag].path)
    mask = np.asarray(_node(masks, calls[tag].path)["kernel"], bool)
    channels, values = _dead_channels(calls[tag], params, mask,
                                      _spec(calls[tag], params, mask.shape).dtype)
    if channels:
      dead[tag] = (channels, values)
  if remove_channels:
    planned = {calls[tag].path for tag in candidates.values()}
    removal = sparse_channels.analyze(calls, eqns, outputs, shapes, variables, dead, planned)
  else:
    removal = sparse_channels.Removal({}, {}, {}, {}, {})
  layers = {}
  for name, tag in candidates.items():
    params = _node(variables["params"], calls[tag].path)
    kernel = np.asarray(params["kernel"])
    mask = np.asarray(_node(masks, calls[tag].path)["kernel"], bool)
    bias = np.asarray(params["bias"]) if "bias" in params else None
    out_removed = removal.out_removed.get(name, [])
    in_removed = removal.in_removed.get(name, [])
    kernel, mask, bias = _slice(kernel, mask, bias, out_removed, in_removed)
    layers[name] = (calls[tag], kernel, mask, bias, in_removed, out_removed)
  return {"layers": layers, "removal": removal, "not_planned": not_planned,
          "calls": calls}


def _plan_layer(name, call, kernel, mask, bias, in_removed, out_removed, batch_sizes,
                allowed, measure):
  kind = "dense" if isinstance(call.module, nn.Dense) else "conv"
  params = {"kernel": kernel}
  if bias is not None:
    params["bias"] = bias
  spec = _spec(call, params, kernel.shape)
  offered, refused = sparse_kernels.candidates(kind, mask, spec, allowed)
  if "dense" not in offered:
    offered = dict(dense=sparse_kernels.products(kind)["dense"], **offered)
  in_features = call.in_shape[-1] - len(in_removed)
  rows = math.prod(call.in_shape[1:-1]) if kind == "dense" else 1
  prepared = {n: sparse_kernels.prepare_layer(p, kernel, mask, spec) for n, p in offered.items()}
  layer = Layer(name, kind, spec, rows, in_features, bias is not None)
  entry = {"kind": kind, "kernel_shape": list(kernel.shape), "kept": int(mask.sum()),
           "density": float(mask.mean()) if mask.size else 0.0, "dtype": spec.dtype.name,
           "out_removed": list(out_removed), "in_removed": list(in_removed),
           "refused": refused, "products": {}, "measured_us": {}}
  for batch in batch_sizes:
    shape = ((batch * rows, in_features) if kind == "dense"
             else (batch,) + tuple(call.in_shape[1:-1]) + (in_features,))
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), call.in_dtype)
    fns = {}
    for n, product in offered.items():
      f = jax.jit(lambda x, a, product=product: product.apply(x.astype(spec.dtype), a, spec))
      fns[n] = lambda f=f, a=prepared[n]: f(x, a)
    times = measure(name, batch, fns)
    missing = set(fns) - set(times)
    if missing:
      raise ValueError(f"measure gave no time for {sorted(missing)} of layer '{name}'.")
    order = list(offered)
    best = min(order, key=lambda n: (times[n], order.index(n)))
    entry["products"][str(batch)] = best
    entry["measured_us"][str(batch)] = {n: round(times[n] * 1e6, 2) for n in order}
  if bias is not None:
    prepared["bias"] = jnp.asarray(jnp.asarray(bias).astype(spec.dtype))
  return layer, entry, prepared


def _norm_arrays(variables, name, kept):
  path = name.split("/")
  stats = _node(variables["batch_stats"], path)
  params = _node(variables["params"], path) if _has(variables["params"], path) else {}
  kept = np.asarray(kept, np.int64)
  arrays = {"mean": jnp.asarray(np.asarray(stats["mean"])[kept]),
            "var": jnp.asarray(np.asarray(stats["var"])[kept])}
  for key in ("scale", "bias"):
    if key in params:
      arrays[key] = jnp.asarray(np.asarray(params[key])[kept])
  return arrays


def _has(tree, path):
  try:
    _node(tree, path)
    return True
  except (KeyError, TypeError):
    return False


def _without(variables, layers, norms):
  """The variables minus what the planned layers and sliced BatchNorms hold themselves."""
  def drop(tree, path, keys):
    node = _node(tree, path[:-1]) if len(path) > 1 else tree
    sub = dict(node[path[-1]])
    for k in keys:
      sub.pop(k, None)
    node[path[-1]] = sub

  out = jax.tree.map(lambda x: x, variables)  # a fresh nested copy of the dicts
  out = {k: _copy_dicts(v) for k, v in out.items()}
  for name in layers:
    drop(out["params"], name.split("/"), ("kernel", "bias"))
  for name in norms:
    for collection, keys in (("params", ("scale", "bias")), ("batch_stats", ("mean", "var"))):
      if collection in out and _has(out[collection], name.split("/")):
        drop(out[collection], name.split("/"), keys)
  return out


def _copy_dicts(tree):
  if isinstance(tree, Mapping):
    return {k: _copy_dicts(v) for k, v in tree.items()}
  return jnp.asarray(tree)


def _build(model, variables, layers, prepared, plan, apply_kwargs) -> SparseModel:
  """The SparseModel that runs `plan`, with the arrays of the products it names."""
  norms = {name: entry["kept"] for name, entry in plan["norms"].items()}
  arrays = {}
  for name, layer_arrays in prepared.items():
    used = set(plan["layers"][name]["products"].values()) | {"bias"}
    arrays[name] = {k: v for k, v in layer_arrays.items() if k in used}
  for name, kept in norms.items():
    arrays[name] = _norm_arrays(variables, name, kept)
  return SparseModel(model, _without(variables, layers, norms), layers, arrays, norms, plan,
                     apply_kwargs)


END_TO_END = ("per_layer", "feature_major", "dense")
END_TO_END_MARGIN = 1.05  # a sparse variant must beat XLA's dense products by 5 % end to end


def _choose_end_to_end(build, plan, model, variables, input_shape, input_dtype, measure,
                       apply_kwargs):
  """Per batch size, the fastest whole-model variant (END_TO_END, module docstring)."""
  reference = jax.jit(lambda v, x: model.apply(v, x, **apply_kwargs))
  variables = jax.device_put(variables)  # on the device once: not copied on every call
  for batch in plan["batch_sizes"]:
    key = str(batch)
    variants = {"per_layer": {n: e["products"][key] for n, e in plan["layers"].items()},
                "feature_major": {}, "dense": {n: "dense" for n in plan["layers"]}}
    for n, e in plan["layers"].items():
      cols = {p: t for p, t in e["measured_us"][key].items() if p.startswith("csr_cols")}
      variants["feature_major"][n] = min(cols, key=cols.get) if cols else e["products"][key]
    x = jnp.asarray(np.random.default_rng(1).standard_normal((batch,) + tuple(input_shape)),
                    input_dtype)
    fns = {}
    for variant, chosen in variants.items():
      variant_plan = json.loads(json.dumps(plan))
      variant_plan["batch_sizes"] = [batch]
      for n, product in chosen.items():
        variant_plan["layers"][n]["products"] = {key: product}
      fns[variant] = lambda m=build(variant_plan): m(x)
    fns["masked_dense_model"] = lambda: reference(variables, x)
    times = measure("<end to end>", batch, fns)
    best = min(END_TO_END, key=lambda v: (times[v], END_TO_END.index(v)))
    if times[best] * END_TO_END_MARGIN > times["dense"]:
      best = "dense"  # not clearly faster: measurement noise must not make it slower
    plan["end_to_end_us"][key] = {v: round(t * 1e6, 2) for v, t in times.items()}
    plan["end_to_end_us"][key]["chosen"] = best
    for n, product in variants[best].items():
      plan["layers"][n]["products"][key] = product


def verify_logits(sparse: SparseModel, model, variables, input_shape, input_dtype) -> None:
  """The sparse model's logits equal the masked dense model's on a random batch of every
  planned size: within 1e-5 * max(1, |logit|) when every layer computes in float32 or
  float64 (else within the compute dtype's resolution)."""
  dtypes = {np.dtype(l.spec.dtype) for l in sparse.layers.values()}
  tolerance = 1e-5 if dtypes <= {np.dtype(np.float32), np.dtype(np.float64)} else 2e-2
  reference = jax.jit(lambda v, x: model.apply(v, x, **sparse.apply_kwargs))
  for batch in sparse.plan["batch_sizes"]:
    x = jnp.asarray(np.random.default_rng(2).standard_normal((batch,) + tuple(input_shape)),
                    input_dtype)
    expected = np.asarray(reference(variables, x), np.float64)
    got = np.asarray(sparse(x), np.float64)
    error = np.abs(got - expected) / np.maximum(1.0, np.abs(expected))
    if not error.max() <= tolerance:
      worst = np.unravel_index(np.argmax(error), error.shape)
      raise AssertionError(
          f"sparse logits differ from the masked dense model's at batch {batch}: relative "
          f"error {error.max():.3g} > {tolerance} at {worst}. Plan:\n" + format_plan(sparse.plan))


def from_plan(model, variables, masks, plan, *, input_shape, apply_kwargs=None,
              input_dtype=jnp.float32, verify: bool = True) -> SparseModel:
  """The SparseModel of a saved plan, without measuring: each layer runs the product the plan
  names. The channels removed are found again (the analysis is exact and deterministic) and
  must equal the plan's."""
  if not isinstance(plan, Mapping) or plan.get("version") != PLAN_VERSION:
    raise ValueError(f"plan version {plan.get('version') if isinstance(plan, Mapping) else None}"
                     f" is not supported (this code reads version {PLAN_VERSION}).")

  def saved(name, batch, fns):
    if name == "<end to end>":
      chosen = "per_layer"  # the plan's layer products already are the chosen variant's
    else:
      if name not in plan["layers"]:
        raise ValueError(f"the model has a layer '{name}' that the plan does not have.")
      chosen = plan["layers"][name]["products"].get(str(batch))
    if chosen not in fns:
      raise ValueError(f"the plan names product {chosen!r} for '{name}' at batch {batch}, "
                       f"which cannot run here (candidates: {sorted(fns)}).")
    return {k: (0.0 if k == chosen else 1.0) for k in fns}

  removes = any(e["out_removed"] for e in plan["layers"].values())
  sparse = convert(model, variables, masks, input_shape=input_shape,
                   batch_sizes=plan["batch_sizes"], apply_kwargs=apply_kwargs, measure=saved,
                   remove_channels=removes, verify=verify, input_dtype=input_dtype)
  for name, entry in plan["layers"].items():
    if name not in sparse.plan["layers"]:
      raise ValueError(f"the plan names layer '{name}', which the model does not have.")
    mine = sparse.plan["layers"][name]
    for key in ("out_removed", "in_removed"):
      if mine[key] != entry[key]:
        raise ValueError(f"layer '{name}': the plan removes {key} {entry[key]}, these weights "
                         f"and masks give {mine[key]}.")
    mine["measured_us"] = entry.get("measured_us", {})
  sparse.plan["end_to_end_us"] = plan.get("end_to_end_us", {})
  return sparse


# --------------------------------------------------------------------------------------------
# The export (sparse_export) with the plan, and the command line.

EXPORT_FILE = "final_inference.sjx"  # beside final_weights.sjx: the same export, plus the plan
PLAN_KEY = "sparse_inference_plan"


def save(path, sparse: SparseModel, *, metadata: Optional[Mapping] = None):
  """Writes the compact export (sparse_export.save) of the model `sparse` was converted from,
  with its plan in the metadata (under PLAN_KEY); returns the export's ExportStats."""
  from signin_jax import sparse_export  # pylint: disable=g-import-not-at-top
  if sparse.source is None:
    raise ValueError("this SparseModel was not made by convert(); save the export with "
                     "sparse_export.save instead.")
  variables, masks = sparse.source
  meta = dict(metadata or {})
  meta[PLAN_KEY] = sparse.plan
  return sparse_export.save(path, params=masked_variables(variables, masks)["params"],
                            masks=masks, batch_stats=variables.get("batch_stats"),
                            metadata=meta)


def load(path, model, *, input_shape, apply_kwargs=None, input_dtype=jnp.float32,
         verify: bool = True) -> SparseModel:
  """The SparseModel of an export written by :func:`save`, running its saved plan."""
  from signin_jax import sparse_export  # pylint: disable=g-import-not-at-top
  exported = sparse_export.load(path)
  plan = (exported.metadata or {}).get(PLAN_KEY) if isinstance(exported.metadata, Mapping) \
      else None
  if plan is None:
    raise ValueError(f"{path} holds no sparse-inference plan (metadata key {PLAN_KEY!r}); "
                     "convert() its weights instead.")
  variables = {"params": exported.params}
  if exported.batch_stats is not None:
    variables["batch_stats"] = exported.batch_stats
  sparse = from_plan(model, variables, exported.masks, plan, input_shape=input_shape,
                     apply_kwargs=apply_kwargs, input_dtype=input_dtype, verify=verify)
  sparse.source = (variables, full_masks(variables["params"], exported.masks))
  return sparse


def _nested(flat: Mapping[str, np.ndarray], prefix: str):
  out = {}
  for key, value in flat.items():
    if not key.startswith(prefix + "/"):
      continue
    node = out
    parts = key[len(prefix) + 1:].split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return out


def run_from_workdir(workdir: str, *, batch_sizes=None, measure: Optional[Measure] = None):
  """(model, variables, masks, input_shape, batch sizes, config) of a finished run."""
  from signin_jax import input_pipeline, models  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(workdir, "config.json")
  weights_path = os.path.join(workdir, "final_weights.npz")
  for path in (config_path, weights_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist: WORKDIR must be a finished run.")
  with open(config_path, encoding="utf-8") as f:
    config = json.load(f)
  with np.load(weights_path) as data:
    arrays = {k: data[k] for k in data.files}
  params = _nested(arrays, "params")
  batch_stats = _nested(arrays, "batch_stats")
  saved_masks = _nested(arrays, "masks")
  masks = jax.tree.map(lambda p: None, params)
  masks = _merge(masks, saved_masks)
  info = input_pipeline.DATASETS[config["dataset"]]
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.get("dtype", "float32")]
  model = models.get_model(config["model"], num_classes=info.num_classes,
                           width=config.get("width"), dtype=dtype)
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  sizes = tuple(batch_sizes or (1, int(config["batch_size"])))
  return model, variables, masks, tuple(info.image_shape), sizes, config


def _merge(tree, updates):
  if isinstance(updates, Mapping):
    return {k: (_merge(tree[k], updates[k]) if k in updates and k in tree else tree.get(k))
            for k in tree} | {k: v for k, v in updates.items() if k not in tree}
  return updates


def main(argv=None) -> int:
  """``python -m signin_jax.sparse_inference WORKDIR``: see the module docstring."""
  parser = argparse.ArgumentParser(
      prog="python -m signin_jax.sparse_inference",
      description="Convert a finished run to sparse inference and measure it against dense.")
  parser.add_argument("workdir")
  parser.add_argument("--batch-sizes", default=None,
                      help="comma-separated batch sizes to plan and measure (default: 1 and "
                           "the run's batch_size)")
  parser.add_argument("--rounds", type=int, default=7, help="timing rounds (medians)")
  args = parser.parse_args(argv)
  sizes = None
  if args.batch_sizes:
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
  model, variables, masks, input_shape, sizes, config = run_from_workdir(args.workdir,
                                                                         batch_sizes=sizes)
  measure = lambda n, b, fns: measure_median(n, b, fns, rounds=args.rounds)
  export_path = os.path.join(args.workdir, EXPORT_FILE)
  apply_kwargs = {"train": False}
  start = time.perf_counter()
  if os.path.exists(export_path) and _has_plan(export_path, sizes):
    sparse = load(export_path, model, input_shape=input_shape, apply_kwargs=apply_kwargs)
    how = f"loaded from {export_path}"
  else:
    sparse = convert(model, variables, masks, input_shape=input_shape, batch_sizes=sizes,
                     apply_kwargs=apply_kwargs, measure=measure)
    stats = save(export_path, sparse, metadata={"model": config["model"], "config": config})
    how = (f"converted and written to {export_path} ({stats.file_bytes:,} bytes; masked "
           f"tensors {stats.masked_share:.2%} of their dense float32 bytes)")
  print(f"{config['model']} from {args.workdir}: {how} in {time.perf_counter() - start:.1f} s")
  print(format_plan(sparse.plan))
  reference = jax.jit(lambda v, x: model.apply(v, x, **apply_kwargs))
  dense_variables = jax.device_put(masked_variables(*sparse.source))
  print("\nMeasured now (medians of alternated rounds, seconds per call of the whole model):")
  for batch in sizes:
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch,) + input_shape),
                    jnp.float32)
    times = measure("<cli>", batch, {"dense": lambda: reference(dense_variables, x),
                                     "sparse": lambda: sparse(x)})
    print(f"  batch {batch:>5}: dense {times['dense'] * 1e6:10.1f} us, sparse "
          f"{times['sparse'] * 1e6:10.1f} us: {times['dense'] / times['sparse']:.2f}x")
  return 0


def _has_plan(path, sizes) -> bool:
  from signin_jax import sparse_export  # pylint: disable=g-import-not-at-top
  metadata = sparse_export.load(path).metadata
  plan = metadata.get(PLAN_KEY) if isinstance(metadata, Mapping) else None
  return bool(plan) and sorted(plan["batch_sizes"]) == sorted(set(sizes))


if __name__ == "__main__":
  sys.exit(main())
