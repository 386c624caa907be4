"""TFDS input pipelines: CIFAR-10/100, ImageNet (ILSVRC 2012) and Fashion-MNIST.

Knows nothing of models. Batches are numpy dicts ``{'image': [B, H, W, C] float32 (or
bfloat16), 'label': [B] int32}``, eval batches add ``'mask'`` ([B] int32: 1 for a real example,
0 for padding), where ``B = global_batch_size // process_count`` is this process's share.
Data are always read the ordinary TFDS way, ``tfds.builder(name, data_dir).as_dataset(...)``
(:mod:`signin_jax.prepare_data` puts them there). TensorFlow is hidden from the GPUs, so that
it never takes accelerator memory from JAX.

**Shards.** Process i of n reads ``tfds.split_for_jax_process(split, i, n)``: disjoint slices
that together cover the split (sizes differ by at most one example).

**Training is a pure function of (seed, process_index, process_count, step).** Every epoch has
exactly ``steps_per_epoch`` batches on every process (each process's partial last batch is
dropped, and a process with one example more drops it too), so a run restarted with
``start_step=k`` yields exactly the batches an uninterrupted run yields from step k on. Epoch
e's example order is drawn from a seed derived from ``(seed, e, process_index)``, and every
example's augmentation from one derived from ``(seed, e, process_index, position of the
example in the epoch)``: it does not depend on which batch the example lands in, nor on how
the stream was resumed. Two paths:

* small datasets (CIFAR, Fashion-MNIST): this process's shard is decoded once and held in
  memory as uint8 (CIFAR-10's training split: 150 MB); epoch e's order is a numpy permutation;
  batches are gathered, augmented (a counter-based hash of the example's seed drives the crop
  and flip) and normalized in numpy, vectorized over the batch: per-example tf.data work
  (decoding, per-example random ops) cost a small model 45 % of its training throughput on
  this project's 2-core machine (benchmarks/pipeline_throughput.py); a batch here costs a
  gather and a few array ops (~0.1 ms for 128 Fashion-MNIST images, ~1 ms with crop/flip).
  Resuming at step k skips to batch k of the epoch's permutation: nothing is read or decoded.
* ImageNet: streamed by tf.data (files shuffled with a seeded ``ReadConfig``, examples with a
  seeded shuffle buffer, ``deterministic=True``, parallel map, AUTOTUNE prefetch); each
  example's augmentation uses TensorFlow's stateless random ops seeded by
  ``stateless_fold_in(epoch key, position)``. Resuming mid-epoch skips examples *before*
  decoding: the skipped records are still read from disk (the shuffle buffer must be replayed
  to reproduce the order), but no JPEG is decoded.

**Augmentation** (the standard recipes; our choice, as the paper's are not known):

* CIFAR-10/100: zero-pad 4 pixels on each side (black, padded before normalization as
  torchvision's ``RandomCrop(32, padding=4)`` does), random 32x32 crop, horizontal flip.
* ImageNet, training: Inception-style crop (area 8-100 % of the image, aspect ratio 3/4-4/3,
  10 attempts, else the evaluation crop), bicubic resize to 224, horizontal flip; evaluation:
  the central 224/256 of the shorter side, bicubic resize to 224 (flax examples/imagenet, i.e.
  "resize the shorter side to 256 and take the central 224").
* Fashion-MNIST: none by default; ``augment=True`` applies CIFAR's pad-4 crop and flip.

All: per-channel normalization ``(x / 255 - mean) / std`` with the constants in ``DATASETS``.

**Evaluation** covers every example of this process's shard exactly once, in file order: the
last batch is padded with masked-out zeros, and every process yields the same number of
batches (fully masked ones where its shard is shorter), so cross-process reductions in a
multi-host evaluation never wait on a process that ran out.
"""

import math
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np


class DatasetInfo(NamedTuple):
  """What the pipeline and the trainer need to know about a dataset."""
  num_classes: int
  image_shape: Tuple[int, int, int]  # of the images the model sees, HWC
  train_split: str
  eval_split: str
  num_train: int  # examples of the full dataset (mock data in tests have fewer)
  num_eval: int
  mean: Tuple[float, ...]  # per channel, of pixels scaled to [0, 1]
  std: Tuple[float, ...]
  in_memory: bool  # small: decoded once and held in memory (else streamed by tf.data)
  augment: bool  # training augmentation on by default


