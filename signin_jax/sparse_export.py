"""Compact, lossless export of a sparse network: parameters, masks, BatchNorm statistics and
metadata in ONE file, and back. numpy only (ml_dtypes for bfloat16); no jax, Flax or trainer.

    from signin_jax import sparse_export
    stats = sparse_export.save(path, params=params, masks=masks, batch_stats=batch_stats,
                               metadata={"model": "lenet300_100", "config": config.to_dict()})
    print(sparse_export.format_stats(stats))   # per tensor: encoding, bytes, dense bytes
    exported = sparse_export.load(path)        # Exported(params, masks, batch_stats, metadata,
                                               #          stats)
    python -m signin_jax.sparse_export FILE    # verifies a file, prints the same report

``params`` and ``batch_stats`` are nested mappings (dicts, Flax ``FrozenDict``) of arrays (numpy
or jax) with string keys, as in a Flax Linen variables tree. ``masks`` is a tree like ``params``
with bool (or 0/1 integer) arrays of the parameters' shapes; a ``None`` or absent leaf or
subtree means "not masked". :func:`encode` / :func:`decode` work on ``bytes`` instead (for a
writer of one's own, e.g. to gs://).

What comes back: nested plain dicts of numpy arrays in the saved dtypes (little-endian);
``masks`` like ``params``, a bool array where a mask was given and ``None`` elsewhere (with
``jax.tree.map`` use ``is_leaf=lambda x: x is None``); ``batch_stats`` ``None`` if none was
saved; ``metadata`` as ``json.loads`` gives it (tuples come back as lists). Masks and parameters
are bitwise equal to those saved, but for one case: a masked ``-0.0`` comes back ``+0.0``.

The file encodes the MASK, not the nonzeros: a kept weight that is exactly 0.0 (e.g. just grown
by RigL) stays kept. Parameters must be 0 (``== 0``) wherever masked, the trainer's invariant:
otherwise :func:`save` raises an error naming the tensor and counting the offending entries,
unless ``zero_masked=True``, which stores the masked parameters (``masks.apply_mask``'s).

Encodings (``n`` entries, ``k`` kept, ``b`` bytes per value). Each masked tensor is stored in the
smallest that can hold it (ties: dense, nm, bitmask, csr; nm records the structure); unmasked
tensors and BatchNorm statistics are dense.

* ``dense``: the ``n`` values: ``n * b`` bytes; for a masked tensor only when ``k == n``.
* ``bitmask``: ``np.packbits`` of the flat mask (C order, MSB first, zero padding), then the
  kept values in C order: ``ceil(n / 8) + k * b``.
* ``csr``: over the 2-D view ``[R, C] = [prod(shape[:-1]), shape[-1]]`` (``[fan_in, out]`` of a
  Dense or HWIO kernel; a 0-/1-D tensor is one row): ``R + 1`` row pointers, ``k`` column
  indices (increasing within a row), the kept values in C order:
  ``(R + 1) * w(k) + k * w(C - 1) + k * b``, ``w(v)`` the width of the smallest of uint8 /
  uint16 / uint32 holding ``v`` (uint8 as TFLite; the issue named uint16 / uint32 only).
* ``nm``: a tensor of rank >= 2 whose mask keeps exactly ``N`` (1 <= N < M) of every ``M``
  consecutive entries along axis -2 (the contraction axis of a Dense ``[in, out]`` or HWIO
  kernel), found automatically for every ``M`` in 2..16 dividing ``shape[-2]`` (the cheapest
  ``(N, M)`` wins: 2:4 rather than 4:8; no argument to give). Groups in C order of
  ``moveaxis(x, -2, -1)``; a group's pattern is coded as its index in
  ``itertools.combinations(range(M), N)`` in ``bits = ceil(log2 C(M, N))`` bits (3 at 2:4
  against the bitmask's 4), packed MSB first; then the kept values in group order:
  ``ceil(n / M * bits / 8) + k * b``.

Dtypes: float16, bfloat16, float32, float64, and losslessly bool and (u)int8..64, stored
little-endian as raw bits (NaN payloads too). Any other dtype (complex, float8, strings) is
refused, naming the tensor and the allowed dtypes.

File layout (integers little-endian)::

    offset 0   8 bytes  magic b"SIGNINSX"
           8   uint32   format version (FORMAT_VERSION)
          12   uint32   header length H
          16   uint32   CRC32 of the header
          20   uint32   0 (reserved)
          24   H bytes  UTF-8 JSON {"format_version", "file_bytes", "metadata",
                        "has_batch_stats", "tensors": [{"name", "collection", "path", "shape",
                        "dtype", "masked", "kept", "encoding", "nm": [N, M] or null, "crc32",
                        "blobs": [[role, offset, length, dtype], ...]}, ...]}
                        role: values / bitmask / indptr / indices / codes; offsets absolute
           ...      zero padding; the blobs in order, each at a multiple of 8 (viewable in
                    place), zero padding between them and none after the last

Checksums: CRC32 (``zlib.crc32``) of the header and of each tensor's blobs in order: it finds
every error burst of up to 32 bits (every flipped bit) for certain, others but for 2**-32, at
zlib's speed; it guards against accidents (disks, cut copies), not tampering (that would need a
cryptographic hash). As padding must be zero, no byte of a file goes unchecked. Reading refuses,
naming the tensor where there is one: a wrong magic; a newer format version (before the header
is parsed); a truncated file (the first tensor cut); a failed checksum; a malformed entry.
Writing refuses a mask tree that does not fit the parameters (a mask of no parameter, a wrong
shape, a non-0/1 mask), an unsupported dtype, nonzero masked parameters, non-JSON metadata.
:func:`save` writes a temporary file in the same directory, then ``os.replace``-s it.

Measured: the masked (prunable) tensors' bytes as a share of their dense float32 bytes, random
ERK masks on the prunable leaves (``python benchmarks/export_bytes.py``; exact byte counts, the
same on any machine; run on the 2-core AMD EPYC, 2026-12-07, commit 7c16610):

  model (masks)             sparsity  export   bitmask+values  CSR uint16  goal    encodings
  lenet300_100 (ERK)          90 %    13.11 %     13.12 %      15.22 %   14 %    bitmask 2, dense 1
                              95 %     7.21 %      8.12 %       7.72 %   8.5 %   bitmask 2, csr 1
                              98 %     3.02 %      5.12 %       3.22 %   4 %     bitmask 1, csr 2
  small_cnn, width 16 (ERK)   90 %    13.12 %     13.12 %      15.85 %   14 %    bitmask 4
    (the quickstart CNN)      95 %     6.98 %      8.12 %       8.35 %   8.5 %   bitmask 2, csr 2
                              98 %     3.27 %      5.13 %       3.85 %   4 %     bitmask 2, csr 2
  resnet20 (ERK)              90 %    12.57 %     13.13 %      16.07 %   14 %    bitmask 15, csr 5,
                                                                                 dense 2
                              95 %     6.96 %      8.13 %       8.57 %   8.5 %   bitmask 16, csr 6
                              98 %     3.28 %      5.13 %       4.07 %   4 %     bitmask 4, csr 18
  each model, 2:4 on axis -2  50 %    52.34 %     53.12 %    75.4-76.1 %   -     nm 2:4 (every
    (kernels whose axis -2 divides by 4; resnet20's 3-channel stem unmasked)     masked one)
"""

