"""signin_jax.sparse_export: bitwise round trips, the bytes of each encoding, refusals.

The byte formulas and the file layout are written here again from the module's documentation
(not read from its code): each tensor's stored bytes, read off the file's own header, must
equal the smallest of them. Masks come from masks.layer_densities (create_masks' ERK budget)
with a random top-k per layer in numpy: create_masks' op-by-op argsort compiles per leaf
shape: 12 s (LeNet) to 117 s (ResNet-18) per model for three sparsities on this 2-core
machine while shared.
"""
import json
import math
import os
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from signin_jax import masks as masks_lib
from signin_jax import models
from signin_jax import sparse_export as se

ENCODING_ORDER = ("dense", "nm", "bitmask", "csr")  # the documented tie-break order


# --- an independent reading of the documented layout and formulas ---------------------------

def header_of(data: bytes) -> dict:
  magic, version, length, crc, reserved = struct.unpack_from("<8sIIII", data)
  assert (magic, version, reserved) == (b"SIGNINSX", 1, 0)
  return json.loads(data[24:24 + length])


def index_bytes(v: int) -> int:
  return 1 if v < 2 ** 8 else 2 if v < 2 ** 16 else 4


def nm_pattern(mask):
  """(N, M, bits) of the cheapest N:M pattern along axis -2, found by brute force, or None."""
  best = None
  if mask.ndim < 2:
    return None
  for m in range(2, 17):
    if mask.shape[-2] % m:
      continue
    counts = np.swapaxes(mask, -2, -1).reshape(-1, m).sum(axis=1)
    if counts.size and np.all(counts == counts[0]) and 1 <= counts[0] < m:
      bits = math.ceil(math.log2(math.comb(m, int(counts[0]))))
      if best is None or mask.size // m * bits < mask.size // best[1] * best[2]:
        best = (int(counts[0]), m, bits)
  return best


def expected_bytes(shape, mask, itemsize) -> dict:
  n = math.prod(shape)
  if mask is None:
    return {"dense": n * itemsize}
  k = int(mask.sum())
  rows, cols = (math.prod(shape[:-1]), shape[-1]) if shape else (1, 1)
  out = {"bitmask": math.ceil(n / 8) + k * itemsize,
         "csr": (rows + 1) * index_bytes(k) + k * index_bytes(cols - 1) + k * itemsize}
  if k == n:
    out["dense"] = n * itemsize
  pattern = nm_pattern(mask)
  if pattern:
    out["nm"] = math.ceil(n // pattern[1] * pattern[2] / 8) + k * itemsize
  return out


def check_bytes(data: bytes, params, masks):
  """Every tensor's blobs (from the header) add up to its smallest encoding's formula."""
  flat_p = dict(flatten(params))
  flat_m = dict(flatten(masks)) if masks is not None else {}
  entries = {tuple(e["path"]): e for e in header_of(data)["tensors"]
             if e["collection"] == "params"}
  assert set(entries) == set(flat_p)
  for path, x in flat_p.items():
    x, m = np.asarray(x), flat_m.get(path)
    sizes = expected_bytes(x.shape, None if m is None else np.asarray(m, bool), x.itemsize)
    best = min(sizes.values())
    encoding = next(e for e in ENCODING_ORDER if sizes.get(e) == best)
    entry = entries[path]
    assert entry["encoding"] == encoding, (path, entry["encoding"], sizes)
    assert sum(b[2] for b in entry["blobs"]) == best, (path, sizes)
  last = max(b[1] + b[2] for e in header_of(data)["tensors"] for b in e["blobs"])
  assert last == len(data)


def flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from flatten(v, prefix + (k,))
  else:
    yield prefix, tree


def assert_bitwise(a, b):
  fa, fb = dict(flatten(a)), dict(flatten(b))
  assert fa.keys() == fb.keys()
  for k in fa:
    if fa[k] is None:
      assert fb[k] is None, k
      continue
    x, y = np.asarray(fa[k]), np.asarray(fb[k])
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), k


