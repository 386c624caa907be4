"""Offline preparation of Fashion-MNIST from the Debian files, read back through plain TFDS.

The dataset is prepared once per session by the `fashion_mnist_dir` fixture (tests/conftest.py:
``prepare_fashion_mnist`` into a temporary data_dir with every socket connection refused).
"""
import gzip
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums
from tensorflow_datasets.core.download import resource

from signin_jax import input_pipeline
from signin_jax import prepare_data

needs_debian_files = pytest.mark.skipif(
    not os.path.isdir(prepare_data.FASHION_MNIST_DIR),
    reason=f"{prepare_data.FASHION_MNIST_DIR} is absent (Debian package dataset-fashion-mnist)")


def _idx(name, source_dir=prepare_data.FASHION_MNIST_DIR):
  """An idx file parsed here, independently of prepare_data: images [N, 28, 28], labels [N]."""
  with gzip.open(os.path.join(source_dir, name + ".gz")) as f:
    data = f.read()
  if "images" in name:
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)
  return np.frombuffer(data, np.uint8, offset=8)


@pytest.fixture
def no_network(monkeypatch):
  """Refuses (and records) every name lookup and connection; a bogus proxy for good measure."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network disabled in this test")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket.socket, "connect_ex", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
    monkeypatch.setenv(var, "http://127.0.0.1:9")
  return attempts


def _sorted_rows(images, labels):
  """(image, label) pairs as rows of bytes, sorted: a multiset that is cheap to compare."""
  rows = np.concatenate([images.reshape(len(images), -1), labels.reshape(-1, 1)], axis=1)
  return np.sort(np.ascontiguousarray(rows.astype(np.uint8)).view(
      np.dtype((np.void, rows.shape[1]))).ravel())


@pytest.mark.parametrize("split,name", [("train", "train"), ("test", "t10k")])
def test_prepared_data_reads_back_through_tfds(fashion_mnist_dir, split, name):
  ds = tfds.load("fashion_mnist", split=split, data_dir=fashion_mnist_dir)
  images, labels = _idx(f"{name}-images-idx3-ubyte"), _idx(f"{name}-labels-idx1-ubyte")
  assert len(ds) == len(labels) == {"train": 60000, "test": 10000}[split]
  parts = list(tfds.as_numpy(ds.batch(20000)))
  got_images = np.concatenate([p["image"] for p in parts])
  got_labels = np.concatenate([p["label"] for p in parts])
  assert got_images.shape == (len(labels), 28, 28, 1)
  # The same (image, label) pairs as the idx files, with the same multiplicities (TFDS stores
  # the examples in its own order) ...
  np.testing.assert_array_equal(_sorted_rows(got_images, got_labels),
                                _sorted_rows(images, labels))
  # ... and so the idx file's first example, with its label.
  first = np.flatnonzero((got_images[..., 0] == images[0]).all(axis=(1, 2)))
  assert len(first) >= 1 and set(got_labels[first]) == {labels[0]}


def test_pipeline_reads_the_prepared_shards(fashion_mnist_dir):
  # Real sub-split metadata (no counting): 60000 / 2 processes / 500 per step.
  assert input_pipeline.steps_per_epoch("fashion_mnist", 1000, data_dir=fashion_mnist_dir,
                                        process_count=2) == 60
  evals = [list(input_pipeline.eval_iterator("fashion_mnist", global_batch_size=6000,
                                             data_dir=fashion_mnist_dir, process_index=i,
                                             process_count=2)) for i in range(2)]
  assert [len(e) for e in evals] == [2, 2]
  masked = [b["label"][b["mask"].astype(bool)] for e in evals for b in e]
  assert sum(len(m) for m in masked) == 10000
  np.testing.assert_array_equal(np.bincount(np.concatenate(masked), minlength=10),
                                np.bincount(_idx("t10k-labels-idx1-ubyte"), minlength=10))
  input_pipeline.clear_cache()


@needs_debian_files
def test_seeded_cache_holds_the_registered_archives_and_needs_no_network(tmp_path, no_network):
  builder = tfds.builder("fashion_mnist", data_dir=str(tmp_path))
  files = prepare_data.read_fashion_mnist()
  written = prepare_data.seed_download_cache(builder, files)
  # Where TFDS looks for an already downloaded URL: downloads/<get_dl_fname(url, sha256)>.
  expected = {os.path.join(str(tmp_path), "downloads", resource.get_dl_fname(url, info.checksum)):
              info for url, info in builder.url_infos.items()}
  assert sorted(written) == sorted(expected) and len(written) == 4
  for path in written:
    assert os.path.exists(path + ".INFO")
    # TFDS's own hashing: the cached file is, byte for byte, the archive TFDS registered.
    assert checksums.compute_url_info(path) == expected[path]
  # TFDS's download manager finds every URL cached and touches no network.
  manager = tfds.download.DownloadManager(download_dir=str(tmp_path / "downloads"),
                                          url_infos=builder.url_infos)
  paths = manager.download(list(builder.url_infos))
  assert sorted(str(p) for p in paths) == sorted(written)
  assert no_network == []



def _copy_sources(tmp_path, recompress=()):
  src = tmp_path / "src"
  src.mkdir()
  for name in prepare_data.FASHION_MNIST_SHA256:
    source = os.path.join(prepare_data.FASHION_MNIST_DIR, name + ".gz")
    if name in recompress:
      with gzip.open(source) as f:
        (src / (name + ".gz")).write_bytes(gzip.compress(f.read(), compresslevel=1))
    else:
      shutil.copy(source, src / (name + ".gz"))
  return src


@needs_debian_files
def test_recompressed_sources_are_cached_as_their_verified_content(tmp_path, no_network,
                                                                   caplog):
  labels = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")
  src = _copy_sources(tmp_path, recompress=labels)
  files = prepare_data.read_fashion_mnist(str(src))  # same content: accepted
  builder = tfds.builder("fashion_mnist", data_dir=str(tmp_path / "tfds"))
  written = prepare_data.seed_download_cache(builder, files)
  warned = [r.getMessage() for r in caplog.records
            if "the rebuilt archive is not the one TFDS registered" in r.getMessage()]
  assert sorted(m.split(":")[0] for m in warned) == sorted(labels)
  contents = sorted(gzip.decompress(open(p, "rb").read()) for p in written)
  assert contents == sorted(data for _, data in files.values())
  manager = tfds.download.DownloadManager(download_dir=str(tmp_path / "tfds" / "downloads"),
                                          url_infos=builder.url_infos)
  paths = manager.download(list(builder.url_infos))
  assert sorted(str(p) for p in paths) == sorted(written)
  assert no_network == []


@needs_debian_files
def test_corrupted_source_is_refused(tmp_path):
  src = _copy_sources(tmp_path)
  path = src / "t10k-labels-idx1-ubyte.gz"
  original = gzip.decompress(path.read_bytes())
  changed = bytearray(original)
  changed[100] = (changed[100] + 1) % 10  # one label
  path.write_bytes(gzip.compress(bytes(changed)))
  with pytest.raises(ValueError, match="decompressed content differs from the original"):
    prepare_data.read_fashion_mnist(str(src))
  path.write_bytes(gzip.compress(original[:-5]))  # truncated data
  with pytest.raises(ValueError, match=r"idx header 0x0801 \(10000,\) and 10003 bytes"):
    prepare_data.read_fashion_mnist(str(src))
  path.write_bytes(b"not gzip at all")
  with pytest.raises(ValueError, match="not a readable gzip file"):
    prepare_data.read_fashion_mnist(str(src))
  (src / "train-images-idx3-ubyte.gz").unlink()
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is missing"):
    prepare_data.verify_fashion_mnist(str(src))


def test_ensure_prepared_is_a_no_op_when_readable(fashion_mnist_dir, monkeypatch):
  monkeypatch.setattr(prepare_data, "prepare_fashion_mnist",
                      lambda *a, **k: pytest.fail("should not prepare again"))
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      lambda *a, **k: pytest.fail("should not call TFDS again"))
  prepare_data.ensure_prepared("fashion_mnist", fashion_mnist_dir)


@needs_debian_files
def test_ensure_prepared_uses_the_debian_files(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(prepare_data, "prepare_fashion_mnist", lambda d: calls.append(d))
  prepare_data.ensure_prepared("fashion_mnist", str(tmp_path))
  assert calls == [str(tmp_path)]


def test_ensure_prepared_refuses_what_it_cannot_prepare(tmp_path):
  with pytest.raises(ValueError, match="dataset must be one of"):
    prepare_data.ensure_prepared("mnist_fashion")
  with pytest.raises(ValueError, match=r"manual dir .*downloads/manual"):
    prepare_data.ensure_prepared("imagenet2012", str(tmp_path))


def test_command_line(fashion_mnist_dir):
  run = lambda *args: subprocess.run([sys.executable, "-m", "signin_jax.prepare_data", *args],
                                     capture_output=True, text=True, timeout=120)
  done = run("fashion_mnist", f"--data_dir={fashion_mnist_dir}")
  assert done.returncode == 0, done.stderr
  assert f"fashion_mnist is ready in {fashion_mnist_dir}" in done.stdout
  refused = run("mnist")
  assert refused.returncode == 2 and "invalid choice: 'mnist'" in refused.stderr