import functools
import itertools
import json
import math
import os
import struct
import sys
import zlib
from collections.abc import Mapping
from typing import Any, Dict, NamedTuple, Optional, Tuple

import ml_dtypes  # bfloat16 for numpy (a jax dependency)
import numpy as np

MAGIC = b"SIGNINSX"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sIIII")  # magic, version, header length, header CRC32, reserved
ALIGN = 8
NM_MAX_M = 16
ENCODINGS = ("dense", "nm", "bitmask", "csr")  # also the tie-break order
_DTYPE_LIST = [np.dtype(ml_dtypes.bfloat16)] + [np.dtype(t) for t in (
    "float16", "float32", "float64", "bool", "int8", "int16", "int32", "int64", "uint8",
    "uint16", "uint32", "uint64")]
DTYPES = {d.name: d.newbyteorder("<") if d.itemsize > 1 else d for d in _DTYPE_LIST}


class ExportError(ValueError):
  """A file or an input that cannot be exported or read (the message names the tensor)."""


class TensorStats(NamedTuple):
  """One tensor of an export: ``bytes`` is its payload (blobs, no padding or header)."""
  name: str                # e.g. 'params/dense1/kernel'
  shape: Tuple[int, ...]
  dtype: str
  masked: bool             # a mask was given for it
  size: int                # n
  kept: int                # k: True entries of the mask (n if unmasked)
  encoding: str            # one of ENCODINGS
  nm: Optional[Tuple[int, int]]  # (N, M) for the 'nm' encoding
  bytes: int
  dense_bytes: int         # n * itemsize


