"""Getting the datasets in place for TFDS, offline where possible.

    python -m signin_jax.prepare_data fashion_mnist [--data_dir=DIR]

Every dataset is afterwards read the ordinary way, ``tfds.builder(name, data_dir=...)`` and
``as_dataset`` (see :mod:`signin_jax.input_pipeline`); :func:`ensure_prepared` (which
``main.py`` calls) prepares it first if needed.

**Fashion-MNIST, offline.** Debian's package ``dataset-fashion-mnist`` ships the four idx files
in ``/usr/share/datasets/fashion-mnist/``. Debian normalized their gzip headers (dropped the
stored file name and set the time stamp to the package date: 24/23 bytes shorter than the
originals), so their bytes differ from the archives TFDS registered and TFDS's checksums do not
match them; the compressed stream itself is the original. :func:`prepare_fashion_mnist`

1. reads each file once, checks its idx header (magic number, 60000/10000 x 28 x 28) and the
   SHA-256 of the *decompressed* bytes (constants below), and refuses anything else;
2. rebuilds the original archive by restoring the header (the file name, and the original time
   stamp, found once by search, see ``ORIGINAL_GZIP_MTIME``) and checks that its SHA-256 is the
   one TFDS registered (read from the installed TFDS, ``builder.url_infos``);
3. seeds TFDS's download cache: the archive goes where TFDS looks for an already downloaded URL,
   ``<data_dir>/downloads/<resource.get_dl_fname(url, sha256)>``, with the ``.INFO`` file TFDS
   writes after a download (without it TFDS treats the file as absent and goes to the network);
4. runs the ordinary ``builder.download_and_prepare()``, which finds every URL cached, extracts
   and builds the dataset without any network access.

What TFDS checks (tensorflow_datasets/core/download/download_manager.py, 4.9.10): a file counts
as cached when it and its ``.INFO`` exist at the path derived from the *registered* checksum;
TFDS then takes the registered size/checksum as the file's and does not hash it again. So the
check in step 2 is ours: with it, the cache holds exactly the bytes whose checksum names the
file. Should a future Debian package really recompress the files (step 2 fails although step 1
passed), the verified content is written as a new gzip instead and a warning says so: the data
are still the originals (step 1), only the archive bytes differ from the registered ones.

**CIFAR-10 / CIFAR-100.** TFDS downloads and prepares them itself on a machine with internet
(``ensure_prepared('cifar10')`` calls ``tfds.builder('cifar10').download_and_prepare()``).
Offline, copy a prepared data_dir from such a machine (``~/tensorflow_datasets/cifar10/``, or
the whole directory given as ``data_dir``).

**ImageNet (imagenet2012)** cannot be downloaded automatically: download
``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` from image-net.org into
``<data_dir>/downloads/manual/`` (``~/tensorflow_datasets/downloads/manual/`` by default), then
``python -m signin_jax.prepare_data imagenet2012 --data_dir=<data_dir>`` once (hours; the
prepared data may then live on a bucket, ``data_dir='gs://...'``).
"""

import argparse
import gzip
import hashlib
import math
import os
import tempfile
import zlib
from typing import Dict, List, Optional, Tuple

from absl import logging

from signin_jax import input_pipeline

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# SHA-256 of the decompressed idx files, computed once on the Debian files with
#   for f in /usr/share/datasets/fashion-mnist/*.gz; do zcat $f | sha256sum; done
# That this is the original content is confirmed independently: the same compressed streams
# under the original headers (ORIGINAL_GZIP_MTIME) have the checksums TFDS registered.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# idx header: magic number (0x0801: uint8 vector, 0x0803: uint8 rank-3 tensor) and dimensions.
FASHION_MNIST_SHAPES = {
    "train-images-idx3-ubyte": (0x0803, (60000, 28, 28)),
    "train-labels-idx1-ubyte": (0x0801, (60000,)),
    "t10k-images-idx3-ubyte": (0x0803, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": (0x0801, (10000,)),
}

# The gzip time stamps (MTIME, seconds since 1970, UTC: 2017-08-31 10:50:06 and 10:50:27) of
# the original archives. Found once by trying every second of 2017 until the rebuilt archive
# had TFDS's registered SHA-256 (SHA below: the checksum in TFDS's url_checksums/
# fashion_mnist.txt; ~2 minutes for the first file, the others lie within a minute of it):
#   python -c "import hashlib; n = 't10k-labels-idx1-ubyte'; d = open(
#     f'/usr/share/datasets/fashion-mnist/{n}.gz', 'rb').read(); print(next(t for t in range(
#     1483228800, 1514764800) if hashlib.sha256(d[:3] + b'\x08' + t.to_bytes(4, 'little') +
#     d[8:10] + n.encode() + b'\0' + d[10:]).hexdigest() == SHA))"
ORIGINAL_GZIP_MTIME = {
    "train-images-idx3-ubyte": 1504176606,
    "train-labels-idx1-ubyte": 1504176606,
    "t10k-images-idx3-ubyte": 1504176627,
    "t10k-labels-idx1-ubyte": 1504176627,
}

_GZIP_FLAGS = {"FHCRC": 0x02, "FEXTRA": 0x04, "FNAME": 0x08, "FCOMMENT": 0x10}



def _idx_header(data: bytes) -> Tuple[int, Tuple[int, ...]]:
  """(magic number, dimensions) of an idx file: big-endian int32s, data[3] is the rank."""
  magic = int.from_bytes(data[:4], "big")
  rank = data[3] if len(data) > 3 else 0
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank))
  return magic, dims


