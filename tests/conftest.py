"""Shared fixtures."""
import os
import socket

import pytest

from signin_jax import flat_threefry
from signin_jax import prepare_data


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: end-to-end, multi-process and real-data runs (tens of seconds each); "
      "CI runs them, a quick local loop skips them with -m 'not slow'.")


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory):
  """A TFDS data_dir with the real Fashion-MNIST, prepared from the Debian files with the
  network switched off (any connection attempt fails at once)."""
  if not os.path.isdir(prepare_data.FASHION_MNIST_DIR):
    pytest.skip(f"{prepare_data.FASHION_MNIST_DIR} is absent (Debian dataset-fashion-mnist).")
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  connect = socket.socket.connect

  def refuse(*args, **kwargs):
    raise OSError("network disabled in this test")

  socket.socket.connect = refuse
  try:
    prepare_data.prepare_fashion_mnist(data_dir)
  finally:
    socket.socket.connect = connect
  return data_dir


# The suite draws random numbers as the trainer does (flat_threefry: the same numbers, compiled
# in seconds instead of minutes on a CPU).
flat_threefry.install()
