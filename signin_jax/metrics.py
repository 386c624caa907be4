"""Metric writers (TensorBoard event files, JSON lines) and the per-layer statistics the trainer logs.

Everything here works on host numpy copies of the parameters (one replica), keyed by layer name
(the parameter's path, e.g. ``'Conv_0/kernel'``). Definitions:

* sign flips of a layer between a reference and now: the fraction of its unmasked weights whose
  sign ``sign(x) in {-1, 0, +1}`` differs from the reference sign. A weight that reaches exactly
  0 from either side counts as a flip; masked weights (always 0) never do.
* measured sparsity of a layer: the fraction of its entries that are exactly 0 in the given
  weights (measured on the weights, not read off the mask).
* mean beta of a Sign-In layer: the mean of ``m**2 - w**2`` over its unmasked entries.
* mask changes of a layer between two masks: entries dropped (kept before, not now), grown (the
  reverse), and the density now.

Totals (``'total'``) weight every layer by its number of counted entries.
"""

import contextlib
import json
import os
import time
from typing import Any, Dict, Mapping, Optional

from etils import epath

import jax
import numpy as np
import optax

from signin_jax import masks as masks_lib
from signin_jax import run_files

TOTAL = "total"


# 'Conv_0/kernel' for the key path of ``params['Conv_0']['kernel']``: the masks' own naming.
layer_name = masks_lib.path_str


def by_layer(tree) -> Dict[str, Any]:
  """Flattens a pytree into ``{layer_name: leaf}``, dropping ``None`` and ``optax.MaskedNode``."""
  is_leaf = lambda x: x is None or isinstance(x, optax.MaskedNode)
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return {layer_name(path): leaf for path, leaf in flat
          if leaf is not None and not isinstance(leaf, optax.MaskedNode)}