def read_fashion_mnist(source_dir: str = FASHION_MNIST_DIR) -> Dict[str, Tuple[bytes, bytes]]:
  """Reads and checks the four files once: {name: (the .gz bytes, the decompressed bytes)}.

  Raises:
    ValueError: a file is missing or not gzip, its idx header or size is not Fashion-MNIST's,
      or its decompressed content is not the original (SHA-256).
  """
  files = {}
  for name, digest in FASHION_MNIST_SHA256.items():
    path = os.path.join(source_dir, name + ".gz")
    if not os.path.isfile(path):
      raise ValueError(f"{path} is missing: install the Debian package dataset-fashion-mnist "
                       "or pass the directory holding the four idx .gz files.")
    with open(path, "rb") as f:
      packed = f.read()
    try:
      data = gzip.decompress(packed)
    except (OSError, EOFError, zlib.error) as e:
      raise ValueError(f"{path} is not a readable gzip file ({e}).") from e
    magic, dims = _idx_header(data)
    want_magic, want_dims = FASHION_MNIST_SHAPES[name]
    want_size = 4 + 4 * len(want_dims) + math.prod(want_dims)
    if (magic, dims, len(data)) != (want_magic, want_dims, want_size):
      raise ValueError(f"{path}: idx header {magic:#06x} {dims} and {len(data)} bytes, expected "
                       f"{want_magic:#06x} {want_dims} and {want_size} bytes.")
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
      raise ValueError(f"{path}: decompressed content differs from the original Fashion-MNIST "
                       f"file (sha256 {actual}, expected {digest}); refusing to use it.")
    files[name] = (packed, data)
  return files


def verify_fashion_mnist(source_dir: str = FASHION_MNIST_DIR) -> None:
  """Raises ValueError unless the four files hold the original Fashion-MNIST."""
  read_fashion_mnist(source_dir)


def _gzip_body(packed: bytes) -> Tuple[bytes, bytes]:
  """(XFL and OS bytes, compressed stream + CRC32/ISIZE trailer) of a one-member gzip file.

  Header (RFC 1952): ID1 ID2 CM FLG MTIME[4] XFL OS, then the optional fields FLG announces.
  """
  if packed[:3] != b"\x1f\x8b\x08":
    raise ValueError("not a deflate-compressed gzip file")
  flags, pos = packed[3], 10
  if flags & _GZIP_FLAGS["FEXTRA"]:
    pos += 2 + int.from_bytes(packed[pos:pos + 2], "little")
  for field in ("FNAME", "FCOMMENT"):  # zero-terminated
    if flags & _GZIP_FLAGS[field]:
      pos = packed.index(b"\0", pos) + 1
  if flags & _GZIP_FLAGS["FHCRC"]:
    pos += 2
  return packed[8:10], packed[pos:]


def original_archive(name: str, packed: bytes) -> bytes:
  """The archive as published: Debian's compressed stream under the original header (FLG =
  FNAME, the original MTIME, the file name). Only the header differs, so the decompressed
  content is untouched."""
  xfl_os, body = _gzip_body(packed)
  return (b"\x1f\x8b\x08" + bytes([_GZIP_FLAGS["FNAME"]]) +
          ORIGINAL_GZIP_MTIME[name].to_bytes(4, "little") + xfl_os +
          name.encode("latin-1") + b"\0" + body)


def _write_atomically(path: str, data: bytes) -> None:
  with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), delete=False) as tmp:
    tmp.write(data)
  os.replace(tmp.name, path)


