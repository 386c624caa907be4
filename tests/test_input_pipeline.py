"""Input pipelines: shapes, determinism, resume, process shards, eval coverage, errors."""
import collections
import hashlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from signin_jax import input_pipeline as ip


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize("name", sorted(ip.DATASETS))
def test_batches_shapes_dtypes_and_labels(name):
  info = ip.DATASETS[name]
  with tfds.testing.mock_data(num_examples=12):
    batch = next(ip.train_iterator(name, global_batch_size=4, seed=0, process_index=0,
                                   process_count=1))
    evals = list(ip.eval_iterator(name, global_batch_size=5, process_index=0, process_count=1))
  assert batch["image"].shape == (4,) + info.image_shape and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  assert 0 <= batch["label"].min() and batch["label"].max() < info.num_classes
  assert abs(float(batch["image"].mean())) < 3  # normalized
  assert [int(b["mask"].sum()) for b in evals] == [5, 5, 2]
  assert all(b["image"].shape == (5,) + info.image_shape for b in evals)


def test_deterministic_and_resumable_across_epochs():
  with tfds.testing.mock_data(num_examples=20):
    kw = dict(global_batch_size=4, process_index=0, process_count=1)
    assert ip.steps_per_epoch("cifar10", 4, process_count=1) == 5
    run = _take(ip.train_iterator("cifar10", seed=3, **kw), 12)
    again = _take(ip.train_iterator("cifar10", seed=3, **kw), 12)
    resumed = _take(ip.train_iterator("cifar10", seed=3, start_step=4, **kw), 8)
    other = _take(ip.train_iterator("cifar10", seed=4, **kw), 2)
  assert all(b["image"].shape[0] == 4 for b in run + resumed + other)
  for a, b in zip(run, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  for a, b in zip(run[4:], resumed):  # crosses the epoch boundary at step 5 and 10
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(run[0]["image"], other[0]["image"])
  # Each epoch is a new order and new augmentations.
  assert not np.array_equal(run[0]["image"], run[5]["image"])


def _digests(batches):
  out = collections.Counter()
  for b in batches:
    keep = b["mask"].astype(bool) if "mask" in b else np.ones(len(b["label"]), bool)
    for image, label in zip(b["image"][keep], b["label"][keep]):
      out[(hashlib.sha1(image.tobytes()).hexdigest(), int(label))] += 1
  return out


def test_processes_read_disjoint_shards_that_cover_the_split(fashion_mnist_dir):
  kw = dict(global_batch_size=999, data_dir=fashion_mnist_dir)
  whole = _digests(ip.eval_iterator("fashion_mnist", process_index=0, process_count=1, **kw))
  parts = [list(ip.eval_iterator("fashion_mnist", process_index=i, process_count=3, **kw))
           for i in range(3)]
  assert len({len(p) for p in parts}) == 1  # same number of batches on every process
  digests = [_digests(p) for p in parts]
  assert sum(sum(d.values()) for d in digests) == 10000 == sum(whole.values())
  assert digests[0] + digests[1] + digests[2] == whole
  # Training: one epoch of process 0 and of process 1 come from different halves.
  steps = ip.steps_per_epoch("fashion_mnist", 1000, data_dir=fashion_mnist_dir, process_count=2)
  assert steps == 60
  train = [_digests(_take(ip.train_iterator("fashion_mnist", seed=0, process_index=i,
                                            process_count=2, global_batch_size=200,
                                            data_dir=fashion_mnist_dir), 5))
           for i in range(2)]
  assert sum(train[0].values()) == sum(train[1].values()) == 500
  overlap = set(train[0]) & set(train[1])
  # Fashion-MNIST has a few duplicated images; no more overlap than duplicates can explain.
  assert len(overlap) <= 2


def test_errors():
  with pytest.raises(ValueError, match="dataset must be one of"):
    ip.check_dataset("cifar11")
  with pytest.raises(ValueError, match="divisible"):
    with tfds.testing.mock_data(num_examples=8):
      next(ip.train_iterator("cifar10", global_batch_size=5, seed=0, process_index=0,
                             process_count=2))
  with pytest.raises(ValueError, match="manual dir"):
    ip.check_dataset("imagenet2012", "/nonexistent/tfds")