def signs(weights: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """``{name: sign(w)}`` as int8, the compact reference kept for later sign-flip counts."""
  return {name: np.sign(np.asarray(w)).astype(np.int8) for name, w in weights.items()}


def _with_total(counted: Mapping[str, int], hits: Mapping[str, float]) -> Dict[str, float]:
  out = {name: hits[name] / counted[name] if counted[name] else 0.0 for name in counted}
  total = sum(counted.values())
  out[TOTAL] = sum(hits.values()) / total if total else 0.0
  return out


def sign_flip_fractions(weights: Mapping[str, np.ndarray], reference_signs: Mapping[str, np.ndarray],
                        masks: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, float]:
  """Per layer (and ``'total'``): fraction of unmasked weights whose sign differs from the reference.

  Args:
    weights: ``{name: weights}`` now.
    reference_signs: ``{name: int8 signs}`` (see :func:`signs`) for the same names.
    masks: ``{name: bool}`` (True = kept); layers without an entry count every weight.
  """
  masks = masks or {}
  counted, flipped = {}, {}
  for name, ref in reference_signs.items():
    keep = np.asarray(masks[name], bool) if name in masks else np.ones(ref.shape, bool)
    differs = np.sign(np.asarray(weights[name])).astype(np.int8) != ref
    counted[name] = int(keep.sum())
    flipped[name] = int(np.logical_and(differs, keep).sum())
  return _with_total(counted, flipped)


def both_kept(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """``{name: a & b}``: the entries kept in both masks ({} stands for all kept)."""
  if not a or not b:
    return dict(a or b)
  return {name: np.logical_and(a[name], b[name]) for name in a}


def mask_changes(previous: Mapping[str, np.ndarray],
                 current: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
  """Per layer and ``'total'``: ``{'dropped', 'grown', 'density'}``: entries kept in
  ``previous`` but not in ``current``, the reverse, and the fraction kept in ``current``."""
  rows = {}
  for name, now in current.items():
    now, before = np.asarray(now, bool), np.asarray(previous[name], bool)
    rows[name] = {"dropped": int(np.sum(before & ~now)), "grown": int(np.sum(~before & now)),
                  "kept": int(now.sum()), "size": int(now.size)}
  total = {k: sum(r[k] for r in rows.values()) for k in ("dropped", "grown", "kept", "size")}
  rows[TOTAL] = total
  return {name: {"dropped": r["dropped"], "grown": r["grown"],
                 "density": r["kept"] / r["size"] if r["size"] else 0.0}
          for name, r in rows.items()}


def mean_betas(betas: Mapping[str, np.ndarray],
               masks: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, float]:
  """Per layer (and ``'total'``): mean of ``m**2 - w**2`` over unmasked entries."""
  masks = masks or {}
  counted, sums = {}, {}
  for name, beta in betas.items():
    beta = np.asarray(beta, np.float64)
    keep = np.asarray(masks[name], bool) if name in masks else np.ones(beta.shape, bool)
    counted[name] = int(keep.sum())
    sums[name] = float(beta[keep].sum())
  return _with_total(counted, sums)


def measured_sparsity(weights: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
  """Per layer and ``'total'``: ``{'size', 'nonzero', 'sparsity'}`` measured on the weights."""
  rows = {}
  for name, w in weights.items():
    w = np.asarray(w)
    rows[name] = {"size": int(w.size), "nonzero": int(np.count_nonzero(w))}
  size = sum(r["size"] for r in rows.values())
  rows[TOTAL] = {"size": size, "nonzero": sum(r["nonzero"] for r in rows.values())}
  for r in rows.values():
    r["sparsity"] = 1.0 - r["nonzero"] / r["size"] if r["size"] else 0.0
  return rows


def prefixed(prefix: str, values: Mapping[str, float]) -> Dict[str, float]:
  """``{'prefix/name': value}``, the layout of per-layer scalars in TensorBoard."""
  return {f"{prefix}/{name}": value for name, value in values.items()}


def is_remote(path: str) -> bool:
  """A URL such as ``gs://bucket/run`` (read and written through etils.epath), not a local path."""
  return "://" in str(path)


class JsonLinesWriter:
  """Appends one JSON object per write to a file: ``{"step": s, "time": t, <name>: value, ...}``.

  Object stores (``gs://``) cannot append: there the file is rewritten whole at every flush (a
  line per logged step: small), continuing what a resumed run's file already holds.
  """

  def __init__(self, path: str):
    self._path = epath.Path(path)
    self._remote = is_remote(path)
    if self._remote:
      self._lines = self._path.read_text().splitlines(True) if self._path.exists() else []
    else:
      self._file = open(path, "a", encoding="utf-8")

  def _write(self, record: Dict[str, Any]):
    line = json.dumps(record, sort_keys=True) + "\n"
    if self._remote:
      self._lines.append(line)
    else:
      with self._naming_the_file():
        self._file.write(line)

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    self._write({"step": int(step), "time": time.time(),
                 **{k: float(v) for k, v in scalars.items()}})

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._write({"hparams": json.loads(json.dumps(dict(hparams), default=str))})

  def flush(self):
    with self._naming_the_file():
      if self._remote:
        self._path.write_text("".join(self._lines))
      else:
        self._file.flush()

  def close(self):
    if self._remote:
      self.flush()
    elif not self._file.closed:
      with self._naming_the_file():
        self._file.close()

  @contextlib.contextmanager
  def _naming_the_file(self):
    """A failed write (a full disk) raises an OSError that names metrics.jsonl."""
    try:
      yield
    except OSError as e:
      raise run_files.naming(e, str(self._path)) from e


class TensorBoardWriter:
  """TensorBoard event files written with TensorFlow's core summary ops.

  Scalars go to TensorBoard's 'scalars' dashboard, hyperparameters to the 'text' dashboard as a
  table. (Only the summary kernels of TensorFlow are used, so the ``tensorboard`` package is
  needed to view the files, not to write them.)
  """

  def __init__(self, logdir: str):
    import tensorflow as tf  # Imported here: the rest of this module does not need TensorFlow.
    from tensorflow.core.framework import summary_pb2
    self._tf = tf
    self._writer = tf.summary.create_file_writer(logdir)
    self._metadata = {
        plugin: summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))
        for plugin in ("scalars", "text")}

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    tf = self._tf
    with self._writer.as_default():
      for name, value in scalars.items():
        tf.summary.write(name, tf.constant(float(value), tf.float32), step=int(step),
                         metadata=self._metadata["scalars"])

  def write_hparams(self, hparams: Mapping[str, Any]):
    tf = self._tf
    table = "| field | value |\n|---|---|\n" + "\n".join(
        f"| {k} | {v} |" for k, v in sorted(hparams.items()))
    with self._writer.as_default():
      tf.summary.write("hparams", tf.constant(table), step=0, metadata=self._metadata["text"])

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class MultiWriter:
  """Forwards every call to each of ``writers`` (none on processes other than 0)."""

  def __init__(self, writers):
    self._writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]):
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def create_writer(workdir: str, *, is_main_process: bool) -> MultiWriter:
  """TensorBoard event files plus ``workdir/metrics.jsonl`` on the main process; no-op elsewhere."""
  if not is_main_process:
    return MultiWriter([])
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  return MultiWriter([TensorBoardWriter(workdir),
                      JsonLinesWriter(os.path.join(workdir, "metrics.jsonl"))])


def format_duration(seconds: float) -> str:
  seconds = int(round(max(seconds, 0.0)))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours:d}:{minutes:02d}:{seconds:02d}"


def format_progress(*, step: int, num_steps: int, epoch: float, loss: float, accuracy: float,
                    learning_rate: float, images_per_sec: float, eta_seconds: float) -> str:
  """One console line of training progress."""
  return (f"step {step}/{num_steps} | epoch {epoch:.2f} | loss {loss:.4f} | acc {accuracy:.4f} | "
          f"lr {learning_rate:.4g} | {images_per_sec:,.0f} img/s | ETA {format_duration(eta_seconds)}")


def format_layer_table(columns: Mapping[str, Mapping[str, float]], *, fmt: str = "{:.4f}") -> str:
  """A text table: one row per layer (in first-column order), one column per statistic."""
  headers = list(columns)
  names = list(next(iter(columns.values()))) if columns else []
  width = max([len("layer")] + [len(n) for n in names])
  lines = ["  ".join(["layer".ljust(width)] + [h.rjust(max(len(h), 8)) for h in headers])]
  for name in names:
    cells = [fmt.format(columns[h][name]).rjust(max(len(h), 8)) for h in headers]
    lines.append("  ".join([name.ljust(width)] + cells))
  return "\n".join(lines)
