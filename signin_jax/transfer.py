"""Starting a run from another run's artifacts: its mask, and optionally its signs or magnitudes.

For lottery-ticket and sign-transfer studies (``config.init_from``; the paper's Table 1). A
source run leaves ``final_weights.npz`` (parameters and masks at its end) and, for every epoch
``k`` of its ``config.export_epochs``, ``weights/epoch_<k>.npz`` (the same at the end of epoch
``k``; epoch 0 is the initialization). A new run takes

* the mask of the source at ``mask_epoch`` (-1: its final mask), for every prunable layer;
* per kept weight, ``theta = sign * magnitude`` with

  - ``signs``: ``'init'`` (this run's own initialization), ``'learned'`` (the source's at
    ``signs_epoch``), ``'random'`` (independent fair +-1);
  - ``magnitudes``: ``'init'`` (this run's own initialization), ``'learned'`` (the source's
    ``|theta|`` at ``magnitudes_epoch``), ``'random'`` (``|theta|`` of an independent draw of
    the model's initializer).

  Our choice where the papers are silent: a kept weight that is exactly 0 in the source at the
  requested epoch (a dense-to-sparse run had it inactive then) takes this run's own sign or
  magnitude instead.

Non-prunable parameters (biases, normalization) always start from this run's initialization.
"""

import os
import zipfile
from typing import Dict, NamedTuple, Optional

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from signin_jax import masks as masks_lib

SIGNS = ("init", "learned", "random")
MAGNITUDES = ("init", "learned", "random")
FINAL = -1


def weights_file(workdir: str, epoch: int) -> str:
  """Where a run's weights at the end of ``epoch`` are (-1: at the end of the run)."""
  if epoch == FINAL:
    return os.path.join(workdir, "final_weights.npz")
  return os.path.join(workdir, "weights", f"epoch_{epoch}.npz")


def exported_epochs(workdir: str):
  """The epochs a run exported (``weights/epoch_<k>.npz``), plus -1 if it finished."""
  found = []
  directory = epath.Path(workdir, "weights")
  if directory.exists():
    for p in directory.iterdir():
      stem = p.name[len("epoch_"):-len(".npz")]
      if p.name.startswith("epoch_") and p.name.endswith(".npz") and stem.isdigit():
        found.append(int(stem))
  if epath.Path(weights_file(workdir, FINAL)).exists():
    found.append(FINAL)
  return sorted(found)


def _read(workdir: str, epoch: int, field: str) -> Dict[str, np.ndarray]:
  path = weights_file(workdir, epoch)
  if not epath.Path(path).exists():
    _missing(workdir, epoch, field)
  try:
    with epath.Path(path).open("rb") as f:
      with np.load(f) as data:
        return {k: data[k] for k in data.files}
  # A file cut short or altered: zipfile's BadZipFile (no central directory, a CRC-32
  # mismatch), or numpy's errors on a damaged array header.
  except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
    raise ValueError(
        f"config.init_from.workdir={workdir!r} is invalid: {path} cannot be read ("
        f"{type(e).__name__}: {e}); it is damaged, e.g. cut short by a full disk or an "
        "interrupted copy. Copy it again, or point config.init_from.workdir at an intact "
        "run.") from e


class Source(NamedTuple):
  """The source's arrays by layer name, for the prunable layers."""
  masks: Dict[str, np.ndarray]
  signs: Optional[Dict[str, np.ndarray]]  # None unless signs='learned'.
  magnitudes: Optional[Dict[str, np.ndarray]]  # None unless magnitudes='learned'.


def check_available(init_from) -> None:
  """That the source workdir and every epoch's file ``init_from`` asks for exist (cheap: run
  before anything is built)."""
  workdir = init_from.workdir
  if not epath.Path(workdir).exists():
    raise ValueError(f"config.init_from.workdir={workdir!r} is invalid: it does not exist.")
  wanted = [("mask_epoch", init_from.mask_epoch)]
  wanted += [(f"{kind}_epoch", init_from[f"{kind}_epoch"]) for kind in ("signs", "magnitudes")
             if init_from[kind] == "learned"]
  for field, epoch in wanted:
    if not epath.Path(weights_file(workdir, epoch)).exists():
      _missing(workdir, epoch, field)


def _missing(workdir, epoch, field):
  raise ValueError(
      f"config.init_from.{field}={epoch} is invalid: {weights_file(workdir, epoch)} does not "
      f"exist. That run has the epochs {exported_epochs(workdir)} (-1: its final weights, "
      "written when it finished; k: the end of epoch k, written for every k of its "
      "config.export_epochs).")


