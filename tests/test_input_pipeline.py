"""Input pipelines: shapes, normalization, augmentation, determinism, resume, process shards,
eval coverage, errors. All on TFDS mocks (no prepared data needed)."""
import contextlib
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from signin_jax import input_pipeline as ip
from tests import tfds_mock


@pytest.fixture(autouse=True)
def _fresh_cache():
  ip.clear_cache()  # every test serves its own mock data under the same dataset names
  yield
  ip.clear_cache()


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


# --- a mock whose examples know who they are ---------------------------------------------------

TEST_ID_OFFSET = 1000


def _raw_image(name, example_id):
  """The uint8 image of example `example_id`: random pixels (seeded by the id), with the id
  written into pixels (0, 0) and (0, 1) of channel 0 (small datasets)."""
  height, width, channels = ip.DATASETS[name].image_shape
  if name == "imagenet2012":  # small JPEGs of varying size: the crops resize them
    height, width = 40 + example_id % 7, 50 + example_id % 5
  image = np.random.default_rng(example_id).integers(0, 256, (height, width, channels),
                                                     dtype=np.uint8)
  image[0, 0, 0], image[0, 1, 0] = example_id % 256, example_id // 256
  return image


def _label(name, example_id):
  # ImageNet's labels are the ids (its images are JPEG-compressed, the pixels do not survive).
  return example_id % ip.DATASETS[name].num_classes


@contextlib.contextmanager
def indexed_mock(num_train, num_eval):
  """tfds.testing.mock_data serving `num_train`/`num_eval` examples that honour sub-splits
  (TFDS's own slicing), so that process shards can be told apart: training example i has id
  i, evaluation example i has id TEST_ID_OFFSET + i."""

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del read_config, kwargs
    info = ip.DATASETS[self.name]
    sizes = {info.train_split: num_train, info.eval_split: num_eval}
    split_infos = {k: types.SimpleNamespace(num_examples=v, shard_lengths=[v])
                   for k, v in sizes.items()}
    ids = [TEST_ID_OFFSET * (inst.splitname == info.eval_split) + i
           for inst in tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos)
           for i in range(inst.from_ or 0, sizes[inst.splitname] if inst.to is None
                          else inst.to)]  # TFDS writes None for the split's ends
    images = [_raw_image(self.name, i) for i in ids]
    encode = decoders is not None and "image" in decoders
    if encode:
      images = np.array([tf.io.encode_jpeg(im, quality=95).numpy() for im in images],
                        dtype=object)
    else:
      images = np.stack(images) if ids else np.zeros((0,) + info.image_shape, np.uint8)
    labels = np.array([_label(self.name, i) for i in ids], np.int64)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

  with tfds_mock.mock_data(as_dataset_fn=as_dataset):
    yield


def _normalized(name, raw):
  info = ip.DATASETS[name]
  return ((raw.astype(np.float64) / 255 - np.array(info.mean)) / np.array(info.std))


def _ids(name, images):
  """Example ids read back from normalized, unaugmented images."""
  info = ip.DATASETS[name]
  pixels = np.rint((images[:, 0, :2, 0].astype(np.float64) * info.std[0] + info.mean[0]) * 255)
  return (pixels[:, 0] + 256 * pixels[:, 1]).astype(int)


def _batch_ids(name, batch):
  if name == "imagenet2012":
    return batch["label"].astype(int)
  return _ids(name, batch["image"])