DATASETS: Dict[str, DatasetInfo] = {
    # Mean/std: the values published with the datasets' standard training recipes (CIFAR:
    # statistics of the training images, as in torchvision-based CIFAR code; ImageNet: the
    # torchvision / flax examples constants).
    "cifar10": DatasetInfo(10, (32, 32, 3), "train", "test", 50_000, 10_000,
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           in_memory=True, augment=True),
    "cifar100": DatasetInfo(100, (32, 32, 3), "train", "test", 50_000, 10_000,
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            in_memory=True, augment=True),
    "imagenet2012": DatasetInfo(1000, (224, 224, 3), "train", "validation", 1_281_167, 50_000,
                                (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                in_memory=False, augment=True),
    # Mean and std of the 60,000 training images' pixels, computed from the Debian files with
    #   python -c "import gzip, numpy as np; d = np.frombuffer(gzip.open('/usr/share/datasets/
    #     fashion-mnist/train-images-idx3-ubyte.gz').read(), np.uint8, offset=16) / 255;
    #     print(d.mean(), d.std())"     ->  0.2860405969887955 0.35302424451492254
    "fashion_mnist": DatasetInfo(10, (28, 28, 1), "train", "test", 60_000, 10_000,
                                 (0.2860406,), (0.3530242,), in_memory=True, augment=False),
}

IMAGE_DTYPES = ("bfloat16", "float32")
CROP_PADDING = 4  # pixels of zero padding on each side before the random crop (small datasets)
IMAGENET_CROP_PADDING = 32  # evaluation: central 224 / (224 + 32) of the shorter side
IMAGENET_SHUFFLE_BUFFER = 10_000  # encoded images (~110 kB each): ~1.1 GB per process


# --- TensorFlow, hidden from the accelerators -----------------------------------------------

def tf_module():
  """TensorFlow, with its GPUs hidden (tf.data only; JAX owns the accelerators)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow was initialized (with its GPUs) before this call
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning("TensorFlow was initialized before its GPUs could be hidden; it may hold "
                    "accelerator memory. Call input_pipeline.tf_module() before other TF use.")
  return tf


def tfds_module():
  """tensorflow_datasets, imported after TensorFlow's GPUs are hidden."""
  tf_module()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


# --- dataset checks ---------------------------------------------------------------------------

def check_dataset(name: str, data_dir: Optional[str] = None) -> DatasetInfo:
  """The dataset's metadata, after checking that it can be had.

  Raises:
    ValueError: `name` is not in DATASETS; or it is imagenet2012, not prepared in `data_dir`,
      and its manual dir lacks the ILSVRC2012 tar files (TFDS cannot download them).
  """
  if name not in DATASETS:
    raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}.")
  if name == "imagenet2012" and not is_readable(name, data_dir):
    from etils import epath  # pylint: disable=g-import-not-at-top
    builder = tfds_module().builder(name, data_dir=data_dir)
    manual_dir = epath.Path(builder.data_dir_root) / "downloads" / "manual"
    tars = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
    missing = [t for t in tars if not (manual_dir / t).exists()]
    if missing:
      raise ValueError(
          f"dataset 'imagenet2012' is not prepared in {builder.data_dir} and the manual dir "
          f"{manual_dir} lacks {' and '.join(missing)}. Download {' and '.join(tars)} from "
          f"image-net.org (TFDS cannot download them), put them in {manual_dir}, then run "
          f"`python -m signin_jax.prepare_data imagenet2012 --data_dir={builder.data_dir_root}`.")
  return DATASETS[name]


def is_readable(name: str, data_dir: Optional[str] = None) -> bool:
  """Whether TFDS can read the dataset now (prepared, or served by a mock in tests)."""
  tfds = tfds_module()
  try:
    ds = tfds.builder(name, data_dir=data_dir).as_dataset(
        split=DATASETS[name].eval_split, decoders={"image": tfds.decode.SkipDecoding()})
    next(iter(ds.take(1)))
    return True
  except Exception:  # pylint: disable=broad-except  (not prepared: TFDS raises several kinds)
    return False


# --- arguments, shards and sizes --------------------------------------------------------------

