"""The products a sparse layer can run as, each measured at conversion (sparse_inference.py).

A Dense layer computes ``y = x @ K`` (``x: [B, in]``, ``K: [in, out]`` with its mask applied);
a Conv layer ``y = conv(x, K)`` (NHWC, HWIO). Every product here computes the same thing from
arrays it prepares once on the host (:meth:`Product.prepare`) and applies inside ``jit``
(:meth:`Product.apply`):

========================  ==================================================================
``dense``                 XLA's dot / conv on the masked kernel: exactly what Flax runs.
``dense_rows``            XLA's dot on the kernel's non-empty input rows only, after
                          gathering those columns of ``x`` (offered when whole rows are empty).
``bcsr``                  ``jax.experimental.sparse.BCSR`` of ``K^T`` times ``x^T``: jaxlib's
                          native Eigen CSR kernel (f32/f64 only, lhs sparse, so
                          ``y^T = K^T x^T``).
``ell``                   pure JAX: padded constant-fan-in gather + multiply + reduce.
``scipy``                 ``scipy.sparse`` CSR through ``jax.pure_callback``.
``csr_rows``              our numba kernel, one sample at a time: per output, a gathered dot
                          product over its kept inputs (vectorised across the kept inputs).
``csr_tile8``             our numba kernel, eight samples at a time: the block of ``x`` is
                          transposed to ``[in, 8]`` once, then every kept weight is one
                          8-wide multiply-add (vectorised across the batch).
``conv_rows``             our numba direct sparse convolution: per output channel and output
                          row, every kept tap adds ``w * input_row`` (vectorised along W).
========================  ==================================================================

The numba kernels run inside the compiled XLA program as XLA FFI custom calls (a numba
``cfunc`` that reads XLA's C call frame, ``xla/ffi/api/c_api.h`` of the installed jaxlib),
not through ``pure_callback``: no Python, no GIL and no host copies per call. Without numba
(an optional dependency) they are simply not offered.

Dtypes: every sparse product accumulates in float32 (float64 for float64 layers). A bfloat16 or
float16 layer is run on its values rounded to that dtype, accumulated in float32 and rounded
back (XLA's CPU dot upcasts the same way); BCSR's native kernel therefore never sees bfloat16.
Integer and complex layers get only ``dense``.
"""

import functools
import math
import os
import re
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

Arrays = Dict[str, Any]


class Product(NamedTuple):
  """One way to run a layer: host-side preparation and a traceable application."""
  name: str
  kind: str  # 'dense' or 'conv'
  prepare: Callable[..., Arrays]  # (kernel, mask, layer: LayerSpec) -> host arrays
  apply: Callable[..., jax.Array]  # (x, arrays, layer: LayerSpec) -> y
  unavailable: Callable[..., Optional[str]]  # (layer: LayerSpec) -> why not, or None


class LayerSpec(NamedTuple):
  """What a product needs to know about a layer besides its kernel (all static)."""
  dtype: Any  # compute dtype (Flax's promote_dtype of input, kernel, bias, module dtype)
  precision: Any = None
  strides: Tuple[int, ...] = ()  # conv only
  padding: Any = None  # conv only: 'SAME', 'VALID' or ((lo, hi), ...)
  input_dilation: Tuple[int, ...] = ()
  kernel_dilation: Tuple[int, ...] = ()
  kernel_shape: Tuple[int, ...] = ()  # of the (possibly channel-reduced) kernel


def work_dtype(dtype) -> np.dtype:
  """The dtype a sparse product accumulates in: float64 for float64 layers, else float32."""
  return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _float_layer(layer: LayerSpec) -> Optional[str]:
  if not jnp.issubdtype(layer.dtype, jnp.floating):
    return f"compute dtype {np.dtype(layer.dtype).name} is not floating point"
  return None


def _rounded(kernel, layer: LayerSpec) -> np.ndarray:
  """The kernel's values as the layer computes with them (rounded to its compute dtype), in the
  dtype the sparse products accumulate in."""
  return np.asarray(jnp.asarray(kernel).astype(layer.dtype).astype(work_dtype(layer.dtype)))


def _to_work(x, layer):
  return x.astype(work_dtype(layer.dtype))


