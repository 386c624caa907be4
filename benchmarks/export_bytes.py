"""Bytes of the compact export (signin_jax.sparse_export) against dense, per model and sparsity.

    python benchmarks/export_bytes.py            # the table in sparse_export's docstring
    python benchmarks/export_bytes.py --per-tensor   # also every tensor's encoding and bytes

For LeNet-300-100, the quickstart CNN (small_cnn, width 16, Fashion-MNIST shapes) and the CIFAR
ResNet-20, with random ERK masks (masks.create_masks) at 90, 95 and 98 % sparsity, and a random
2:4 mask along axis -2 of every kernel whose axis -2 is a multiple of 4 (the others unmasked).
Only the prunable leaves (ndim >= 2) get a mask, as the trainer's masks. It prints the masked
(prunable) tensors' bytes as a share of their dense float32 bytes, next to what two single
encodings would take for the same masks (bitmask + values; CSR with uint16 indices and uint32
row pointers where needed, the issue's references), and the issue's goal. Byte counts do not
depend on the machine or on timing: they are exact functions of the masks.
"""

import argparse
import math
import os
import sys
import tempfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from signin_jax import masks as masks_lib  # noqa: E402
from signin_jax import models  # noqa: E402
from signin_jax import sparse_export  # noqa: E402

MODELS = (("lenet300_100", None, (1, 28, 28, 1)), ("small_cnn", 16, (1, 28, 28, 1)),
          ("resnet20", None, (1, 32, 32, 3)))
GOALS = {0.9: 0.14, 0.95: 0.085, 0.98: 0.04}


def variables_of(name, width, input_shape):
  model = models.get_model(name, num_classes=10, width=width)
  return model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape), train=False)


def prunable_only(params, full_masks):
  """The masks of the prunable leaves, None elsewhere (what the trainer tracks)."""
  return jax.tree.map(lambda p, m, f: np.asarray(m) if f else None, params, full_masks,
                      masks_lib.prunable(params))


def two_four(params, key):
  """A random 2:4 mask along axis -2 of every kernel whose axis -2 divides by 4."""
  def one(path, p):
    if p.ndim < 2 or p.shape[-2] % 4:
      return None
    k = jax.random.fold_in(key, zlib.crc32(masks_lib.path_str(path).encode()) % (2 ** 31))
    scores = np.asarray(jax.random.uniform(k, p.shape))
    groups = np.moveaxis(scores, -2, -1).reshape(-1, 4)
    keep = np.argsort(-groups, axis=1, kind="stable")[:, :2]
    mask = np.zeros_like(groups, bool)
    np.put_along_axis(mask, keep, True, axis=1)
    moved_shape = p.shape[:-2] + (p.shape[-1], p.shape[-2])
    return np.moveaxis(mask.reshape(moved_shape), -1, -2)
  return jax.tree_util.tree_map_with_path(one, params)


def reference_shares(stats):
  """(bitmask + values, CSR uint16) bytes of the masked tensors / their dense bytes."""
  bitmask = csr = dense = 0
  for t in stats.tensors:
    if not t.masked:
      continue
    rows = math.prod(t.shape[:-1])
    b = t.dense_bytes // t.size
    bitmask += math.ceil(t.size / 8) + t.kept * b
    csr += (rows + 1) * (2 if t.kept < 2 ** 16 else 4) + t.kept * (2 + b)
    dense += t.dense_bytes
  return bitmask / dense, csr / dense


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--per-tensor", action="store_true")
  args = parser.parse_args()
  print("| model | masks | sparsity | export share | encodings | bitmask+values | CSR uint16 "
        "| goal | file bytes | dense bytes |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    for name, width, input_shape in MODELS:
      variables = variables_of(name, width, input_shape)
      params = jax.tree.map(np.asarray, variables["params"])
      batch_stats = jax.tree.map(np.asarray, variables.get("batch_stats"))
      cases = []
      for s in GOALS:
        full = masks_lib.create_masks(jax.random.PRNGKey(1), params, s, method="random",
                                      distribution="erk")
        cases.append(("random ERK", s, prunable_only(params, full)))
      cases.append(("2:4 axis -2", None, two_four(params, jax.random.PRNGKey(2))))
      for label, s, mask in cases:
        masked_params = jax.tree.map(
            lambda p, m: p if m is None else np.where(m, p, np.zeros((), p.dtype)), params,
            mask, is_leaf=lambda x: x is None)
        path = os.path.join(tmp, f"{name}.sjx")
        stats = sparse_export.save(path, params=masked_params, masks=mask,
                                   batch_stats=batch_stats,
                                   metadata={"model": name, "width": width})
        assert os.path.getsize(path) == stats.file_bytes
        back = sparse_export.load(path)  # the round trip, checked on every row
        for a, b in zip(jax.tree.leaves(masked_params), jax.tree.leaves(back.params)):
          assert a.tobytes() == b.tobytes()
        counts = {}
        for t in stats.tensors:
          if t.masked:
            enc = f"{t.nm[0]}:{t.nm[1]}" if t.nm else t.encoding
            counts[enc] = counts.get(enc, 0) + 1
        bitmask, csr = reference_shares(stats)
        measured = 1 - (sum(t.kept for t in stats.tensors if t.masked)
                        / sum(t.size for t in stats.tensors if t.masked))
        goal = GOALS.get(s)
        print(f"| {name} | {label} | {measured:.2%} | {stats.masked_share:.2%} | "
              f"{', '.join(f'{k} {v}' for k, v in sorted(counts.items()))} | {bitmask:.2%} | "
              f"{csr:.2%} | {'-' if goal is None else f'<= {goal:.1%}'}"
              f"{'' if goal is None or stats.masked_share <= goal else ' MISSED'} | "
              f"{stats.file_bytes:,} | {stats.dense_bytes:,} |")
        if args.per_tensor:
          print(sparse_export.format_stats(stats))


if __name__ == "__main__":
  main()