def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _process(process_index: Optional[int], process_count: Optional[int]) -> Tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not (_is_int(process_count) and process_count >= 1):
    raise ValueError(f"process_count must be a positive integer, got {process_count!r}.")
  if not (_is_int(process_index) and 0 <= process_index < process_count):
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index!r}.")
  return int(process_index), int(process_count)


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if not (_is_int(global_batch_size) and global_batch_size >= 1):
    raise ValueError(f"global_batch_size must be a positive integer, got {global_batch_size!r}.")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be divisible by "
                     f"process_count={process_count} (every process takes an equal share).")
  return int(global_batch_size) // process_count


def _check_name(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}.")
  return DATASETS[name]


def _shard(split: str, process_index: int, process_count: int):
  return tfds_module().split_for_jax_process(split, process_index=process_index,
                                             process_count=process_count)


def _split_size(builder, split) -> int:
  """Examples in `split` (a split name or sub-split); counted when TFDS has no metadata
  (mock data in tests)."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):
    tfds = tfds_module()
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    return sum(1 for _ in ds.map(lambda ex: ex["label"]).as_numpy_iterator())


def num_examples(name: str, split: Optional[str] = None, *,
                 data_dir: Optional[str] = None) -> int:
  """Examples in ``split`` of a prepared dataset (default: its training split)."""
  info = _check_name(name)
  return _split_size(tfds_module().builder(name, data_dir=data_dir), split or info.train_split)


def _shard_sizes(name: str, split: str, process_count: int,
                 data_dir: Optional[str]) -> List[int]:
  builder = tfds_module().builder(name, data_dir=data_dir)
  return [_split_size(builder, _shard(split, i, process_count)) for i in range(process_count)]


def steps_per_epoch(name: str, global_batch_size: int, *, data_dir: Optional[str] = None,
                    process_count: Optional[int] = None, split: Optional[str] = None) -> int:
  """Training steps per epoch: full local batches of the smallest process shard,
  ``min_i(|shard_i|) // (global_batch_size // process_count)``."""
  info = _check_name(name)
  _, process_count = _process(0, process_count)
  local = _local_batch(global_batch_size, process_count)
  smallest = min(_shard_sizes(name, split or info.train_split, process_count, data_dir))
  if smallest < local:
    raise ValueError(f"global_batch_size={global_batch_size} is too large: a process's share "
                     f"({local}) exceeds its shard of {name}'s training split ({smallest} "
                     "examples).")
  return smallest // local


def num_eval_batches(name: str, global_batch_size: int, *, data_dir: Optional[str] = None,
                     process_count: Optional[int] = None, split: Optional[str] = None) -> int:
  """Eval batches every process yields: ``ceil(max_i(|shard_i|) / local batch)``."""
  info = _check_name(name)
  _, process_count = _process(0, process_count)
  local = _local_batch(global_batch_size, process_count)
  return math.ceil(max(_shard_sizes(name, split or info.eval_split, process_count, data_dir))
                   / local)


def _numpy_dtype(image_dtype: str) -> np.dtype:
  if image_dtype not in IMAGE_DTYPES:
    raise ValueError(f"image_dtype must be one of {list(IMAGE_DTYPES)}, got {image_dtype!r}.")
  if image_dtype == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top  (ships with jax)
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(np.float32)


def _epoch_seeds(seed: int, epoch: int, process_index: int):
  """Independent seed sequences for the example order and the augmentations of one epoch of
  one process."""
  return np.random.SeedSequence([seed, epoch, process_index]).spawn(2)


# --- small datasets: decoded once, held in memory as uint8 -----------------------------------

_MEMORY: Dict[tuple, Tuple[np.ndarray, np.ndarray]] = {}


def clear_cache() -> None:
  """Frees the decoded small datasets (they are otherwise kept for the life of the process,
  keyed by dataset, split, data_dir and size)."""
  _MEMORY.clear()


