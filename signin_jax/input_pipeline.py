"""TFDS input pipelines: CIFAR-10/100, ImageNet (ILSVRC 2012) and Fashion-MNIST.

Knows nothing of models. Batches are numpy dicts ``{'image': float32 [B, H, W, C],
'label': int32 [B]}`` (eval batches add ``'mask'``: 1 for a real example, 0 for padding), where
B is this process's share of the global batch.

Training data is a pure function of ``(seed, step)``, and every epoch has exactly
``steps_per_epoch`` batches (the partial last batch is dropped), so a run resumed at step s
(``start_step=s``) sees exactly the batches an uninterrupted run sees from step s on. Two paths:

* small datasets (CIFAR, Fashion-MNIST): this process's shard is decoded once and held in
  memory as uint8; epoch e's order is a permutation drawn from numpy's generator seeded by
  ``(seed, e, process)``, and batch b's augmentation from one seeded by
  ``(seed, e, process, b)``; the batch is cropped, flipped and normalized in numpy, vectorized
  (decoding and per-example tf.data work cost more than a small model's step);
* ImageNet: streamed by tf.data; files and examples shuffled with seeds derived from
  ``(seed, e)``, every example's augmentation drawn from a stateless RNG seeded by
  ``(seed, e, position in the epoch)``; resuming mid-epoch skips examples before decoding.

Evaluation covers every example of the split exactly once: the last batch is padded with
masked-out examples, and every process yields the same number of batches (padding with fully
masked batches), so cross-process reductions never wait on a process that ran out.

Each process reads a disjoint shard (``tfds.split_for_jax_process``); together the shards cover
the split.

Augmentation (standard; our choice where the paper is silent): CIFAR: zero-pad 4, random 32x32
crop, horizontal flip. ImageNet: Inception-style crop (area 8-100 %, aspect 3/4-4/3) resized to
224 and flip for training; for evaluation a center crop of 224/256 of the shorter side resized
to 224 (as flax examples/imagenet). Fashion-MNIST: none. All: per-channel normalization.

Where the data comes from: see :mod:`signin_jax.prepare_data`.
"""

import math
from typing import Dict, Iterator, NamedTuple, Optional, Tuple

import numpy as np


class DatasetInfo(NamedTuple):
  num_classes: int
  image_shape: Tuple[int, int, int]  # what the model sees
  train_split: str
  eval_split: str
  num_train: int  # of the full dataset (mock data in tests has fewer)
  num_eval: int
  mean: Tuple[float, ...]  # per channel, on [0, 1] pixels
  std: Tuple[float, ...]
  augment: str  # 'cifar', 'imagenet' or 'none'


DATASETS: Dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(10, (32, 32, 3), "train", "test", 50_000, 10_000,
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "cifar"),
    "cifar100": DatasetInfo(100, (32, 32, 3), "train", "test", 50_000, 10_000,
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar"),
    "imagenet2012": DatasetInfo(1000, (224, 224, 3), "train", "validation", 1_281_167, 50_000,
                                (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet"),
    # Mean and std of the 60,000 training images, computed from the Debian package's files:
    #   python -c "import gzip, numpy as np; d = np.frombuffer(gzip.open('/usr/share/datasets/
    #     fashion-mnist/train-images-idx3-ubyte.gz').read(), np.uint8, offset=16) / 255.;
    #     print(d.mean(), d.std())"  ->  0.28604 0.35302
    "fashion_mnist": DatasetInfo(10, (28, 28, 1), "train", "test", 60_000, 10_000,
                                 (0.2860,), (0.3530,), "none"),
}

IMAGENET_CROP_PADDING = 32


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # tf.data only: never let TensorFlow take an accelerator from JAX.
  tf.config.set_visible_devices([], "GPU")
  return tf


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def check_dataset(name: str, data_dir: Optional[str] = None) -> DatasetInfo:
  """The dataset's metadata; a ValueError naming `dataset` for an unknown name, and for
  ImageNet when it is neither prepared nor available in the manual dir."""
  if name not in DATASETS:
    raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}.")
  if name == "imagenet2012":
    if not is_readable(name, data_dir):
      builder = _tfds().builder(name, data_dir=data_dir)
      manual_dir = f"{builder.data_dir_root}/downloads/manual"
      tars = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
      if not all(_exists(f"{manual_dir}/{t}") for t in tars):
        raise ValueError(
            f"dataset 'imagenet2012' is not prepared in {builder.data_dir} and the manual "
            f"dir {manual_dir} lacks {' and '.join(tars)}: download them from image-net.org "
            "(they cannot be downloaded automatically) and put them there.")
  return DATASETS[name]


def _exists(path):
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path).exists()


def is_readable(name: str, data_dir: Optional[str] = None) -> bool:
  """Whether TFDS can read the dataset now (prepared, or served by a mock in tests)."""
  tfds = _tfds()
  try:
    ds = tfds.builder(name, data_dir=data_dir).as_dataset(
        split=DATASETS[name].eval_split, decoders={"image": tfds.decode.SkipDecoding()})
    next(iter(ds.take(1)))
    return True
  except Exception:  # pylint: disable=broad-except  (TFDS raises several kinds here)
    return False