# --- masks for the shipped models ------------------------------------------------------------

def random_masks(params, sparsity, seed):
  """ERK budget of masks.layer_densities, random kept set per layer (exact counts)."""
  rng = np.random.default_rng(seed)
  densities = masks_lib.layer_densities(params, sparsity, "erk")
  def one(p, d):
    n = p.size
    keep = np.zeros(n, bool)
    keep[rng.permutation(n)[:round(d * n)]] = True
    return keep.reshape(p.shape)
  return jax.tree.map(one, params, densities)


def shipped_model(name):
  width = {"lenet300_100": 8}.get(name, 4)
  model = models.get_model(name, num_classes=3, width=width)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)),
                                             train=False))
  rng = np.random.default_rng(0)
  return width, jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), dict(shapes))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_round_trip_of_every_shipped_model_is_bitwise(tmp_path, name):
  width, variables = shipped_model(name)
  params = variables["params"]
  batch_stats = variables.get("batch_stats")
  prunable = masks_lib.prunable(params)
  for i, sparsity in enumerate((0.0, 0.5, 0.9, 0.98)):
    full = random_masks(params, sparsity, seed=i)
    # Alternately the trainer's full mask tree and masks of the prunable leaves only.
    masks = full if i % 2 else jax.tree.map(lambda m, f: m if f else None, full, prunable)
    masked = jax.tree.map(lambda p, m: np.where(m, p, np.zeros((), p.dtype)), params, full)
    metadata = {"model": name, "config": {"width": width, "sparsity": sparsity,
                                          "widths": [1, 2]}}
    path = tmp_path / f"{name}_{sparsity}.sjx"
    stats = se.save(path, params=masked, masks=masks, batch_stats=batch_stats,
                    metadata=metadata)
    back = se.load(path)
    assert_bitwise(back.params, masked)
    assert_bitwise(back.masks, masks)
    if batch_stats is None:
      assert back.batch_stats is None
    else:
      assert_bitwise(back.batch_stats, batch_stats)
    assert back.metadata == metadata
    data = path.read_bytes()
    check_bytes(data, masked, masks)
    assert stats.file_bytes == len(data) == back.stats.file_bytes
    assert stats.tensors == back.stats.tensors
    kept = sum(int(m.sum()) for m, f in zip(jax.tree.leaves(full), jax.tree.leaves(prunable))
               if f)
    assert sum(t.kept for t in stats.tensors if t.masked and t.name.endswith("kernel")) == kept


def test_empty_channels_and_empty_layers_round_trip():
  rng = np.random.default_rng(1)
  conv_mask = rng.random((3, 3, 8, 6)) < 0.5
  conv_mask[..., [1, 4]] = False        # whole output channels (filters) pruned
  conv_mask[:, :, 2, :] = False         # a whole input channel pruned
  dense_mask = rng.random((20, 7)) < 0.3
  dense_mask[5] = False                 # an input unit with no outgoing weight
  masks = {"conv": {"kernel": conv_mask}, "dense": {"kernel": dense_mask},
           "empty": {"kernel": np.zeros((16, 4), bool)}}
  params = {k: {"kernel": np.where(m["kernel"], rng.normal(size=m["kernel"].shape), 0.0)
                .astype(np.float32)} for k, m in masks.items()}
  data, stats = se.encode(params=params, masks=masks)
  back = se.decode(data)
  assert_bitwise(back.params, params)
  assert_bitwise(back.masks, masks)
  check_bytes(data, params, masks)
  assert {t.name: t.kept for t in stats.tensors}["params/empty/kernel"] == 0