def _in_memory(name: str, split, data_dir: Optional[str]) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 images [N, H, W, C], int32 labels [N]) of `split`, in file order, decoded once."""
  tfds = tfds_module()
  builder = tfds.builder(name, data_dir=data_dir)
  key = (name, str(split), data_dir, _split_size(builder, split))
  if key not in _MEMORY:
    ds = builder.as_dataset(split=split, shuffle_files=False)
    parts = list(tfds.as_numpy(ds.map(lambda ex: (ex["image"], ex["label"])).batch(4096)))
    shape = DATASETS[name].image_shape
    images = (np.concatenate([p[0] for p in parts]) if parts
              else np.zeros((0,) + shape, np.uint8))
    labels = (np.concatenate([p[1] for p in parts]) if parts else np.zeros((0,), np.int64))
    _MEMORY[key] = (images.astype(np.uint8), labels.astype(np.int32))
  return _MEMORY[key]


def _normalize_np(images: np.ndarray, info: DatasetInfo, dtype: np.dtype) -> np.ndarray:
  """(x / 255 - mean) / std per channel, computed in float32."""
  scale = (1.0 / (255.0 * np.asarray(info.std))).astype(np.float32)
  shift = (np.asarray(info.mean) / np.asarray(info.std)).astype(np.float32)
  return (images.astype(np.float32) * scale - shift).astype(dtype)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's mixing function (Steele, Lea & Flood 2014), a bijection of uint64 whose
  outputs for consecutive inputs pass BigCrush: a counter-based random generator."""
  x = x + _GOLDEN
  x = (x ^ (x >> np.uint64(30))) * _MIX1
  x = (x ^ (x >> np.uint64(27))) * _MIX2
  return x ^ (x >> np.uint64(31))


def _example_bits(key: np.uint64, positions: np.ndarray, stream: int) -> np.ndarray:
  """64 random bits per example, a pure function of (epoch key, position, stream)."""
  counter = positions.astype(np.uint64) * np.uint64(3) + np.uint64(stream)  # 3 streams
  return _splitmix64(_splitmix64(counter) ^ key)


def _uniform_int(bits: np.ndarray, n: int) -> np.ndarray:
  """Integers in [0, n) from the top 32 bits (multiply-shift: bias below n / 2**32)."""
  return ((bits >> np.uint64(32)) * np.uint64(n) >> np.uint64(32)).astype(np.int64)


def _random_crop_flip(images: np.ndarray, positions: np.ndarray, key: np.uint64,
                      padding: int) -> np.ndarray:
  """Zero-pads `padding` pixels on each side, crops back to the original size at a random
  offset and flips horizontally with probability 1/2; each example's draws come from its own
  position in the epoch."""
  n, h, w, c = images.shape
  padded = np.zeros((n, h + 2 * padding, w + 2 * padding, c), images.dtype)
  padded[:, padding:padding + h, padding:padding + w] = images
  top = _uniform_int(_example_bits(key, positions, 0), 2 * padding + 1)
  left = _uniform_int(_example_bits(key, positions, 1), 2 * padding + 1)
  flip = (_example_bits(key, positions, 2) >> np.uint64(63)).astype(bool)
  rows = top[:, None] + np.arange(h)[None, :]
  cols = left[:, None] + np.arange(w)[None, :]
  cols = np.where(flip[:, None], cols[:, ::-1], cols)
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _train_in_memory(name, info, split, data_dir, seed, process_index, local, steps, epoch,
                     offset, augment, dtype):
  images, labels = _in_memory(name, split, data_dir)
  while True:
    order_seed, augment_seed = _epoch_seeds(seed, epoch, process_index)
    order = np.random.default_rng(order_seed).permutation(len(labels))
    key = augment_seed.generate_state(1, np.uint64)[0]
    for b in range(offset, steps):
      positions = np.arange(b * local, (b + 1) * local)
      idx = order[positions]
      batch = images[idx]
      if augment:
        batch = _random_crop_flip(batch, positions, key, CROP_PADDING)
      yield {"image": _normalize_np(batch, info, dtype), "label": labels[idx]}
    epoch, offset = epoch + 1, 0


# --- ImageNet: streamed by tf.data ------------------------------------------------------------

def _normalize_tf(tf, image, info: DatasetInfo, image_dtype: str):
  image = (tf.cast(image, tf.float32) / 255.0 - tf.constant(info.mean)) / tf.constant(info.std)
  return tf.cast(image, tf.dtypes.as_dtype(image_dtype))