# --- shapes, dtypes, normalization ------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ip.DATASETS))
def test_batches_shapes_dtypes_and_labels(name):
  info = ip.DATASETS[name]
  kw = dict(process_index=0, process_count=1)
  with tfds_mock.mock_data(num_examples=12):
    batch = next(ip.train_iterator(name, global_batch_size=4, seed=0, **kw))
    bf16 = next(ip.train_iterator(name, global_batch_size=4, seed=0, image_dtype="bfloat16",
                                  **kw))
    evals = list(ip.eval_iterator(name, global_batch_size=5, **kw))
  assert batch["image"].shape == (4,) + info.image_shape
  assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
  assert batch["label"].shape == (4,)
  assert 0 <= batch["label"].min() and batch["label"].max() < info.num_classes
  assert bf16["image"].dtype.name == "bfloat16" and bf16["image"].shape == batch["image"].shape
  np.testing.assert_allclose(bf16["image"].astype(np.float32), batch["image"], rtol=1e-2,
                             atol=1e-2)
  assert [int(b["mask"].sum()) for b in evals] == [5, 5, 2]
  assert all(b["image"].shape == (5,) + info.image_shape and b["mask"].dtype == np.int32
             for b in evals)
  np.testing.assert_array_equal(evals[-1]["image"][2:], 0)  # padding


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_eval_is_normalized_file_order(name):
  with indexed_mock(num_train=8, num_eval=7):
    batches = list(ip.eval_iterator(name, global_batch_size=3, process_index=0,
                                    process_count=1))
  images = np.concatenate([b["image"] for b in batches])[:7]
  labels = np.concatenate([b["label"] for b in batches])[:7]
  raw = np.stack([_raw_image(name, TEST_ID_OFFSET + i) for i in range(7)])
  np.testing.assert_allclose(images, _normalized(name, raw), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(labels, [_label(name, TEST_ID_OFFSET + i) for i in range(7)])


def test_imagenet_eval_is_the_central_crop():
  with indexed_mock(num_train=4, num_eval=2):
    batch = next(ip.eval_iterator("imagenet2012", global_batch_size=2, process_index=0,
                                  process_count=1))
  # Independent reference: decode, take the central 224/256 of the shorter side, resize.
  for image, example_id in zip(batch["image"], range(TEST_ID_OFFSET, TEST_ID_OFFSET + 2)):
    decoded = tf.io.decode_jpeg(tf.io.encode_jpeg(_raw_image("imagenet2012", example_id),
                                                  quality=95)).numpy()
    h, w = decoded.shape[:2]
    crop = int(224 / 256 * min(h, w))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    want = tf.image.resize(decoded[top:top + crop, left:left + crop], [224, 224],
                           method="bicubic").numpy()
    np.testing.assert_allclose(image, _normalized("imagenet2012", want), atol=1e-4)


# --- augmentation -----------------------------------------------------------------------------

def test_cifar_augmentation_is_a_padded_crop_and_flip_of_the_example():
  kw = dict(global_batch_size=16, seed=5, process_index=0, process_count=1)
  with indexed_mock(num_train=16, num_eval=2):
    plain = next(ip.train_iterator("cifar10", augment=False, **kw))
    augmented = next(ip.train_iterator("cifar10", **kw))
  np.testing.assert_array_equal(plain["label"], augmented["label"])  # same order
  black = _normalized("cifar10", np.zeros((1, 1, 3)))[0, 0]
  offsets, flips = set(), set()
  for original, image in zip(plain["image"], augmented["image"]):
    padded = np.broadcast_to(black, (40, 40, 3)).copy()
    padded[4:36, 4:36] = original
    matches = [(top, left, flip) for top in range(9) for left in range(9) for flip in (0, 1)
               if np.allclose((padded[top:top + 32, left:left + 32, :][:, ::-1] if flip else
                               padded[top:top + 32, left:left + 32, :]), image, atol=1e-6)]
    assert matches, "an augmented image is no crop/flip of its example"
    offsets.add(matches[0][:2])
    flips.add(matches[0][2])
  assert flips == {0, 1} and len(offsets) > 5  # the draws vary between examples


def test_augmentation_depends_on_the_example_position_not_the_batch():
  kw = dict(seed=2, process_index=0, process_count=1)
  with indexed_mock(num_train=12, num_eval=2):
    big = _take(ip.train_iterator("cifar10", global_batch_size=4, **kw), 3)
    small = _take(ip.train_iterator("cifar10", global_batch_size=2, **kw), 6)
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in big]),
                                np.concatenate([b["image"] for b in small]))


def test_fashion_mnist_is_not_augmented_unless_asked():
  kw = dict(global_batch_size=8, seed=0, process_index=0, process_count=1)
  with indexed_mock(num_train=8, num_eval=2):
    default = next(ip.train_iterator("fashion_mnist", **kw))
    augmented = next(ip.train_iterator("fashion_mnist", augment=True, **kw))
  raw = np.stack([_raw_image("fashion_mnist", i) for i in _ids("fashion_mnist",
                                                                 default["image"])])
  np.testing.assert_allclose(default["image"], _normalized("fashion_mnist", raw), atol=1e-5)
  assert augmented["image"].shape == default["image"].shape
  assert not np.array_equal(augmented["image"], default["image"])


# --- determinism and resume -------------------------------------------------------------------

@pytest.mark.parametrize("name,num_train,batch,steps", [("cifar10", 22, 4, 5),
                                                         ("imagenet2012", 13, 4, 3)])
