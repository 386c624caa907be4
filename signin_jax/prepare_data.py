"""Getting the datasets in place for TFDS, offline where possible.

    python -m signin_jax.prepare_data fashion_mnist [--data_dir=DIR]

**Fashion-MNIST offline.** Debian's package ``dataset-fashion-mnist`` ships the four idx files
in ``/usr/share/datasets/fashion-mnist/``. They were recompressed, so their .gz bytes differ
from the files TFDS registered (and its checksums do not match), but the decompressed data is
the original. :func:`prepare_fashion_mnist` (1) checks the decompressed bytes against the
SHA-256 of the original files (below; the same digests are published independently, e.g. by
data loaders that verify the publisher's archives) and the idx headers, (2) seeds TFDS's
download cache: each file goes where TFDS looks for an already downloaded URL
(``<data_dir>/downloads/<get_dl_fname(url, registered sha256)>``) with the ``.INFO`` file TFDS
writes after a download, and (3) runs the ordinary ``download_and_prepare``, which finds the
files cached, extracts them and builds the dataset with no network. Afterwards the ordinary
TFDS path (``tfds.load('fashion_mnist')``) reads it.

**CIFAR-10 / CIFAR-100** are downloaded by TFDS itself on a machine with internet
(``tfds.builder('cifar10').download_and_prepare()``, which :func:`ensure_prepared` calls), or
copy a prepared ``~/tensorflow_datasets/cifar10`` (any data_dir) from such a machine.

**ImageNet (imagenet2012)** cannot be downloaded automatically: put
``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` (from image-net.org) into
``<data_dir>/downloads/manual/`` and run ``ensure_prepared('imagenet2012', data_dir)`` or
``tfds.builder('imagenet2012', data_dir=...).download_and_prepare()`` once (hours; the
prepared data can live on a bucket, ``data_dir='gs://...'``).
"""

import argparse
import gzip
import hashlib
import os
import shutil
import tempfile
from typing import Optional

from absl import logging

from signin_jax import input_pipeline

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# SHA-256 of the decompressed original idx files (computed with
#   python -c "import gzip, hashlib; print(hashlib.sha256(gzip.open(F).read()).hexdigest())"
# on the Debian files; they equal the digests other projects publish for the originals).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# idx header: magic number (0x0803 images, 0x0801 labels) and dimensions.
FASHION_MNIST_SHAPES = {
    "train-images-idx3-ubyte": (0x0803, (60000, 28, 28)),
    "train-labels-idx1-ubyte": (0x0801, (60000,)),
    "t10k-images-idx3-ubyte": (0x0803, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": (0x0801, (10000,)),
}


def _idx_header(data: bytes):
  ndim = data[3]
  magic = int.from_bytes(data[:4], "big")
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  return magic, dims


def verify_fashion_mnist(source_dir: str = FASHION_MNIST_DIR) -> None:
  """Raises ValueError unless every file's decompressed content is the original."""
  for name, digest in FASHION_MNIST_SHA256.items():
    path = os.path.join(source_dir, name + ".gz")
    if not os.path.exists(path):
      raise ValueError(f"{path} is missing (install the Debian package dataset-fashion-mnist).")
    with gzip.open(path, "rb") as f:
      data = f.read()
    magic, dims = _idx_header(data)
    want_magic, want_dims = FASHION_MNIST_SHAPES[name]
    if (magic, dims) != (want_magic, want_dims):
      raise ValueError(f"{path}: idx header {magic:#06x} {dims}, expected "
                       f"{want_magic:#06x} {want_dims}.")
    if hashlib.sha256(data).hexdigest() != digest:
      raise ValueError(f"{path}: decompressed content differs from the original Fashion-MNIST "
                       f"file (sha256 {hashlib.sha256(data).hexdigest()}, expected {digest}).")


def _registered_urls(builder):
  """{filename: (url, UrlInfo)} of the files TFDS registered for `builder`."""
  return {info.filename: (url, info) for url, info in builder.url_infos.items()}


def seed_download_cache(builder, source_dir: str) -> None:
  """Puts the local files where TFDS finds already downloaded URLs, with their .INFO files."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import resource  # pylint: disable=g-import-not-at-top
  download_dir = os.path.join(builder.data_dir_root, "downloads")
  os.makedirs(download_dir, exist_ok=True)
  for filename, (url, url_info) in _registered_urls(builder).items():
    target = os.path.join(download_dir, resource.get_dl_fname(url, url_info.checksum))
    with tempfile.NamedTemporaryFile(dir=download_dir, delete=False) as tmp:
      with open(os.path.join(source_dir, filename), "rb") as src:
        shutil.copyfileobj(src, tmp)
    os.replace(tmp.name, target)
    info_path = resource.get_info_path(epath.Path(target))
    if info_path.exists():  # a stale one would make write_info_file refuse
      info_path.unlink()
    resource.write_info_file(url=url, path=epath.Path(target),
                             dataset_name=builder.name, original_fname=filename,
                             url_info=url_info)


def prepare_fashion_mnist(data_dir: Optional[str] = None,
                          source_dir: str = FASHION_MNIST_DIR) -> None:
  """Verifies the local files, seeds TFDS's download cache and builds the dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  verify_fashion_mnist(source_dir)
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  seed_download_cache(builder, source_dir)
  logging.info("Building fashion_mnist in %s from %s (no download).", builder.data_dir,
               source_dir)
  builder.download_and_prepare()


def ensure_prepared(name: str, data_dir: Optional[str] = None) -> None:
  """Makes `name` readable through TFDS: nothing if it is; Fashion-MNIST from the local Debian
  files when present; otherwise TFDS's own download_and_prepare (internet, or ImageNet's
  manual dir)."""
  input_pipeline.check_dataset(name, data_dir)
  if input_pipeline.is_readable(name, data_dir):
    return
  if name == "fashion_mnist" and os.path.isdir(FASHION_MNIST_DIR):
    prepare_fashion_mnist(data_dir)
  else:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    logging.info("Preparing %s with TFDS (downloads it where TFDS can).", name)
    try:
      tfds.builder(name, data_dir=data_dir).download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"dataset {name!r} is not prepared in data_dir={data_dir!r} and TFDS "
                       f"could not prepare it ({type(e).__name__}: {e}). See the README's "
                       "'Datasets' section.") from e


def main():
  parser = argparse.ArgumentParser(description="Prepare a dataset for TFDS.")
  parser.add_argument("dataset", choices=sorted(input_pipeline.DATASETS))
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args()
  logging.set_verbosity(logging.INFO)
  ensure_prepared(args.dataset, args.data_dir)
  print(f"{args.dataset} is ready in {args.data_dir or '~/tensorflow_datasets'}")


if __name__ == "__main__":
  main()