def test_a_kept_weight_that_is_exactly_zero_stays_kept():
  rng = np.random.default_rng(2)
  mask = rng.random((30, 10)) < 0.2
  x = np.where(mask, rng.normal(size=mask.shape), 0.0).astype(np.float32)
  kept = np.argwhere(mask)
  x[tuple(kept[0])] = 0.0    # just grown by RigL, say
  x[tuple(kept[1])] = -0.0   # its sign bit is kept too
  data, _ = se.encode(params={"k": x}, masks={"k": mask})
  back = se.decode(data)
  assert np.array_equal(back.masks["k"], mask)
  assert back.masks["k"][tuple(kept[0])] and back.masks["k"][tuple(kept[1])]
  assert back.params["k"].tobytes() == x.tobytes()
  assert np.signbit(back.params["k"][tuple(kept[1])])


def nm_mask(shape, n, m, rng):
  """n of every m consecutive entries along axis -2 kept, at random."""
  moved = np.swapaxes(np.zeros(shape, bool), -2, -1).copy()
  groups = moved.reshape(-1, m)
  for g in groups:
    g[rng.choice(m, n, replace=False)] = True
  return np.swapaxes(groups.reshape(moved.shape), -2, -1)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_two_four_along_the_contraction_axis_uses_the_nm_code(dtype):
  rng = np.random.default_rng(3)
  masks = {"dense": nm_mask((16, 6), 2, 4, rng), "conv": nm_mask((3, 3, 8, 4), 2, 4, rng),
           "one_of_eight": nm_mask((16, 3), 1, 8, rng)}
  params = {k: np.where(m, rng.normal(size=m.shape), 0.0).astype(dtype)
            for k, m in masks.items()}
  data, stats = se.encode(params=params, masks=masks)
  back = se.decode(data)
  assert_bitwise(back.params, params)
  assert_bitwise(back.masks, masks)
  check_bytes(data, params, masks)
  by_name = {t.name: t for t in stats.tensors}
  size = np.dtype(dtype).itemsize
  for name, (n, m, bits) in {"dense": (2, 4, 3), "conv": (2, 4, 3),
                             "one_of_eight": (1, 8, 3)}.items():
    t = by_name[f"params/{name}"]
    assert (t.encoding, t.nm) == ("nm", (n, m))
    assert t.bytes == math.ceil(t.size // m * bits / 8) + t.kept * size
    assert t.bytes < math.ceil(t.size / 8) + t.kept * size   # fewer than the bitmask
  # The same 2:4 pattern along axis -1 (the output axis) is no N:M along axis -2.
  transposed = np.ascontiguousarray(masks["dense"].T)
  _, stats = se.encode(params={"k": np.where(transposed, 1.0, 0.0).astype(np.float32)},
                       masks={"k": transposed})
  assert stats.tensors[0].encoding != "nm"


def test_nm_codes_are_combination_indices_packed_msb_first():
  # Kernel [8, 2]: groups in C order of the kernel with axis -2 moved last. Here N:M and the
  # bitmask take 34 bytes each: the documented tie order picks N:M.
  patterns = [(0, 1), (0, 2), (2, 3), (1, 3)]   # indices 0, 1, 5, 4 among C(4, 2)
  mask = np.zeros((2, 8), bool)                 # [out, in]
  for g, p in enumerate(patterns):
    mask[g // 2, 4 * (g % 2) + np.array(p)] = True
  mask = mask.T
  x = np.where(mask, np.arange(16, dtype=np.float32).reshape(8, 2) + 1, 0).astype(np.float32)
  data, _ = se.encode(params={"k": x}, masks={"k": mask})
  entry = header_of(data)["tensors"][0]
  assert entry["encoding"] == "nm" and entry["nm"] == [2, 4]
  blobs = {b[0]: data[b[1]:b[1] + b[2]] for b in entry["blobs"]}
  assert blobs["codes"] == bytes([0b00000110, 0b11000000])  # 000 001 101 100, zero padded
  assert np.array_equal(np.frombuffer(blobs["values"], "<f4"), x.T[mask.T])


def test_dtypes_round_trip_and_others_are_refused():
  rng = np.random.default_rng(4)
  mask = rng.random((12, 8)) < 0.3
  params = {str(np.dtype(d)): np.where(mask, rng.normal(size=mask.shape) * 50, 0).astype(d)
            for d in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64, np.int8,
                      np.int32, np.uint16, np.int64)}
  params["bool"] = mask & (rng.random(mask.shape) < 0.5)
  params["big_endian"] = np.where(mask, 1.5, 0).astype(">f4")
  masks = {k: mask for k in params}
  data, _ = se.encode(params=params, masks=masks)
  back = se.decode(data)
  for k, x in params.items():
    y = back.params[k]
    assert y.dtype.name == x.dtype.name and y.dtype.isnative, k   # '>f4' comes back '<f4'
    assert y.tobytes() == x.astype(y.dtype).tobytes(), k
  for bad in (np.complex64, ml_dtypes.float8_e4m3fn):
    with pytest.raises(se.ExportError, match=r"params/w/kernel has dtype .*allowed"):
      se.encode(params={"w": {"kernel": np.zeros((2, 2), bad)}})
  with pytest.raises(se.ExportError, match="params/s has dtype"):
    se.encode(params={"s": np.array(["a"])})


def test_masked_parameters_must_be_zero_unless_zero_masked():
  mask = np.array([[True, False], [False, True]])
  x = np.array([[1.0, 2.0], [-0.0, 3.0]], np.float32)
  with pytest.raises(se.ExportError, match=r"params/a/kernel: 1 masked entries are nonzero"):
    se.encode(params={"a": {"kernel": x}}, masks={"a": {"kernel": mask}})
  data, _ = se.encode(params={"a": {"kernel": x}}, masks={"a": {"kernel": mask}},
                      zero_masked=True)
  y = se.decode(data).params["a"]["kernel"]
  assert y.tobytes() == np.array([[1.0, 0.0], [0.0, 3.0]], np.float32).tobytes()  # -0.0 -> +0.0
  with pytest.raises(se.ExportError, match="nonzero"):
    se.encode(params={"k": np.array([np.nan, 1.0], np.float32)},
              masks={"k": np.array([False, True])})


def test_mismatched_mask_trees_are_refused_naming_the_tensor():
  params = {"dense": {"kernel": np.zeros((4, 3), np.float32), "bias": np.zeros(3, np.float32)}}
  cases = [({"dense": {"kernal": np.ones((4, 3), bool)}}, r"'params/dense/kernal'.*no parameter"),
           ({"dense": np.ones((4, 3), bool)}, r"'params/dense'.*subtree"),
           ({"dense": {"kernel": np.ones((3, 4), bool)}},
            r"masks\['params/dense/kernel'\] has shape \(3, 4\), the parameter \(4, 3\)"),
           ({"dense": {"kernel": np.full((4, 3), 2, np.uint8)}},
            r"masks\['params/dense/kernel'\] must be bool")]
  for masks, message in cases:
    with pytest.raises(se.ExportError, match=message):
      se.encode(params=params, masks=masks)
  # uint8 0/1 masks are masks; a None subtree is unmasked.
  data, _ = se.encode(params=params, masks={"dense": {"kernel": np.ones((4, 3), np.uint8),
                                                      "bias": None}})
  assert se.decode(data).masks["dense"]["kernel"].dtype == bool
  with pytest.raises(se.ExportError, match="JSON"):
    se.encode(params=params, metadata={"f": object()})


def small_export():
  rng = np.random.default_rng(5)
  mask = rng.random((40, 20)) < 0.1
  params = {"d1": {"kernel": np.where(mask, rng.normal(size=mask.shape), 0).astype(np.float32),
                   "bias": rng.normal(size=20).astype(np.float32)},
            "d2": {"kernel": np.where(mask[:20, :6], 1.0, 0.0).astype(ml_dtypes.bfloat16)}}
  masks = {"d1": {"kernel": mask}, "d2": {"kernel": mask[:20, :6]}}
  stats = {"bn": {"mean": rng.normal(size=5).astype(np.float32)}}
  return se.encode(params=params, masks=masks, batch_stats=stats, metadata={"model": "m"})


def test_corrupted_files_are_refused_naming_the_tensor():
  data, _ = small_export()
  header = header_of(data)
  blobs = [(t["name"], b) for t in header["tensors"] for b in t["blobs"]]
  # Truncated inside each tensor: names it.
  for name, (_, offset, length, _) in blobs:
    if length:
      with pytest.raises(se.ExportError, match=rf"truncated.*{name}"):
        se.decode(data[:offset + length - 1])
  with pytest.raises(se.ExportError, match="truncated inside its header"):
    se.decode(data[:100])
  with pytest.raises(se.ExportError, match="preamble"):
    se.decode(data[:10])
  # A flipped bit in a value blob: names the tensor.
  for name, (role, offset, length, _) in blobs:
    if role == "values" and length:
      broken = bytearray(data)
      broken[offset + length // 2] ^= 0x10
      with pytest.raises(se.ExportError, match=rf"{name} fails its CRC32"):
        se.decode(bytes(broken))
  broken = bytearray(data)
  broken[30] ^= 1  # in the header JSON
  with pytest.raises(se.ExportError, match="header fails its CRC32"):
    se.decode(bytes(broken))
  newer = bytearray(data)
  newer[8:12] = struct.pack("<I", 2)
  with pytest.raises(se.ExportError, match="format version 2, newer than this reader's 1"):
    se.decode(bytes(newer))
  with pytest.raises(se.ExportError, match="trailing"):
    se.decode(data + b"\0")


def test_every_single_flipped_bit_is_refused():
  data, _ = small_export()
  reference = se.decode(data)
  for i in range(len(data)):
    broken = bytearray(data)
    broken[i] ^= 1 << (i % 8)
    with pytest.raises(se.ExportError):
      se.decode(bytes(broken))
  assert reference.metadata == {"model": "m"}


def test_save_is_atomic_and_the_cli_prints_the_report(tmp_path, capsys):
  data, _ = small_export()
  path = tmp_path / "run.sjx"
  path.write_bytes(b"old")
  with pytest.raises(se.ExportError):
    se.save(path, params={"k": np.zeros(2, np.complex64)})
  assert path.read_bytes() == b"old"           # a failed save leaves the old file
  exported = se.decode(data)
  stats = se.save(path, params=exported.params, masks=exported.masks,
                  batch_stats=exported.batch_stats, metadata=exported.metadata)
  assert path.read_bytes() == data and stats.file_bytes == len(data)
  assert os.listdir(tmp_path) == ["run.sjx"]  # no temporary file left
  assert se.main([str(path)]) == 0   # what python -m signin_jax.sparse_export runs
  out = capsys.readouterr().out
  assert "params/d1/kernel" in out and "masked tensors:" in out
  path.write_bytes(data[:-4])
  assert se.main([str(path)]) == 1
  assert "truncated" in capsys.readouterr().err


def test_jax_arrays_and_frozen_dicts_are_accepted():
  from flax.core import FrozenDict
  mask = jnp.arange(12).reshape(4, 3) % 3 == 0
  params = FrozenDict({"d": {"kernel": jnp.where(mask, 2.5, 0.0).astype(jnp.bfloat16)}})
  data, _ = se.encode(params=params, masks=FrozenDict({"d": {"kernel": mask}}))
  back = se.decode(data)
  assert back.params["d"]["kernel"].dtype == ml_dtypes.bfloat16
  assert np.asarray(params["d"]["kernel"]).tobytes() == back.params["d"]["kernel"].tobytes()
  assert np.array_equal(back.masks["d"]["kernel"], np.asarray(mask))