def _imagenet_center_crop(tf, image_bytes, size: int):
  """The central size/(size+32) of the shorter side, resized to size x size (bicubic)."""
  shape = tf.io.extract_jpeg_shape(image_bytes)
  h, w = shape[0], shape[1]
  crop = tf.cast(size / (size + IMAGENET_CROP_PADDING) *
                 tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
  window = tf.stack([(h - crop + 1) // 2, (w - crop + 1) // 2, crop, crop])
  image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
  return tf.image.resize(image, [size, size], method="bicubic")


def _imagenet_inception_crop(tf, image_bytes, size: int, seed):
  """Inception-style random crop (area 8-100 %, aspect 3/4-4/3) resized to size x size, and a
  random horizontal flip; stateless, driven by `seed` ([2] int64). When 10 attempts find no
  such box the whole image comes back, and the center crop is used instead (as flax)."""
  box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = tf.io.extract_jpeg_shape(image_bytes)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=box_seed,
      min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)

  def random_crop():
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
    return tf.image.resize(image, [size, size], method="bicubic")

  no_box = tf.reduce_all(tf.equal(crop_size[:2], shape[:2]))
  image = tf.cond(no_box, lambda: _imagenet_center_crop(tf, image_bytes, size), random_crop)
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _deterministic_options(tf):
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  return options


def _train_streamed(name, info, split, data_dir, seed, process_index, local, steps, epoch,
                    offset, augment, image_dtype, shuffle_buffer):
  tf, tfds = tf_module(), tfds_module()
  builder = tfds.builder(name, data_dir=data_dir)
  size = info.image_shape[0]
  while True:
    order_seed, augment_seed = _epoch_seeds(seed, epoch, process_index)
    file_seed, buffer_seed = (int(s) for s in order_seed.generate_state(2, np.uint32))
    epoch_key = tf.constant(augment_seed.generate_state(2, np.uint32).astype(np.int64))
    ds = builder.as_dataset(
        split=split, shuffle_files=True, decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=file_seed,
                                    options=_deterministic_options(tf)))
    ds = ds.shuffle(shuffle_buffer, seed=buffer_seed, reshuffle_each_iteration=False)
    # Positions are counted before the skip, so a resumed epoch draws the same augmentations.
    ds = ds.take(steps * local).enumerate().skip(offset * local)

    def preprocess(position, example, epoch_key=epoch_key):
      if augment:
        image = _imagenet_inception_crop(
            tf, example["image"], size,
            tf.random.experimental.stateless_fold_in(epoch_key, position))
      else:
        image = _imagenet_center_crop(tf, example["image"], size)
      return {"image": _normalize_tf(tf, image, info, image_dtype),
              "label": tf.cast(example["label"], tf.int32)}

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    yield from tfds.as_numpy(ds.with_options(_deterministic_options(tf)))
    epoch, offset = epoch + 1, 0


def _eval_streamed(name, info, split, data_dir, local, image_dtype):
  tf, tfds = tf_module(), tfds_module()
  ds = tfds.builder(name, data_dir=data_dir).as_dataset(
      split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(options=_deterministic_options(tf)))
  ds = ds.map(lambda ex: {
      "image": _normalize_tf(tf, _imagenet_center_crop(tf, ex["image"], info.image_shape[0]),
                             info, image_dtype),
      "label": tf.cast(ex["label"], tf.int32),
      "mask": tf.ones([], tf.int32)}, num_parallel_calls=tf.data.AUTOTUNE)
  return tfds.as_numpy(ds.batch(local).prefetch(tf.data.AUTOTUNE))


# --- iterators --------------------------------------------------------------------------------

def train_iterator(name: str, *, global_batch_size: int, seed: int, start_step: int = 0,
                   data_dir: Optional[str] = None, process_index: Optional[int] = None,
                   process_count: Optional[int] = None, augment: Optional[bool] = None,
                   image_dtype: str = "float32",
                   shuffle_buffer: int = IMAGENET_SHUFFLE_BUFFER, split: Optional[str] = None,
                   ) -> Iterator[Dict[str, np.ndarray]]:
  """Endless training batches of this process, from global step `start_step` on.

  Args:
    name: a key of DATASETS.
    global_batch_size: examples per step over all processes; divisible by process_count.
    seed: non-negative; with the process and the step it fixes every batch.
    start_step: the first batch yielded is the one of global step `start_step` (0-based).
    data_dir: TFDS data_dir (None: TFDS's default).
    process_index, process_count: this process's shard (default: jax.process_index() and
      jax.process_count()).
    augment: training augmentation (None: the dataset's default, ``DATASETS[name].augment``);
      False on ImageNet gives the evaluation crop.
    image_dtype: 'float32' or 'bfloat16'.
    shuffle_buffer: ImageNet only: encoded examples in the shuffle buffer.
    split: a TFDS split or sub-split to train on, e.g. 'train[:50000]' (None: the dataset's
      training split).

  Yields:
    {'image': [B, H, W, C] image_dtype, 'label': [B] int32}, B = global_batch_size //
    process_count.
  """
  info = check_dataset(name, data_dir)
  process_index, process_count = _process(process_index, process_count)
  local = _local_batch(global_batch_size, process_count)
  if not (_is_int(seed) and seed >= 0):
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
  if not (_is_int(start_step) and start_step >= 0):
    raise ValueError(f"start_step must be a non-negative integer, got {start_step!r}.")
  if augment not in (None, True, False):
    raise ValueError(f"augment must be None, True or False, got {augment!r}.")
  dtype = _numpy_dtype(image_dtype)
  augment = info.augment if augment is None else augment
  split = split or info.train_split
  steps = steps_per_epoch(name, global_batch_size, data_dir=data_dir,
                          process_count=process_count, split=split)
  split = _shard(split, process_index, process_count)
  epoch, offset = divmod(int(start_step), steps)
  if info.in_memory:
    return _train_in_memory(name, info, split, data_dir, int(seed), process_index, local,
                            steps, epoch, offset, augment, dtype)
  if not (_is_int(shuffle_buffer) and shuffle_buffer >= 1):
    raise ValueError(f"shuffle_buffer must be a positive integer, got {shuffle_buffer!r}.")
  return _train_streamed(name, info, split, data_dir, int(seed), process_index, local, steps,
                         epoch, offset, augment, image_dtype, shuffle_buffer)


def eval_iterator(name: str, *, global_batch_size: int, data_dir: Optional[str] = None,
                  process_index: Optional[int] = None, process_count: Optional[int] = None,
                  image_dtype: str = "float32", split: Optional[str] = None,
                  ) -> Iterator[Dict[str, np.ndarray]]:
  """This process's evaluation batches: every example of its shard once, then padding.

  Yields ``num_eval_batches(name, global_batch_size)`` batches ``{'image', 'label', 'mask'}``
  of B = global_batch_size // process_count entries; ``mask`` is 1 for real examples. `split`
  is a TFDS split or sub-split (None: the dataset's evaluation split).
  """
  info = check_dataset(name, data_dir)
  process_index, process_count = _process(process_index, process_count)
  local = _local_batch(global_batch_size, process_count)
  dtype = _numpy_dtype(image_dtype)
  split = split or info.eval_split
  num_batches = num_eval_batches(name, global_batch_size, data_dir=data_dir,
                                 process_count=process_count, split=split)
  split = _shard(split, process_index, process_count)
  return _padded_eval(info, local, dtype, num_batches,
                      _eval_in_memory(name, info, split, data_dir, local, dtype)
                      if info.in_memory else
                      _eval_streamed(name, info, split, data_dir, local, image_dtype))


def _eval_in_memory(name, info, split, data_dir, local, dtype):
  images, labels = _in_memory(name, split, data_dir)
  for start in range(0, len(labels), local):
    batch_labels = labels[start:start + local]
    yield {"image": _normalize_np(images[start:start + local], info, dtype),
           "label": batch_labels, "mask": np.ones(len(batch_labels), np.int32)}


def _padded_eval(info, local, dtype, num_batches, batches):
  empty = {"image": np.zeros((local,) + info.image_shape, dtype),
           "label": np.zeros((local,), np.int32), "mask": np.zeros((local,), np.int32)}
  produced = 0
  for batch in batches:
    n = len(batch["label"])
    if n < local:  # the partial last batch: pad with masked-out zeros
      batch = {k: np.concatenate([v, empty[k][:local - n]]) for k, v in batch.items()}
    produced += 1
    yield batch
  for _ in range(num_batches - produced):
    yield {k: v.copy() for k, v in empty.items()}