# --- sizes and shards -------------------------------------------------------------------------

def _process(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return process_index, process_count


def _shard(split, process_index, process_count):
  return _tfds().split_for_jax_process(split, process_index=process_index,
                                       process_count=process_count)


def _split_size(name: str, split: str, data_dir: Optional[str]) -> int:
  """Examples in `split` (a TFDS split string, possibly sliced); counted when TFDS has no
  metadata (mock data in tests)."""
  tfds = _tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    return sum(1 for _ in ds.map(lambda ex: ex["label"]).as_numpy_iterator())


def _local_batch(global_batch_size, process_count):
  if global_batch_size % process_count:
    raise ValueError(f"batch_size {global_batch_size} must be divisible by the number of "
                     f"processes ({process_count}).")
  return global_batch_size // process_count


def steps_per_epoch(name: str, global_batch_size: int, *, data_dir: Optional[str] = None,
                    process_count: Optional[int] = None) -> int:
  """Training steps in one epoch: every process takes this many full batches of its shard."""
  _, process_count = _process(0, process_count)
  local = _local_batch(global_batch_size, process_count)
  split = DATASETS[name].train_split
  smallest = min(_split_size(name, _shard(split, i, process_count), data_dir)
                 for i in range(process_count))
  steps = smallest // local
  if steps == 0:
    raise ValueError(f"batch_size {global_batch_size} is larger than a process's share of "
                     f"{name}'s training split ({smallest} examples).")
  return steps


# --- preprocessing -----------------------------------------------------------------------------

def _normalize(tf, image, info):
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(info.mean)) / tf.constant(info.std)