def seed_download_cache(builder, files: Dict[str, Tuple[bytes, bytes]]) -> List[str]:
  """Puts each checked file (from :func:`read_fashion_mnist`) where `builder`'s download
  manager finds its URL already downloaded, with the ``.INFO`` file TFDS writes after a
  download. Returns the paths of the archives written."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import resource  # pylint: disable=g-import-not-at-top
  # {file name: (url, registered UrlInfo)}, from TFDS's own checksums file.
  registered = {info.filename: (url, info) for url, info in (builder.url_infos or {}).items()}
  if set(registered) != {name + ".gz" for name in files}:
    raise ValueError(f"TFDS registers the files {sorted(registered)} for {builder.name}, not "
                     f"{sorted(name + '.gz' for name in files)}: this TFDS version packages "
                     "the dataset differently; prepare it with TFDS's own download instead.")
  download_dir = os.path.join(builder.data_dir_root, "downloads")
  os.makedirs(download_dir, exist_ok=True)
  written = []
  for name, (packed, data) in sorted(files.items()):
    url, url_info = registered[name + ".gz"]
    archive = original_archive(name, packed)
    if hashlib.sha256(archive).hexdigest() != url_info.checksum:
      logging.warning(
          "%s: the rebuilt archive is not the one TFDS registered (sha256 %s); caching the "
          "verified content recompressed instead (TFDS does not hash cached files again).",
          name, url_info.checksum)
      archive = gzip.compress(data, compresslevel=1, mtime=0)  # a cache: fast, deterministic
    target = os.path.join(download_dir, resource.get_dl_fname(url, url_info.checksum))
    _write_atomically(target, archive)
    info_path = resource.get_info_path(epath.Path(target))
    if info_path.exists():  # write_info_file refuses to overwrite a stored value
      info_path.unlink()
    resource.write_info_file(url=url, path=epath.Path(target), dataset_name=builder.name,
                             original_fname=name + ".gz", url_info=url_info)
    written.append(target)
  return written


def prepare_fashion_mnist(data_dir: Optional[str] = None,
                          source_dir: str = FASHION_MNIST_DIR) -> None:
  """Checks the local files, seeds TFDS's download cache with them and builds the dataset with
  the ordinary ``download_and_prepare`` (no network)."""
  tfds = input_pipeline.tfds_module()
  files = read_fashion_mnist(source_dir)
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  logging.info("fashion_mnist: files in %s checked; seeding TFDS's download cache in %s.",
               source_dir, os.path.join(builder.data_dir_root, "downloads"))
  seed_download_cache(builder, files)
  logging.info("fashion_mnist: building the dataset in %s.", builder.data_dir)
  builder.download_and_prepare()
  logging.info("fashion_mnist: ready in %s.", builder.data_dir)


def ensure_prepared(name: str, data_dir: Optional[str] = None) -> None:
  """Makes `name` readable through TFDS: nothing if it already is; Fashion-MNIST from the local
  Debian files when they exist; otherwise TFDS's own ``download_and_prepare`` (which needs
  internet, or for ImageNet the tar files in the manual dir).

  Raises:
    ValueError: an unknown dataset, ImageNet without its manual dir, bad local Fashion-MNIST
      files, or TFDS could not prepare the dataset.
  """
  input_pipeline.check_dataset(name, data_dir)
  if input_pipeline.is_readable(name, data_dir):
    logging.info("%s is prepared (data_dir=%s).", name, data_dir)
    return
  if name == "fashion_mnist" and os.path.isdir(FASHION_MNIST_DIR):
    prepare_fashion_mnist(data_dir)
    return
  tfds = input_pipeline.tfds_module()
  source = ("from the tar files in its manual dir" if name == "imagenet2012" else
            "downloading it: this needs internet (offline, copy a prepared data_dir instead, "
            "see signin_jax/prepare_data.py)")
  logging.info("Preparing %s with TFDS's download_and_prepare (data_dir=%s), %s.", name,
               data_dir, source)
  try:
    tfds.builder(name, data_dir=data_dir).download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except  (network, manual dir, disk: many kinds)
    raise ValueError(f"dataset {name!r} is not prepared in data_dir={data_dir!r} and TFDS could "
                     f"not prepare it ({type(e).__name__}: {e}). See the docstring of "
                     "signin_jax/prepare_data.py for how each dataset is provided.") from e


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m signin_jax.prepare_data",
      description="Prepare a dataset so that TFDS can read it (offline for fashion_mnist).")
  parser.add_argument("dataset", choices=sorted(input_pipeline.DATASETS))
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data_dir (default: TFDS's, ~/tensorflow_datasets).")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  ensure_prepared(args.dataset, args.data_dir)
  print(f"{args.dataset} is ready in {args.data_dir or 'the default TFDS data_dir'}.")


if __name__ == "__main__":
  main()