def load_source(init_from, param_shapes, *, sparsity: Optional[float] = None) -> Source:
  """Reads and checks what ``init_from`` asks for against this run's parameter shapes (a tree
  like params of anything with ``.shape``, e.g. ``jax.eval_shape`` of the model's init).

  Raises:
    ValueError: naming the field, if the workdir, an epoch's file or a layer's mask is missing,
      the source's layers have other shapes (another model), or its mask's sparsity is not
      ``sparsity`` (when given).
  """
  check_available(init_from)
  workdir = init_from.workdir
  flat, _ = jax.tree_util.tree_flatten_with_path(param_shapes)
  flags = jax.tree.leaves(masks_lib.prunable(param_shapes))
  shapes = {masks_lib.path_str(p): tuple(x.shape) for (p, x), f in zip(flat, flags) if f}

  def layers(epoch, field, kind):
    arrays = _read(workdir, epoch, field)
    out = {}
    for name, shape in shapes.items():
      key = f"{kind}/{name}"
      if key not in arrays:
        raise ValueError(
            f"config.init_from.workdir={workdir!r} is invalid: {weights_file(workdir, epoch)} "
            f"has no {key!r}, so it is of another model (or written before masks were saved); "
            f"this model's prunable layers are {sorted(shapes)}.")
      if arrays[key].shape != shape:
        raise ValueError(
            f"config.init_from.workdir={workdir!r} is invalid: it is of another model: "
            f"{key} has shape {arrays[key].shape} there and {shape} in this config.")
      out[name] = arrays[key]
    return out

  def learned(choice, epoch, field):
    return layers(epoch, field, "params") if choice == "learned" else None

  masks = {k: np.asarray(v, bool) for k, v in
           layers(init_from.mask_epoch, "mask_epoch", "masks").items()}
  size = sum(m.size for m in masks.values())
  kept = sum(int(m.sum()) for m in masks.values())
  if sparsity is not None and kept != round((1 - sparsity) * size):
    raise ValueError(
        f"config.sparsity={sparsity} is invalid with config.init_from.workdir={workdir!r}: its "
        f"mask keeps {kept} of {size} prunable weights (sparsity {1 - kept / size:.4f}); set "
        "config.sparsity to the source's.")
  return Source(masks=masks,
                signs=learned(init_from.signs, init_from.signs_epoch, "signs_epoch"),
                magnitudes=learned(init_from.magnitudes, init_from.magnitudes_epoch,
                                   "magnitudes_epoch"))


def masks_from(source: Source, params):
  """Masks like params: the source's at its prunable layers, all True elsewhere."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.asarray(source.masks.get(masks_lib.path_str(path),
                                                   np.ones(jnp.shape(p), bool))), params)


def combine(params, masks, source: Source, *, signs: str, magnitudes: str, key,
            random_params=None):
  """``mask * sign * magnitude`` at the prunable layers of ``params`` (this run's masked
  initialization); the other leaves unchanged. ``random_params``: an independent draw of the
  initializer (for ``magnitudes='random'``); ``key`` draws random signs."""
  if signs not in SIGNS or magnitudes not in MAGNITUDES:
    raise ValueError(f"signs must be one of {SIGNS} and magnitudes one of {MAGNITUDES}, got "
                     f"{signs!r} and {magnitudes!r}.")
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  mask_leaves = treedef.flatten_up_to(masks)
  random_leaves = (treedef.flatten_up_to(random_params) if random_params is not None
                   else [None] * len(flat))
  keys = jax.random.split(key, len(flat))
  out = []
  for (path, theta), m, r, k in zip(flat, mask_leaves, random_leaves, keys):
    name = masks_lib.path_str(path)
    if name not in source.masks:
      out.append(theta)
      continue
    sign, magnitude = jnp.sign(theta), jnp.abs(theta)
    if signs == "learned":
      learned = jnp.sign(jnp.asarray(source.signs[name], theta.dtype))
      sign = jnp.where(learned != 0, learned, sign)
    elif signs == "random":
      sign = jnp.where(jax.random.bernoulli(k, 0.5, theta.shape), 1.0, -1.0).astype(theta.dtype)
    if magnitudes == "learned":
      learned = jnp.abs(jnp.asarray(source.magnitudes[name], theta.dtype))
      magnitude = jnp.where(learned != 0, learned, magnitude)
    elif magnitudes == "random":
      magnitude = jnp.abs(r)
    out.append(jnp.where(m, sign * magnitude, jnp.zeros_like(theta)))
  return treedef.unflatten(out)