def _imagenet_eval_image(tf, image_bytes, size):
  shape = tf.io.extract_jpeg_shape(image_bytes)
  h, w = shape[0], shape[1]
  crop = tf.cast(size / (size + IMAGENET_CROP_PADDING) *
                 tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
  window = tf.stack([(h - crop + 1) // 2, (w - crop + 1) // 2, crop, crop])
  image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
  return tf.image.resize(image, [size, size], method="bicubic")


def _imagenet_train_image(tf, image_bytes, size, seed):
  box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.io.extract_jpeg_shape(image_bytes), bounding_boxes=tf.constant([[[0., 0., 1., 1.]]]),
      seed=box_seed, min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
  image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
  image = tf.image.resize(image, [size, size], method="bicubic")
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _options(tf):
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  return options


# --- small datasets: decoded once, held in memory ------------------------------------------

_MEMORY: Dict[Tuple[str, str, Optional[str], int], Tuple[np.ndarray, np.ndarray]] = {}


def _in_memory(name: str, split, data_dir: Optional[str]):
  """(normalized float32 images, int32 labels) of `split`, decoded and normalized once per
  process and kept (keyed by the split's size too, so data that changed under the same name is
  read anew). Normalizing once leaves a batch nothing but a gather (and CIFAR's crop/flip)."""
  info = DATASETS[name]
  key = (name, str(split), data_dir, _split_size(name, split, data_dir))
  if key not in _MEMORY:
    tfds = _tfds()
    _tf()
    ds = tfds.builder(name, data_dir=data_dir).as_dataset(split=split, shuffle_files=False)
    parts = list(tfds.as_numpy(ds.map(lambda ex: (ex["image"], ex["label"])).batch(4096)))
    images = np.concatenate([p[0] for p in parts])
    _MEMORY[key] = (_normalize_np(images, info),
                    np.concatenate([p[1] for p in parts]).astype(np.int32))
  return _MEMORY[key]


def _normalize_np(images: np.ndarray, info: DatasetInfo) -> np.ndarray:
  scale = np.float32(1 / 255)
  return ((images.astype(np.float32) * scale - np.float32(info.mean)) /
          np.float32(info.std)).astype(np.float32)


def _augment_cifar(images: np.ndarray, rng: np.random.Generator, info: DatasetInfo):
  """Pad 4 with black, random 32x32 crop and random horizontal flip, for a whole batch of
  normalized images at once."""
  n, h, w, _ = images.shape
  black = (np.zeros(3, np.float32) - np.float32(info.mean)) / np.float32(info.std)
  padded = np.broadcast_to(black, (n, h + 8, w + 8, 3)).copy()
  padded[:, 4:4 + h, 4:4 + w] = images
  top, left = rng.integers(0, 9, size=n), rng.integers(0, 9, size=n)
  rows = top[:, None] + np.arange(h)[None, :]
  cols = left[:, None] + np.arange(w)[None, :]
  flip = rng.random(n) < 0.5
  cols = np.where(flip[:, None], cols[:, ::-1], cols)
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


# --- iterators ---------------------------------------------------------------------------------

def train_iterator(name: str, *, global_batch_size: int, seed: int, start_step: int = 0,
                   data_dir: Optional[str] = None, process_index: Optional[int] = None,
                   process_count: Optional[int] = None,
                   shuffle_buffer: int = 100_000) -> Iterator[Dict[str, np.ndarray]]:
  """Endless training batches of this process, from global step `start_step` on."""
  info = check_dataset(name, data_dir)
  process_index, process_count = _process(process_index, process_count)
  local = _local_batch(global_batch_size, process_count)
  steps = steps_per_epoch(name, global_batch_size, data_dir=data_dir,
                          process_count=process_count)
  split = _shard(info.train_split, process_index, process_count)
  epoch, offset = divmod(start_step, steps)
  if info.augment != "imagenet":
    yield from _train_in_memory(name, info, split, data_dir, seed, process_index, local, steps,
                                epoch, offset)
    return
  tf, tfds = _tf(), _tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  while True:
    # One seed per (run seed, epoch, process): orders and augmentations never repeat.
    epoch_seed = np.array([seed, (epoch * process_count + process_index) % 2**62], np.int64)
    ds = builder.as_dataset(
        split=split, shuffle_files=True,
        read_config=tfds.ReadConfig(shuffle_seed=int(epoch_seed[0] * 1_000_003 + epoch_seed[1])
                                    % 2**31, options=_options(tf)),
        decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.shuffle(shuffle_buffer, seed=int(epoch_seed.sum() % 2**31),
                    reshuffle_each_iteration=False)
    ds = ds.take(steps * local).enumerate().skip(offset * local)

    def preprocess(position, example, epoch_seed=tf.constant(epoch_seed)):
      example_seed = tf.random.experimental.stateless_fold_in(epoch_seed, position)
      image = _imagenet_train_image(tf, example["image"], info.image_shape[0], example_seed)
      return {"image": _normalize(tf, image, info),
              "label": tf.cast(example["label"], tf.int32)}

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    yield from tfds.as_numpy(ds)
    epoch, offset = epoch + 1, 0


def _train_in_memory(name, info, split, data_dir, seed, process_index, local, steps, epoch,
                     offset):
  """Small datasets: epoch e's order and augmentations come from numpy generators seeded by
  (seed, e, process) and (seed, e, process, batch), so any step can be resumed exactly."""
  images, labels = _in_memory(name, split, data_dir)
  while True:
    order = np.random.default_rng([seed, epoch, process_index]).permutation(len(labels))
    for b in range(offset, steps):
      idx = order[b * local:(b + 1) * local]
      batch = images[idx]
      if info.augment == "cifar":
        batch = _augment_cifar(batch, np.random.default_rng([seed, epoch, process_index, b]),
                               info)
      yield {"image": batch, "label": labels[idx]}
    epoch, offset = epoch + 1, 0


def num_eval_batches(name: str, global_batch_size: int, *, data_dir: Optional[str] = None,
                     process_count: Optional[int] = None) -> int:
  """Eval batches every process yields: enough for the largest shard."""
  _, process_count = _process(0, process_count)
  local = _local_batch(global_batch_size, process_count)
  split = DATASETS[name].eval_split
  largest = max(_split_size(name, _shard(split, i, process_count), data_dir)
                for i in range(process_count))
  return math.ceil(largest / local)


def eval_iterator(name: str, *, global_batch_size: int, data_dir: Optional[str] = None,
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """This process's eval batches: every example of its shard once, then padding."""
  info = check_dataset(name, data_dir)
  process_index, process_count = _process(process_index, process_count)
  local = _local_batch(global_batch_size, process_count)
  num_batches = num_eval_batches(name, global_batch_size, data_dir=data_dir,
                                 process_count=process_count)
  split = _shard(info.eval_split, process_index, process_count)
  empty = {"image": np.zeros((local,) + info.image_shape, np.float32),
           "label": np.zeros((local,), np.int32), "mask": np.zeros((local,), np.int32)}
  if info.augment != "imagenet":
    images, labels = _in_memory(name, split, data_dir)
    batches = ({"image": images[i:i + local], "label": labels[i:i + local],
                "mask": np.ones(len(labels[i:i + local]), np.int32)}
               for i in range(0, len(labels), local))
  else:
    batches = _eval_stream(name, info, split, data_dir, local)
  produced = 0
  for batch in batches:
    n = batch["label"].shape[0]
    if n < local:  # the partial last batch: pad with masked-out examples
      batch = {k: np.concatenate([v, empty[k][:local - n]]) for k, v in batch.items()}
    produced += 1
    yield batch
  for _ in range(num_batches - produced):
    yield dict(empty)


def _eval_stream(name, info, split, data_dir, local):
  tf, tfds = _tf(), _tfds()
  ds = tfds.builder(name, data_dir=data_dir).as_dataset(
      split=split, shuffle_files=False,
      read_config=tfds.ReadConfig(options=_options(tf)),
      decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.map(lambda ex: {"image": _normalize(tf, _imagenet_eval_image(
                              tf, ex["image"], info.image_shape[0]), info),
                          "label": tf.cast(ex["label"], tf.int32),
                          "mask": tf.ones([], tf.int32)},
              num_parallel_calls=tf.data.AUTOTUNE)
  return tfds.as_numpy(ds.batch(local).prefetch(tf.data.AUTOTUNE))