def test_deterministic_and_resumable_across_epochs(name, num_train, batch, steps):
  kw = dict(global_batch_size=batch, process_index=0, process_count=1)
  n = 2 * steps + 2  # crosses two epoch boundaries
  with indexed_mock(num_train=num_train, num_eval=2):
    assert ip.steps_per_epoch(name, batch, process_count=1) == steps
    run = _take(ip.train_iterator(name, seed=3, **kw), n)
    again = _take(ip.train_iterator(name, seed=3, **kw), n)
    resumed = _take(ip.train_iterator(name, seed=3, start_step=steps - 1, **kw),
                    n - steps + 1)
    other = _take(ip.train_iterator(name, seed=4, **kw), 1)
    plain = _take(ip.train_iterator(name, seed=3, augment=False, **kw), 2 * steps)
  for a, b in zip(run, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  for a, b in zip(run[steps - 1:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(run[0]["image"], other[0]["image"])
  # Every epoch: steps full batches of distinct examples (the partial last batch dropped), in
  # a new order with new augmentations.
  epochs = [np.concatenate([_batch_ids(name, b) for b in plain[e * steps:(e + 1) * steps]])
            for e in range(2)]
  for ids in epochs:
    assert len(ids) == steps * batch == len(set(ids))
    assert set(ids) <= set(range(num_train))
  assert list(epochs[0]) != list(epochs[1])
  assert not np.array_equal(run[0]["image"], run[steps]["image"])


# --- process shards ---------------------------------------------------------------------------

def test_processes_read_disjoint_shards_that_cover_the_split():
  name = "fashion_mnist"
  with indexed_mock(num_train=24, num_eval=13):
    # Training: 2 processes x 3 steps x 4 = one epoch of all 24 examples, disjoint halves.
    assert ip.steps_per_epoch(name, 8, process_count=2) == 3
    epoch = [np.concatenate([_ids(name, b["image"]) for b in _take(ip.train_iterator(
        name, global_batch_size=8, seed=0, process_index=i, process_count=2), 3)])
             for i in range(2)]
    # Evaluation: shards of 5, 4 and 4 examples, 2 per batch: 3 batches everywhere.
    evals = [list(ip.eval_iterator(name, global_batch_size=6, process_index=i,
                                   process_count=3)) for i in range(3)]
    assert ip.num_eval_batches(name, 6, process_count=3) == 3
  assert not set(epoch[0]) & set(epoch[1])
  assert sorted(np.concatenate(epoch)) == list(range(24))
  assert [len(e) for e in evals] == [3, 3, 3]
  masks = [[int(b["mask"].sum()) for b in e] for e in evals]
  assert masks == [[2, 2, 1], [2, 2, 0], [2, 2, 0]]
  seen = np.concatenate([_ids(name, b["image"])[b["mask"].astype(bool)]
                         for e in evals for b in e])
  assert sorted(seen) == list(range(TEST_ID_OFFSET, TEST_ID_OFFSET + 13))  # each exactly once


def test_sub_splits_hold_out_part_of_the_training_data():
  name = "fashion_mnist"
  with indexed_mock(num_train=24, num_eval=13):
    assert ip.steps_per_epoch(name, 4, split="train[:16]") == 4
    epoch = np.concatenate([_ids(name, b["image"]) for b in _take(ip.train_iterator(
        name, global_batch_size=4, seed=0, process_index=0, process_count=1,
        split="train[:16]"), 4)])
    held_out = list(ip.eval_iterator(name, global_batch_size=3, process_index=0,
                                     process_count=1, split="train[16:]"))
  assert sorted(epoch) == list(range(16))
  seen = np.concatenate([_ids(name, b["image"])[b["mask"].astype(bool)] for b in held_out])
  assert sorted(seen) == list(range(16, 24))  # each held-out example exactly once


def test_imagenet_shards_are_disjoint():
  name = "imagenet2012"
  with indexed_mock(num_train=9, num_eval=5):
    epoch = [np.concatenate([b["label"] for b in _take(ip.train_iterator(
        name, global_batch_size=4, seed=0, process_index=i, process_count=2), 2)])
             for i in range(2)]
    evals = [list(ip.eval_iterator(name, global_batch_size=4, process_index=i,
                                   process_count=2)) for i in range(2)]
  # Shards: ids 0-4 and 5-8; each process takes 2 steps x 2 of its own shard.
  assert set(epoch[0]) <= set(range(5)) and set(epoch[1]) <= set(range(5, 9))
  assert [len(e) for e in evals] == [2, 2]
  seen = np.concatenate([b["label"][b["mask"].astype(bool)] for e in evals for b in e])
  assert sorted(seen) == sorted(_label(name, TEST_ID_OFFSET + i) for i in range(5))


# --- errors -----------------------------------------------------------------------------------

def test_errors():
  with pytest.raises(ValueError, match=r"dataset must be one of \['cifar10', 'cifar100', "):
    ip.check_dataset("cifar11")
  with pytest.raises(ValueError, match="dataset must be one of"):
    ip.steps_per_epoch("mnist", 8, process_count=1)
  with pytest.raises(ValueError, match=r"manual dir .*ILSVRC2012_img_train\.tar"):
    ip.check_dataset("imagenet2012", "/nonexistent/tfds")
  with tfds_mock.mock_data(num_examples=8):
    kw = dict(seed=0, process_index=0)
    with pytest.raises(ValueError, match="global_batch_size=5 must be divisible by "
                                         "process_count=2"):
      ip.train_iterator("cifar10", global_batch_size=5, process_count=2, **kw)
    with pytest.raises(ValueError, match="global_batch_size=5 must be divisible"):
      ip.eval_iterator("cifar10", global_batch_size=5, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="global_batch_size=16 is too large"):
      ip.train_iterator("cifar10", global_batch_size=16, process_count=1, **kw)
    with pytest.raises(ValueError, match="image_dtype must be one of"):
      ip.train_iterator("cifar10", global_batch_size=4, process_count=1, image_dtype="fp16",
                        **kw)
    with pytest.raises(ValueError, match=r"process_index must be in \[0, 2\)"):
      ip.train_iterator("cifar10", global_batch_size=4, seed=0, process_index=2,
                        process_count=2)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
      ip.train_iterator("cifar10", global_batch_size=4, seed=-1, process_index=0,
                        process_count=1)
    with pytest.raises(ValueError, match="start_step must be"):
      ip.train_iterator("cifar10", global_batch_size=4, start_step=-3, process_count=1, **kw)