def _csr_of_transpose(kernel, mask, layer: LayerSpec):
  """CSR of ``K^T`` (rows = outputs): indptr [out + 1], indices [nnz] (int32), values [nnz].
  The entries stored are the mask's, so a kept weight that is exactly 0.0 stays stored."""
  rows, cols = np.nonzero(np.asarray(mask, bool).T)
  values = _rounded(kernel, layer).T[rows, cols]
  counts = np.bincount(rows, minlength=kernel.shape[1])
  indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
  return indptr, cols.astype(np.int32), values


def prepare_layer(product: Product, kernel, mask, layer: LayerSpec) -> Arrays:
  """``product.prepare`` as device arrays."""
  arrays = product.prepare(np.asarray(kernel), np.asarray(mask, bool), layer)
  return {k: jnp.asarray(v) for k, v in arrays.items()}


# --------------------------------------------------------------------------------------------
# Dense products.

def _dense_prepare(kernel, mask, layer):
  del mask  # masked entries are already exactly 0
  return {"kernel": np.asarray(jnp.asarray(kernel).astype(layer.dtype))}


def _dense_apply(x, arrays, layer):
  return lax.dot_general(x, arrays["kernel"], (((x.ndim - 1,), (0,)), ((), ())),
                         precision=layer.precision)


def _dense_rows_prepare(kernel, mask, layer):
  rows = np.flatnonzero(mask.any(axis=1)).astype(np.int32)
  return {"rows": rows, "kernel": np.asarray(jnp.asarray(kernel[rows]).astype(layer.dtype))}


def _dense_rows_apply(x, arrays, layer):
  return _dense_apply(jnp.take(x, arrays["rows"], axis=1), arrays, layer)


def _bcsr_prepare(kernel, mask, layer):
  indptr, indices, values = _csr_of_transpose(kernel, mask, layer)
  return {"data": values, "indices": indices, "indptr": indptr}


def _bcsr_apply(x, arrays, layer):
  from jax.experimental import sparse as jsparse  # pylint: disable=g-import-not-at-top
  out_features = arrays["indptr"].shape[0] - 1
  kt = jsparse.BCSR((arrays["data"], arrays["indices"], arrays["indptr"]),
                    shape=(out_features, x.shape[1]))
  return (kt @ _to_work(x, layer).T).T.astype(layer.dtype)


def _ell_prepare(kernel, mask, layer):
  values = _rounded(kernel, layer)
  fan_in = mask.sum(axis=0)
  width = max(1, int(fan_in.max()))
  idx = np.zeros((kernel.shape[1], width), np.int32)
  val = np.zeros((kernel.shape[1], width), values.dtype)
  for j in range(kernel.shape[1]):
    rows = np.flatnonzero(mask[:, j])
    idx[j, :len(rows)] = rows
    val[j, :len(rows)] = values[rows, j]
  return {"idx": idx, "val": val}


def _ell_apply(x, arrays, layer):
  gathered = jnp.take(_to_work(x, layer), arrays["idx"], axis=1)  # [B, out, fan_in]
  return jnp.sum(gathered * arrays["val"], axis=-1).astype(layer.dtype)


def _scipy_unavailable(layer):
  try:
    import scipy.sparse  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return "scipy is not installed"
  return _float_layer(layer)


def _scipy_apply(x, arrays, layer):
  out_features = arrays["indptr"].shape[0] - 1
  dtype = work_dtype(layer.dtype)

  def host(x, data, indices, indptr):
    import scipy.sparse  # pylint: disable=g-import-not-at-top
    kt = scipy.sparse.csr_matrix((data, indices, indptr), shape=(out_features, x.shape[1]))
    return np.ascontiguousarray((kt @ np.asarray(x).T).T, dtype=dtype)

  shape = jax.ShapeDtypeStruct((x.shape[0], out_features), dtype)
  y = jax.pure_callback(host, shape, _to_work(x, layer), arrays["data"], arrays["indices"],
                        arrays["indptr"], vmap_method="sequential")
  return y.astype(layer.dtype)


# --------------------------------------------------------------------------------------------
# Numba kernels as XLA FFI custom calls.

