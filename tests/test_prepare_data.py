"""Offline preparation of Fashion-MNIST from the Debian files, read back through plain TFDS."""
import gzip
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from signin_jax import prepare_data


def _idx(name):
  with gzip.open(os.path.join(prepare_data.FASHION_MNIST_DIR, name + ".gz")) as f:
    data = f.read()
  offset = 16 if "images" in name else 8
  return np.frombuffer(data, np.uint8, offset=offset)


def test_prepared_data_reads_back_through_tfds(fashion_mnist_dir):
  train = tfds.load("fashion_mnist", split="train", data_dir=fashion_mnist_dir)
  test = tfds.load("fashion_mnist", split="test", data_dir=fashion_mnist_dir)
  assert len(train) == 60000 and len(test) == 10000
  # TFDS keeps the files' order within a shard; find the idx file's first image among the
  # first records of the (single-shard) test split and compare pixels and label exactly.
  images = _idx("t10k-images-idx3-ubyte").reshape(-1, 28, 28)
  labels = _idx("t10k-labels-idx1-ubyte")
  records = list(tfds.as_numpy(test.take(10000)))
  by_bytes = {r["image"].tobytes(): int(r["label"]) for r in records}
  for i in (0, 1, 9999):
    assert by_bytes[images[i].reshape(28, 28, 1).tobytes()] == labels[i]
  counts = np.bincount([r["label"] for r in records], minlength=10)
  np.testing.assert_array_equal(counts, np.bincount(labels, minlength=10))


def test_corrupted_source_is_refused(tmp_path):
  if not os.path.isdir(prepare_data.FASHION_MNIST_DIR):
    pytest.skip("Debian dataset-fashion-mnist is absent")
  src = tmp_path / "src"
  shutil.copytree(prepare_data.FASHION_MNIST_DIR, src)
  path = src / "t10k-labels-idx1-ubyte.gz"
  data = bytearray(gzip.open(path).read())
  data[100] = (data[100] + 1) % 10  # one label changed
  with gzip.open(path, "wb") as f:
    f.write(bytes(data))
  with pytest.raises(ValueError, match="differs from the original"):
    prepare_data.verify_fashion_mnist(str(src))
  (src / "train-images-idx3-ubyte.gz").unlink()
  with pytest.raises(ValueError, match="missing"):
    prepare_data.verify_fashion_mnist(str(src))


def test_ensure_prepared_is_a_no_op_when_readable(fashion_mnist_dir, monkeypatch):
  monkeypatch.setattr(prepare_data, "prepare_fashion_mnist",
                      lambda *a, **k: pytest.fail("should not prepare again"))
  prepare_data.ensure_prepared("fashion_mnist", fashion_mnist_dir)


def test_unknown_dataset_is_refused():
  with pytest.raises(ValueError, match="dataset must be one of"):
    prepare_data.ensure_prepared("mnist_fashion")