class ExportStats(NamedTuple):
  """All tensors of an export, plus the file's size (header and padding included)."""
  tensors: Tuple[TensorStats, ...]
  file_bytes: int

  masked_bytes = property(lambda self: sum(t.bytes for t in self.tensors if t.masked))
  masked_dense_bytes = property(lambda self: sum(t.dense_bytes for t in self.tensors
                                                 if t.masked))
  # all tensors stored dense: what an .npz of them holds, before its own overhead
  dense_bytes = property(lambda self: sum(t.dense_bytes for t in self.tensors))

  @property
  def masked_share(self) -> float:
    """Masked tensors' bytes / their dense bytes (for float32 tensors, the issue's goal:
    <= 14 % at 90 % sparsity, 8.5 % at 95 %, 4 % at 98 %)."""
    dense = self.masked_dense_bytes
    return self.masked_bytes / dense if dense else 1.0


class Exported(NamedTuple):
  params: Dict[str, Any]
  masks: Dict[str, Any]
  batch_stats: Optional[Dict[str, Any]]
  metadata: Any
  stats: ExportStats


# --- trees ---------------------------------------------------------------------------------

def _flatten(tree, what: str, prefix=(), allow_none=False) -> Dict[Tuple[str, ...], Any]:
  """{path tuple: leaf} of nested mappings; a None subtree is one None leaf."""
  if isinstance(tree, Mapping):
    out = {}
    for key, value in tree.items():
      if not isinstance(key, str):
        raise ExportError(f"{what}: keys must be strings, got {key!r} under "
                          f"{'/'.join(prefix) or 'the root'}.")
      out.update(_flatten(value, what, prefix + (key,), allow_none))
    return out
  if tree is None and not allow_none:
    raise ExportError(f"{what}/{'/'.join(prefix)} is None; parameters must be arrays.")
  return {prefix: tree}


def _unflatten(flat: Dict[Tuple[str, ...], Any]) -> Dict[str, Any]:
  root: Dict[str, Any] = {}
  for path, leaf in flat.items():
    node = root
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return root


def _mask_leaves(params_flat, masks, name) -> Dict[Tuple[str, ...], Optional[np.ndarray]]:
  """Per parameter path: its mask as bool, or None. Raises on a mask tree that does not fit."""
  masks_flat = _flatten(masks if masks is not None else {}, "masks", allow_none=True)
  out = {path: None for path in params_flat}
  for path, m in masks_flat.items():
    if m is None:
      continue
    tensor = name(path)
    if path not in params_flat:
      covered = [p for p in params_flat if p[:len(path)] == path]
      raise ExportError(
          f"masks has {tensor!r}, which is " + ("a subtree of params, not one parameter."
                                                if covered else "no parameter.") +
          f" Parameters: {[name(p) for p in params_flat][:8]}...")
    m = np.asarray(m)
    shape = np.shape(params_flat[path])
    if m.shape != shape:
      raise ExportError(f"masks[{tensor!r}] has shape {m.shape}, the parameter {shape}.")
    if m.dtype != bool:
      if not np.issubdtype(m.dtype, np.integer) or np.any((m != 0) & (m != 1)):
        raise ExportError(f"masks[{tensor!r}] must be bool (or 0/1 integers), got dtype "
                          f"{m.dtype} with values other than 0 and 1.")
      m = m.astype(bool)
    out[path] = m
  return out


# --- sizes and encodings --------------------------------------------------------------------