def _ffi_api_version() -> Optional[Tuple[int, int]]:
  """XLA_FFI_API_MAJOR / MINOR of the installed jaxlib (read from the header it ships)."""
  try:
    header = os.path.join(jax.ffi.include_dir(), "xla", "ffi", "api", "c_api.h")
    with open(header, encoding="utf-8") as f:
      text = f.read()
  except (OSError, AttributeError):
    return None
  major = re.search(r"#define XLA_FFI_API_MAJOR (\d+)", text)
  minor = re.search(r"#define XLA_FFI_API_MINOR (\d+)", text)
  return (int(major.group(1)), int(minor.group(1))) if major and minor else None


@functools.lru_cache(maxsize=None)
def numba_unavailable() -> Optional[str]:
  """Why the numba kernels cannot run here (None: they can)."""
  try:
    import numba  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return "numba is not installed"
  version = _ffi_api_version()
  if version is None:
    return "jaxlib's XLA FFI header (c_api.h) was not found"
  if version[0] != 0:  # the call-frame layout read by the kernels is that of API 0.x
    return f"XLA FFI API {version[0]}.{version[1]} is newer than the kernels know"
  return None


@functools.lru_cache(maxsize=None)
def _ffi_target(name: str, dtype_name: str) -> str:
  """Registers (once) the numba kernel `name` for `dtype_name` and returns its target name."""
  from signin_jax import sparse_numba  # pylint: disable=g-import-not-at-top
  handler = sparse_numba.handler(name, np.dtype(dtype_name), _ffi_api_version())
  target = f"signin_jax_{name}_{dtype_name}"
  jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler.address), platform="cpu")
  return target


def _numba_unavailable(layer):
  return numba_unavailable() or _float_layer(layer)


def _csr_prepare(kernel, mask, layer):
  indptr, indices, values = _csr_of_transpose(kernel, mask, layer)
  return {"indptr": indptr, "indices": indices, "values": values}


def _csr_apply(name, feature_major=False):
  """The numba CSR kernel `name`; `feature_major`: it reads x and writes y column-major
  (``x^T``, ``y^T`` in memory), layouts that XLA is asked to provide and accept."""
  layouts = {}
  if feature_major:
    layouts = dict(input_layouts=[(1, 0), None, None, None], output_layouts=(1, 0))

  def apply(x, arrays, layer):
    dtype = work_dtype(layer.dtype)
    target = _ffi_target(name, dtype.name)
    out_features = arrays["indptr"].shape[0] - 1
    y = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((x.shape[0], out_features), dtype),
                         **layouts)(_to_work(x, layer), arrays["indptr"], arrays["indices"],
                                    arrays["values"])
    return y.astype(layer.dtype)
  return apply


def _scipy_prepare(kernel, mask, layer):
  return _bcsr_prepare(kernel, mask, layer)


# --------------------------------------------------------------------------------------------
# Convolution products.

