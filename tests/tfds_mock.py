"""`tfds.testing.mock_data` without its process-wide fake file system.

While `builder.as_dataset` runs, `tfds.testing.mock_data` swaps every epath/gfile path of the
whole process into a temporary directory (only so that the fake `data_dir` seems to exist).
Orbax lists the checkpoint directory from a background thread after a CheckpointManager is
created; when that listing coincides with the trainer opening a dataset, it looks in the
temporary directory and the save fails ("No such file or directory: .../checkpoints"). Here
the fake `data_dir` is a real temporary directory instead, and nothing else is redirected.
"""

import contextlib
import os
import tempfile
from unittest import mock

import tensorflow_datasets as tfds


class _RealFiles:
  """Stands in for tfds' MockFs: files it is asked to add are created for real."""

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    return False

  def add_file(self, path, content=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
      f.write(content or "")


@contextlib.contextmanager
def mock_data(**kwargs):
  """Like `tfds.testing.mock_data(**kwargs)`; `data_dir` is chosen here."""
  assert "data_dir" not in kwargs, "the fake data_dir must be a real, empty directory"
  with tempfile.TemporaryDirectory() as data_dir, \
       tfds.testing.mock_data(data_dir=data_dir, **kwargs), \
       mock.patch("tensorflow_datasets.testing.test_utils.MockFs", _RealFiles):
    yield
