"""Files a run writes into its workdir, each complete or not at all (local paths and gs://).

A write that fails (a full disk, a quota) leaves neither the file nor its temporary copy, and
its error names the file: ``OSError`` with the original ``errno`` (``ENOSPC``, ``EDQUOT``, ...)
and the message ``"<reason>: <path>"``.
"""

import io
import json
from typing import Any, Dict

from etils import epath
import ml_collections
import numpy as np


def flat_config(config) -> Dict[str, Any]:
  flat = {}

  def visit(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        visit(name + ".", value)
      else:
        flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)

  visit("", config.to_dict())
  return flat


def write_json_atomically(path: str, obj) -> None:
  write_atomically(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def save_npz_atomically(path: str, arrays: Dict[str, np.ndarray]) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_atomically(path, buffer.getvalue())


def write_atomically(path: str, data: bytes) -> None:
  # Locally a rename makes the file appear complete or not at all; on gs:// an object appears
  # only when its upload completes, so the rename there (a copy) just keeps one code path.
  tmp = epath.Path(path + ".tmp")
  try:
    tmp.write_bytes(data)
    tmp.replace(path)
  except BaseException as e:
    _remove_quietly(tmp)  # A full disk must not leave a partial (often empty) copy behind.
    if isinstance(e, OSError):
      raise naming(e, path) from e
    raise


def naming(error: OSError, path: str) -> OSError:
  """``error`` with ``path`` in its message (OS errors of writes often name no file)."""
  if str(path) in str(error):
    return error
  reason = error.strerror or str(error) or type(error).__name__
  named = OSError(error.errno, f"{reason}: {path}") if error.errno else OSError(
      f"{reason}: {path}")
  return named


def _remove_quietly(path: epath.Path) -> None:
  try:
    if path.exists():
      path.unlink()
  except OSError:
    pass