def conv_padding(padding, kernel_shape, strides, input_shape, kernel_dilation):
  """Explicit ((lo, hi), ...) padding for lax's 'SAME' / 'VALID' or explicit pairs."""
  spatial = input_shape[1:-1]
  if isinstance(padding, str):
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_shape[:-2], kernel_dilation)]
    return tuple(lax.padtype_to_pads(spatial, dilated, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _conv_dense_apply(x, arrays, layer):
  kernel = arrays["kernel"]
  dimension_numbers = lax.conv_dimension_numbers(x.shape, kernel.shape,
                                                 _conv_layout(x.ndim))
  return lax.conv_general_dilated(
      x, kernel, layer.strides, layer.padding, lhs_dilation=layer.input_dilation,
      rhs_dilation=layer.kernel_dilation, dimension_numbers=dimension_numbers,
      precision=layer.precision)


def _conv_layout(ndim):
  """Flax's channels-last layout: ('NHWC', 'HWIO', 'NHWC') for any number of spatial dims."""
  spatial = "".join(chr(ord("A") + i) for i in range(ndim - 2))
  return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _conv_rows_unavailable(layer):
  why = numba_unavailable() or _float_layer(layer)
  if why:
    return why
  if len(layer.strides) != 2:
    return "only 2-D convolutions"
  if any(d != 1 for d in tuple(layer.input_dilation) + tuple(layer.kernel_dilation)):
    return "dilated convolution"
  return None


def _conv_rows_prepare(kernel, mask, layer):
  """Per output channel o, its kept taps as (dy, dx, c, w): CSR over the output channels."""
  values = _rounded(kernel, layer)
  cout = kernel.shape[-1]
  dy, dx, c, o = np.nonzero(mask)
  order = np.lexsort((dx, dy, c, o))  # by output channel, then input channel, row, column
  dy, dx, c, o = dy[order], dx[order], c[order], o[order]
  indptr = np.zeros(cout + 1, np.int32)
  np.add.at(indptr, o + 1, 1)
  return {"indptr": np.cumsum(indptr).astype(np.int32), "dy": dy.astype(np.int32),
          "dx": dx.astype(np.int32), "c": c.astype(np.int32),
          "values": values[dy, dx, c, o]}


def _conv_rows_apply(x, arrays, layer):
  dtype = work_dtype(layer.dtype)
  target = _ffi_target("conv_rows", dtype.name)
  kh, kw, _, cout = layer.kernel_shape
  padding = conv_padding(layer.padding, layer.kernel_shape, layer.strides, x.shape,
                         layer.kernel_dilation)
  (ph, _), (pw, _) = padding
  out = jax.eval_shape(
      lambda x: lax.conv_general_dilated(
          x, jnp.zeros((kh, kw, x.shape[-1], cout), x.dtype), layer.strides, padding,
          dimension_numbers=("NHWC", "HWIO", "NHWC")), x)
  geometry = jnp.asarray([layer.strides[0], layer.strides[1], ph, pw], jnp.int32)
  y = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(out.shape, dtype))(
      _to_work(x, layer), geometry, arrays["indptr"], arrays["dy"], arrays["dx"], arrays["c"],
      arrays["values"])
  return y.astype(layer.dtype)


def _always(layer):
  del layer
  return None


DENSE_PRODUCTS = {p.name: p for p in (
    Product("dense", "dense", _dense_prepare, _dense_apply, _always),
    Product("dense_rows", "dense", _dense_rows_prepare, _dense_rows_apply, _always),
    Product("bcsr", "dense", _bcsr_prepare, _bcsr_apply, _float_layer),
    Product("ell", "dense", _ell_prepare, _ell_apply, _float_layer),
    Product("scipy", "dense", _scipy_prepare, _scipy_apply, _scipy_unavailable),
    Product("csr_rows", "dense", _csr_prepare, _csr_apply("csr_rows"), _numba_unavailable),
    Product("csr_tile8", "dense", _csr_prepare, _csr_apply("csr_tile8"), _numba_unavailable),
    Product("csr_tile16", "dense", _csr_prepare, _csr_apply("csr_tile16"), _numba_unavailable),
    Product("csr_tile32", "dense", _csr_prepare, _csr_apply("csr_tile32"), _numba_unavailable),
    Product("csr_cols8", "dense", _csr_prepare, _csr_apply("csr_cols8", True),
            _numba_unavailable),
    Product("csr_cols16", "dense", _csr_prepare, _csr_apply("csr_cols16", True),
            _numba_unavailable),
    Product("csr_cols32", "dense", _csr_prepare, _csr_apply("csr_cols32", True),
            _numba_unavailable),
)}
CONV_PRODUCTS = {p.name: p for p in (
    Product("dense", "conv", _dense_prepare, _conv_dense_apply, _always),
    Product("conv_rows", "conv", _conv_rows_prepare, _conv_rows_apply, _conv_rows_unavailable),
)}


def products(kind: str) -> Dict[str, Product]:
  return DENSE_PRODUCTS if kind == "dense" else CONV_PRODUCTS


def candidates(kind: str, kernel_mask: np.ndarray, layer: LayerSpec,
               allowed: Optional[Sequence[str]] = None) -> Tuple[Dict[str, Product],
                                                                  Dict[str, str]]:
  """The products that can run this layer, and why each other one cannot."""
  offered, refused = {}, {}
  for name, product in products(kind).items():
    if allowed is not None and name not in allowed:
      continue
    why = product.unavailable(layer)
    if why is None and name == "dense_rows" and bool(np.asarray(kernel_mask).any(axis=1).all()):
      why = "no empty input row"
    if why is None:
      offered[name] = product
    else:
      refused[name] = why
  return offered, refused


def kept_fraction(mask) -> float:
  mask = np.asarray(mask, bool)
  return float(mask.sum()) / max(1, math.prod(mask.shape))
