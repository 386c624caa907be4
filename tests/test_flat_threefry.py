"""flat_threefry: N-D draws give the bits an independent Threefry-2x32 gives, and the numbers
JAX's own draw gives (tests/conftest.py installs it for the whole suite)."""
import flax.linen as nn
import jax
from jax._src.random import threefry2x32
import jax.numpy as jnp
import numpy as np
import pytest

from signin_jax import flat_threefry

requires_install = pytest.mark.skipif(not flat_threefry.applies(),
                                      reason="flat_threefry does not apply here")


def _rotl(x, r):
  return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32_numpy(key, x0, x1):
  """Threefry-2x32 with 20 rounds (Salmon et al. 2011), uint32 arithmetic mod 2**32."""
  k0, k1 = (np.uint32(k) for k in key)
  ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
  rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
  with np.errstate(over="ignore"):
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
      for r in rotations[i % 2]:
        x0 = x0 + x1
        x1 = _rotl(x1, r) ^ x0
      x0 = x0 + ks[(i + 1) % 3]
      x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def bits_numpy(key, shape):
  """32-bit draws of partitionable Threefry: element i (row-major) hashes the counter i."""
  count = np.arange(int(np.prod(shape)), dtype=np.uint64)
  hi, lo = (count >> np.uint64(32)).astype(np.uint32), count.astype(np.uint32)
  b0, b1 = threefry2x32_numpy(key, hi, lo)
  return (b0 ^ b1).reshape(shape)


def test_the_numpy_reference_is_threefry():
  # The known-answer vector of Random123 for Threefry-2x32-20 with all-ones key and input.
  ones = np.array([0xFFFFFFFF], np.uint32)
  b0, b1 = threefry2x32_numpy((0xFFFFFFFF, 0xFFFFFFFF), ones, ones)
  assert (int(b0[0]), int(b1[0])) == (0x1CB996FC, 0xBB002BE7)


def test_jax_own_draw_counts_elements_row_major():
  key = jax.random.key_data(jax.random.split(jax.random.PRNGKey(3))[1])
  original = flat_threefry.original_draw()
  got = np.asarray(jax.jit(original, static_argnums=(1, 2))(key, 32, (5, 7)))
  np.testing.assert_array_equal(got, bits_numpy(np.asarray(key), (5, 7)))


@requires_install
@pytest.mark.parametrize("shape", [(3, 3, 8, 12), (2, 3, 5), (7, 3)])
def test_installed_draws_equal_the_reference(shape):
  assert flat_threefry.install()
  key = jax.random.split(jax.random.PRNGKey(11))[0]
  got = np.asarray(jax.random.bits(key, shape, jnp.uint32))
  np.testing.assert_array_equal(got, bits_numpy(np.asarray(jax.random.key_data(key)), shape))


@requires_install
def test_a_conv_init_is_bitwise_jax_own(monkeypatch):
  model = nn.Sequential([nn.Conv(4, (3, 3)), nn.BatchNorm(use_running_average=True),
                         nn.Dense(3, kernel_init=nn.initializers.truncated_normal(0.1))])
  init = lambda: model.init(jax.random.PRNGKey(5), jnp.ones((1, 6, 6, 2)))
  assert flat_threefry.install()
  jax.clear_caches()
  flat = init()
  monkeypatch.setattr(threefry2x32, "_threefry_random_bits_partitionable",
                      flat_threefry.original_draw())
  jax.clear_caches()
  own = init()
  jax.clear_caches()
  for a, b in zip(jax.tree.leaves(flat), jax.tree.leaves(own)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_off_switch_and_other_versions(monkeypatch):
  monkeypatch.setenv("SIGNIN_JAX_CPU_SETTINGS", "0")
  assert not flat_threefry.applies()
  monkeypatch.delenv("SIGNIN_JAX_CPU_SETTINGS")
  monkeypatch.setattr(jax, "__version__", "0.0.1")
  assert not flat_threefry.applies()
