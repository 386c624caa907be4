"""Resuming a workdir only under the config its checkpoints were written with.

Every checkpoint stores the config it was written under (:func:`record`, in its ``meta``: see
checkpointing.py), so the record survives whatever happens to ``config.json``. Before a run
resumes, :func:`check` compares each of the workdir's checkpoints with the current config, field
by field (dotted names, values as JSON holds them: tuples and lists alike), and refuses with
every differing field named. Only the fields in :data:`MAY_DIFFER` may change: they say how
often to log, evaluate, save and export, and where things live; none changes what is trained.

A field that a checkpoint from an older version lacks (added to ``configs/default.py`` since)
counts as equal when the current config holds its default there, so adding a field does not
break every resume; a field the checkpoint has but the current config lacks (removed since) is
not compared. A checkpoint written before configs were stored holds none: it is not compared
(a warning says so); the structure fingerprint still is (checkpointing.py).
"""

import importlib.util
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from absl import logging

# Fields that may differ between a checkpoint and the run resuming it, and why.
MAY_DIFFER = {
    "log_every_steps": "how often progress is logged",
    "eval_every_epochs": "how often the test set is evaluated (evaluation changes nothing)",
    "checkpoint_every_steps": "how often checkpoints are saved",
    "keep_checkpoints": "how many checkpoints are kept",
    "export_epochs": "which epochs' weights are exported",
    "data_dir": "where the prepared dataset is",
    "distributed": "how many processes share the run (run_start.check_resumable refuses a "
                   "layout with another number of steps per epoch)",
    "distributed_coordinator": "where the processes meet",
    "num_processes": "how many processes share the run (as distributed)",
    "process_id": "which process this is",
    "init_from.workdir": "where the source run is: its path may change (it may have moved; the "
                         "checkpoint holds all the run needs), not whether there is one",
}
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "default.py")
ABSENT = object()  # A field a checkpoint does not hold (see differences).


def record(config) -> Dict[str, Any]:
  """The config as a checkpoint stores it (plain JSON values)."""
  return json.loads(json.dumps(config.to_dict()))


def default_record() -> Optional[Dict[str, Any]]:
  """``configs/default.py``'s config as :func:`record` gives it; None where it is not shipped
  (the package installed without this repository's configs)."""
  if not os.path.isfile(_DEFAULT_CONFIG):
    return None
  spec = importlib.util.spec_from_file_location("_signin_jax_default_config", _DEFAULT_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return record(module.get_config())


def _flat(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def differences(saved: Dict[str, Any], config, defaults: Optional[Dict[str, Any]] = None
                ) -> List[Tuple[str, Any, Any]]:
  """``[(field, value in the checkpoint or ABSENT, value now)]`` for the fields that must not
  differ but do, sorted by field; ``saved`` is a checkpoint's :func:`record`, ``defaults``
  :func:`default_record` (for fields the checkpoint lacks)."""
  saved, now = _flat(saved), _flat(record(config))
  defaults = _flat(defaults or {})
  found = []
  for field in sorted(now):
    before = saved.get(field, ABSENT)
    if field == "init_from.workdir":  # Its path may change, not whether there is a source.
      if (before is ABSENT and now[field] is not None) or (
          before is not ABSENT and (before is None) != (now[field] is None)):
        found.append((field, before, now[field]))
    elif field in MAY_DIFFER:
      continue
    elif before is ABSENT:
      if field not in defaults or defaults[field] != now[field]:
        found.append((field, before, now[field]))
    elif before != now[field]:
      found.append((field, before, now[field]))
  return found


def _describe(field: str, before, now, defaults: Dict[str, Any]) -> str:
  if before is not ABSENT:
    return f"config.{field}: {before!r} in the checkpoint, {now!r} now"
  if field in defaults:
    return (f"config.{field}: absent in the checkpoint (counts as the default "
            f"{defaults[field]!r}), {now!r} now")
  return f"config.{field}: absent in the checkpoint (no default known), {now!r} now"


def check(saved_configs: Dict[int, Optional[Dict[str, Any]]], config, *, directory: str) -> None:
  """Refuses to resume under a config other than the checkpoints' (see the module docstring).

  Args:
    saved_configs: step -> the config stored in that checkpoint (None: written before configs
      were stored), for every checkpoint whose metadata reads back intact.
    config: the config of the run that would resume.
    directory: the checkpoints' directory (for the message).

  Raises:
    ValueError: naming the checkpoint's step and every field that differs.
  """
  defaults = None
  unrecorded = []
  for step in sorted(saved_configs, reverse=True):
    saved = saved_configs[step]
    if saved is None:
      unrecorded.append(step)
      continue
    if defaults is None:
      defaults = default_record() or {}
    found = differences(saved, config, defaults)
    if found:
      flat_defaults = _flat(defaults)
      raise ValueError(
          f"Cannot resume from the checkpoint at step {step} in {directory}: it was written "
          "under another config, which differs in "
          + "; ".join(_describe(f, b, n, flat_defaults) for f, b, n in found)
          + ". Resume with the checkpoint's values of these fields, or use a new workdir. "
          "Only these may differ on resume: "
          + ", ".join(f"config.{f}" for f in MAY_DIFFER) + " (docs/runs.md).")
  if unrecorded:
    logging.warning(
        "The checkpoint(s) at step(s) %s in %s were written before checkpoints stored their "
        "config: this run's config cannot be compared with theirs (only the model and "
        "optimizer structure is). Resume them only with the config they were started with.",
        sorted(unrecorded), directory)