def _width(v: int) -> np.dtype:
  """The smallest unsigned dtype (uint8/16/32) holding v."""
  for t in ("<u1", "<u2", "<u4"):
    if v <= np.iinfo(t).max:
      return np.dtype(t)
  raise ExportError(f"{v} exceeds uint32.")


def _view_2d(shape) -> Tuple[int, int]:
  cols = shape[-1] if shape else 1
  return (math.prod(shape[:-1]) if shape else 1), cols


@functools.lru_cache(maxsize=None)
def _patterns(n: int, m: int) -> Tuple[np.ndarray, np.ndarray, int]:
  """N:M patterns [C(M, N), M] bool in combinations order, a code per M-bit group value
  (-1 where not N bits set), and the bits per code."""
  combos = list(itertools.combinations(range(m), n))
  patterns = np.zeros((len(combos), m), bool)
  for i, c in enumerate(combos):
    patterns[i, list(c)] = True
  code_of = np.full(1 << m, -1, np.int64)
  code_of[patterns @ (1 << np.arange(m - 1, -1, -1))] = np.arange(len(combos))
  return patterns, code_of, max(1, math.ceil(math.log2(len(combos))))


def _nm_layout(mask: np.ndarray) -> Optional[Tuple[int, int]]:
  """The cheapest (N, M) whose groups along axis -2 all keep exactly N (1 <= N < M), or None."""
  if mask.ndim < 2 or mask.size == 0:
    return None
  k, n, depth = int(mask.sum()), mask.size, mask.shape[-2]
  moved = np.moveaxis(mask, -2, -1)
  best = None
  for m in range(2, NM_MAX_M + 1):
    if depth % m or (k * m) % n:  # N = k * M / n must be a whole number
      continue
    groups = k * m // n
    if not 1 <= groups < m:
      continue
    if np.all(moved.reshape(-1, m).sum(axis=1) == groups):
      cost = n // m * _patterns(groups, m)[2]
      if best is None or cost < best[0]:
        best = (cost, groups, m)
  return None if best is None else best[1:]


def _sizes(shape, mask: Optional[np.ndarray], itemsize: int) -> Dict[str, int]:
  """Bytes of each encoding that can hold the tensor."""
  n = math.prod(shape)
  if mask is None:
    return {"dense": n * itemsize}
  k = int(mask.sum())
  rows, cols = _view_2d(shape)
  sizes = {"bitmask": -(-n // 8) + k * itemsize,
           "csr": (rows + 1) * _width(k).itemsize + k * _width(max(cols - 1, 0)).itemsize
                  + k * itemsize}
  if k == n:
    sizes["dense"] = n * itemsize
  nm = _nm_layout(mask)
  if nm is not None:
    bits = _patterns(*nm)[2]
    sizes["nm"] = -(-(n // nm[1]) * bits // 8) + k * itemsize
  return sizes


def _encode_tensor(x: np.ndarray, mask: Optional[np.ndarray], encoding: str):
  """[(role, array)] blobs of x in `encoding`, and (N, M) for 'nm'."""
  if encoding == "dense":
    return [("values", x)], None
  if encoding == "bitmask":
    return [("bitmask", np.packbits(mask.ravel())), ("values", x[mask])], None
  if encoding == "csr":
    rows, cols = _view_2d(x.shape)
    m2 = mask.reshape(rows, cols)
    k = int(mask.sum())
    indptr = np.concatenate([[0], np.cumsum(m2.sum(axis=1))]).astype(_width(k))
    indices = np.nonzero(m2)[1].astype(_width(max(cols - 1, 0)))
    return [("indptr", indptr), ("indices", indices), ("values", x[mask])], None
  n_keep, m = _nm_layout(mask)
  _, code_of, bits = _patterns(n_keep, m)
  groups = np.moveaxis(mask, -2, -1).reshape(-1, m)
  codes = code_of[groups @ (1 << np.arange(m - 1, -1, -1))]
  code_bits = (codes[:, None] >> np.arange(bits - 1, -1, -1)) & 1
  values = np.moveaxis(x, -2, -1)[np.moveaxis(mask, -2, -1)]
  return [("codes", np.packbits(code_bits.astype(np.uint8).ravel())), ("values", values)], \
      (n_keep, m)


def _check_dtype(x: np.ndarray, tensor: str) -> np.ndarray:
  if x.dtype.name not in DTYPES:
    raise ExportError(f"{tensor} has dtype {x.dtype}, which the export does not store; "
                      f"allowed: {sorted(DTYPES)}.")
  return np.ascontiguousarray(x, DTYPES[x.dtype.name])


# --- writing --------------------------------------------------------------------------------

def encode(*, params, masks=None, batch_stats=None, metadata=None,
           zero_masked: bool = False) -> Tuple[bytes, ExportStats]:
  """The export file's bytes and its stats; see the module docstring and :func:`save`."""
  if not isinstance(params, Mapping):
    raise ExportError(f"params must be a mapping (a Flax params dict), got {type(params)}.")
  try:
    metadata_json = json.loads(json.dumps(metadata))
  except (TypeError, ValueError) as e:
    raise ExportError(f"metadata must be JSON-serializable: {e}") from e
  params_flat = _flatten(params, "params")
  name = lambda path, c="params": "/".join((c,) + path)
  mask_flat = _mask_leaves(params_flat, masks, name)
  items = [("params", p, x, mask_flat[p]) for p, x in params_flat.items()]
  if batch_stats is not None:
    items += [("batch_stats", p, x, None)
              for p, x in _flatten(batch_stats, "batch_stats").items()]

  entries, chunks, stats, offset, pad = [], [], [], 0, 0
  for collection, path, x, mask in items:
    tensor = name(path, collection)
    x = _check_dtype(np.asarray(x), tensor)
    if mask is not None:
      stray = int(np.count_nonzero(x[~mask] != 0)) if x.dtype != bool else int(x[~mask].sum())
      if stray and not zero_masked:
        raise ExportError(
            f"{tensor}: {stray} masked entries are nonzero; the export stores the masked "
            f"parameters (exactly 0 where masked). Apply the mask first (masks.apply_mask) or "
            f"pass zero_masked=True.")
      x = np.where(mask, x, np.zeros((), x.dtype))
    sizes = _sizes(x.shape, mask, x.dtype.itemsize)
    encoding = min((e for e in ENCODINGS if e in sizes), key=lambda e: sizes[e])
    blobs, nm = _encode_tensor(x, mask, encoding)
    crc, blob_entries = 0, []
    for role, array in blobs:
      data = np.ascontiguousarray(array).tobytes()
      crc = zlib.crc32(data, crc)
      blob_entries.append([role, offset, len(data), array.dtype.name])
      pad = -len(data) % ALIGN
      chunks.append(data + b"\0" * pad)
      offset += len(data) + pad
    payload = sum(b[2] for b in blob_entries)
    if payload != sizes[encoding]:  # the formula in the docstring is what is written
      raise RuntimeError(f"{tensor}: {encoding} wrote {payload} bytes, expected "
                         f"{sizes[encoding]}.")
    kept = x.size if mask is None else int(mask.sum())
    entries.append({"name": tensor, "collection": collection, "path": list(path),
                    "shape": list(x.shape), "dtype": x.dtype.name, "masked": mask is not None,
                    "kept": kept, "encoding": encoding, "nm": nm, "crc32": crc,
                    "blobs": blob_entries})
    stats.append(TensorStats(tensor, tuple(x.shape), x.dtype.name, mask is not None, x.size,
                             kept, encoding, nm, payload, x.size * x.dtype.itemsize))

  if chunks and pad:  # no padding after the last blob: a truncated file always cuts a tensor
    chunks[-1], offset = chunks[-1][:-pad], offset - pad
  # The blob offsets are relative until the header's length is known; the header holds
  # file_bytes, whose digit count may change its length: iterate to the fixed point.
  base = 0
  while True:
    header = {"format_version": FORMAT_VERSION, "file_bytes": base + offset,
              "metadata": metadata_json, "has_batch_stats": batch_stats is not None,
              "tensors": [dict(e, blobs=[[r, o + base, n, d] for r, o, n, d in e["blobs"]])
                          for e in entries]}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    start = _PREAMBLE.size + len(header_bytes)
    if start + (-start % ALIGN) == base:
      break
    base = start + (-start % ALIGN)
  preamble = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header_bytes), zlib.crc32(header_bytes), 0)
  data = b"".join([preamble, header_bytes, b"\0" * (base - start)] + chunks)
  return data, ExportStats(tuple(stats), len(data))


def save(path, *, params, masks=None, batch_stats=None, metadata=None,
         zero_masked: bool = False) -> ExportStats:
  """Writes the export to `path` atomically and returns its :class:`ExportStats`.

  Args:
    params: nested mapping of arrays (a Flax Linen ``variables['params']``).
    masks: tree like params: bool / 0-1 arrays of the parameters' shapes; None or absent
      leaves or subtrees are unmasked (stored dense).
    batch_stats: nested mapping of arrays (``variables['batch_stats']``), or None.
    metadata: anything JSON-serializable (e.g. ``{"model": name, "config": config_dict}``).
    zero_masked: False: nonzero parameters at masked entries are an error; True: they are
      stored as 0.0 (what the mask says they are).
  """
  data, stats = encode(params=params, masks=masks, batch_stats=batch_stats,
                       metadata=metadata, zero_masked=zero_masked)
  tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"  # same directory: os.replace is atomic
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return stats


# --- reading --------------------------------------------------------------------------------

def _read_header(data: bytes) -> dict:
  if len(data) < _PREAMBLE.size:
    raise ExportError(f"Not a complete export: {len(data)} bytes, shorter than the "
                      f"{_PREAMBLE.size}-byte preamble (truncated?).")
  magic, version, length, crc, reserved = _PREAMBLE.unpack_from(data)
  if magic != MAGIC:
    raise ExportError(f"Not a signin_jax sparse export: magic {magic!r}, expected {MAGIC!r}.")
  if reserved:
    raise ExportError(f"The export's reserved preamble field is {reserved}, not 0: corrupted.")
  if version > FORMAT_VERSION:
    raise ExportError(f"The export has format version {version}, newer than this reader's "
                      f"{FORMAT_VERSION}: update signin_jax to read it.")
  if version < 1:
    raise ExportError(f"The export has format version {version}; versions start at 1.")
  if len(data) < _PREAMBLE.size + length:
    raise ExportError(f"The export is truncated inside its header: {len(data)} bytes, the "
                      f"header ends at byte {_PREAMBLE.size + length}.")
  header_bytes = data[_PREAMBLE.size:_PREAMBLE.size + length]
  if zlib.crc32(header_bytes) != crc:
    raise ExportError("The export's header fails its CRC32 checksum: the file is corrupted.")
  header = json.loads(header_bytes)
  missing = {"format_version", "file_bytes", "metadata", "has_batch_stats", "tensors"} - set(
      header if isinstance(header, dict) else ())
  if missing:
    raise ExportError(f"The export's header lacks {sorted(missing)}.")
  if header["format_version"] != version:
    raise ExportError(f"The header's format version {header.get('format_version')} is not "
                      f"the preamble's {version}.")
  return header


def _blob(data, entry, role, count, dtype) -> np.ndarray:
  matches = [b for b in entry["blobs"] if b[0] == role]
  if len(matches) != 1:
    raise ExportError(f"{entry['name']}: expected one {role!r} blob, found {len(matches)}.")
  _, offset, length, stored = matches[0]
  if stored != dtype.name or length != count * dtype.itemsize:
    raise ExportError(f"{entry['name']}: {role} blob of {length} bytes as {stored}, expected "
                      f"{count} x {dtype}.")
  return np.frombuffer(data, dtype, count, offset)


def _decode_tensor(data, entry) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  tensor, encoding = entry["name"], entry["encoding"]
  if entry["dtype"] not in DTYPES:
    raise ExportError(f"{tensor}: unknown dtype {entry['dtype']!r}; allowed: {sorted(DTYPES)}.")
  dtype, shape, kept = DTYPES[entry["dtype"]], tuple(entry["shape"]), entry["kept"]
  if any(not isinstance(d, int) or d < 0 for d in shape):
    raise ExportError(f"{tensor}: malformed shape {entry['shape']!r}.")
  n = math.prod(shape)
  if encoding == "dense":
    if kept != n:
      raise ExportError(f"{tensor}: dense encoding with {kept} of {n} kept.")
    x = _blob(data, entry, "values", n, dtype).reshape(shape).copy()
    return x, (np.ones(shape, bool) if entry["masked"] else None)
  if not entry["masked"]:
    raise ExportError(f"{tensor}: encoding {encoding!r} for an unmasked tensor.")
  if encoding == "bitmask":
    packed = _blob(data, entry, "bitmask", -(-n // 8), np.dtype("u1"))
    bits = np.unpackbits(packed)
    if bits[n:].any():
      raise ExportError(f"{tensor}: nonzero padding bits in its bitmask.")
    mask = bits[:n].astype(bool).reshape(shape)
  elif encoding == "csr":
    rows, cols = _view_2d(shape)
    indptr = _blob(data, entry, "indptr", rows + 1, _width(kept)).astype(np.int64)
    indices = _blob(data, entry, "indices", kept, _width(max(cols - 1, 0))).astype(np.int64)
    counts = np.diff(indptr)
    if indptr[0] != 0 or indptr[-1] != kept or np.any(counts < 0):
      raise ExportError(f"{tensor}: malformed CSR row pointers.")
    flat = np.repeat(np.arange(rows), counts) * cols + indices
    if np.any(indices >= cols) or np.any(np.diff(flat) <= 0):
      raise ExportError(f"{tensor}: malformed CSR column indices (out of range or unsorted).")
    mask = np.zeros(n, bool)
    mask[flat] = True
    mask = mask.reshape(shape)
  elif encoding == "nm":
    n_keep, m = entry["nm"]
    if not (len(shape) >= 2 and 1 <= n_keep < m <= NM_MAX_M and shape[-2] % m == 0):
      raise ExportError(f"{tensor}: N:M {n_keep}:{m} does not fit shape {shape}.")
    patterns, _, bits = _patterns(n_keep, m)
    packed = _blob(data, entry, "codes", -(-(n // m) * bits // 8), np.dtype("u1"))
    all_bits = np.unpackbits(packed)
    if all_bits[n // m * bits:].any():
      raise ExportError(f"{tensor}: nonzero padding bits in its N:M codes.")
    code_bits = all_bits[:n // m * bits].reshape(-1, bits).astype(np.int64)
    codes = code_bits @ (1 << np.arange(bits - 1, -1, -1))
    if np.any(codes >= len(patterns)) or kept != n // m * n_keep:
      raise ExportError(f"{tensor}: malformed N:M codes.")
    moved_shape = shape[:-2] + (shape[-1], shape[-2])
    moved_mask = patterns[codes].reshape(moved_shape)
    moved = np.zeros(moved_shape, dtype)
    moved[moved_mask] = _blob(data, entry, "values", kept, dtype)
    return (np.ascontiguousarray(np.moveaxis(moved, -1, -2)),
            np.ascontiguousarray(np.moveaxis(moved_mask, -1, -2)))
  else:
    raise ExportError(f"{tensor}: unknown encoding {encoding!r}; known: {ENCODINGS}.")
  if int(mask.sum()) != kept:
    raise ExportError(f"{tensor}: its mask keeps {int(mask.sum())}, the header says {kept}.")
  x = np.zeros(shape, dtype)
  x[mask] = _blob(data, entry, "values", kept, dtype)
  return x, mask


def decode(data: bytes) -> Exported:
  """The contents of an export file's bytes; raises :class:`ExportError` on any damage."""
  data = bytes(data)
  header = _read_header(data)
  tensors = header["tensors"]
  if len(data) != header["file_bytes"]:
    if len(data) > header["file_bytes"]:
      raise ExportError(f"The export has {len(data)} bytes, its header says "
                        f"{header['file_bytes']}: trailing bytes (a damaged copy?).")
    cut = next((t["name"] for t in tensors
                if any(o + n > len(data) for _, o, n, _ in t["blobs"])), "(none)")
    raise ExportError(f"The export is truncated: {len(data)} of {header['file_bytes']} bytes; "
                      f"the first tensor cut is {cut!r}.")
  # Blobs in order, without overlap, separated by zero padding only: then every byte of the
  # file is checked (by a CRC or as padding), so any flipped bit is refused.
  end = _PREAMBLE.size + struct.unpack_from("<I", data, 12)[0]
  for t in tensors:
    for _, offset, length, _ in t.get("blobs", ()):
      if not 0 <= offset - end < ALIGN or any(data[end:offset]):
        raise ExportError(f"{t.get('name', '?')}: its blob at byte {offset} overlaps or is "
                          f"preceded by bytes that are not zero padding: corrupted.")
      end = offset + length
  if end != len(data):
    raise ExportError(f"The export ends at byte {end} but has {len(data)} bytes.")
  flat = {"params": {}, "masks": {}, "batch_stats": {}}
  stats, view = [], memoryview(data)
  for entry in tensors:
    tensor = entry.get("name", "?")
    try:
      crc = 0
      for _, offset, length, _ in entry["blobs"]:
        crc = zlib.crc32(view[offset:offset + length], crc)
      if crc != entry["crc32"]:
        raise ExportError(f"{tensor} fails its CRC32 checksum: the file is corrupted.")
      x, mask = _decode_tensor(data, entry)
      path = tuple(entry["path"])
      flat[entry["collection"]][path] = x
      if entry["collection"] == "params":
        flat["masks"][path] = mask
      nm = tuple(entry["nm"]) if entry["nm"] else None
      stats.append(TensorStats(tensor, x.shape, entry["dtype"], entry["masked"], x.size,
                               entry["kept"], entry["encoding"], nm,
                               sum(b[2] for b in entry["blobs"]), x.nbytes))
    except (KeyError, TypeError, IndexError, ValueError) as e:
      if isinstance(e, ExportError):
        raise
      raise ExportError(f"{tensor}: malformed header entry ({type(e).__name__}: {e}).") from e
  return Exported(_unflatten(flat["params"]), _unflatten(flat["masks"]),
                  _unflatten(flat["batch_stats"]) if header["has_batch_stats"] else None,
                  header["metadata"], ExportStats(tuple(stats), len(data)))


def load(path) -> Exported:
  """Reads an export written by :func:`save` (see the module docstring for what comes back)."""
  with open(path, "rb") as f:
    return decode(f.read())


# --- reporting ------------------------------------------------------------------------------

def format_stats(stats: ExportStats) -> str:
  """A fixed-width table: per tensor its encoding, kept/size, bytes and dense bytes."""
  width = max([len(t.name) for t in stats.tensors] + [6])
  head = (f"{'tensor':<{width}}  {'shape':>16}  {'dtype':>8}  {'encoding':>9}  {'kept':>10}  "
          f"{'bytes':>11}  {'dense bytes':>11}  {'share':>7}")
  lines = [head, "-" * len(head)]
  for t in stats.tensors:
    enc = f"nm {t.nm[0]}:{t.nm[1]}" if t.nm else t.encoding
    share = t.bytes / t.dense_bytes if t.dense_bytes else 1.0
    lines.append(f"{t.name:<{width}}  {'x'.join(map(str, t.shape)):>16}  {t.dtype:>8}  "
                 f"{enc:>9}  {t.kept:>10,}  {t.bytes:>11,}  {t.dense_bytes:>11,}  "
                 f"{share:>7.2%}")
  lines.append(f"masked tensors: {stats.masked_bytes:,} bytes = {stats.masked_share:.2%} of "
               f"their dense bytes {stats.masked_dense_bytes:,}; file "
               f"{stats.file_bytes:,} bytes, all tensors dense {stats.dense_bytes:,} bytes")
  return "\n".join(lines)


def main(argv) -> int:
  """``python -m signin_jax.sparse_export FILE``: verifies an export, prints its byte report."""
  if len(argv) != 1 or argv[0].startswith("-"):
    print("usage: python -m signin_jax.sparse_export EXPORT_FILE  (verifies it and prints "
          "its per-tensor byte report)", file=sys.stderr)
    return 2
  try:
    exported = load(argv[0])
  except (ExportError, OSError) as e:
    print(f"error: {argv[0]}: {e}", file=sys.stderr)
    return 1
  print(format_stats(exported.stats))
  print("metadata:", json.dumps(exported.metadata)[:500])
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
