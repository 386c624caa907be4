"""Random bits drawn over the flat shape and reshaped: the same bits, compiled in seconds.

jaxlib 0.10.2's CPU compiler is very slow over JAX's default (partitionable) Threefry-2x32 on
arrays of two or more dimensions: on this project's 2-core AMD EPYC (2026-12-08, one core while
the other trained), the first ``jax.random.normal(key, (3, 3, 8, 12))`` of a process took
19.2 s, drawn flat 0.40 s (``benchmarks/threefry_compile.py``: medians of 2 alternated rounds;
56-68 s on a core shared with the test suite); a ResNet's jitted ``init`` took over 3 minutes,
and most of the structured tests' 100-355 s each went there.

Partitionable Threefry numbers the elements of a draw by their row-major flat index (the
counters of ``jax._src.random.prng.iota_2x32_shape``), so drawing ``math.prod(shape)`` bits
and reshaping gives exactly the same bits, hence the same normal, uniform and truncated-normal
numbers: tests/test_flat_threefry.py checks the bits against an independent numpy
Threefry-2x32 and model initializations against JAX's own draw.

:func:`install` makes JAX draw that way, by wrapping its private
``jax._src.random.threefry2x32._threefry_random_bits_partitionable``, when all of these hold:
* the jax version is one this was verified on (``VERIFIED_JAX_VERSIONS``: a private function
  may change);
* JAX's default backend is the CPU (on a sharded accelerator the N-D draw lets the SPMD
  partitioner split the work; nothing changes there);
* ``SIGNIN_JAX_CPU_SETTINGS`` is not off (``=0``, as for :mod:`signin_jax.cpu_speed`).

The trainer calls it before building anything, tests/conftest.py for the suite; your own loop
can call it first thing. Draws traced before it are unchanged (same bits either way).
"""

import math
import os

import jax
import numpy as np

from signin_jax import cpu_speed

VERIFIED_JAX_VERSIONS = frozenset({"0.10.2"})
_original = None  # JAX's own draw, once install() has wrapped it.


def applies() -> bool:
  """Whether :func:`install` changes anything in this process (see the module docstring)."""
  return (jax.__version__ in VERIFIED_JAX_VERSIONS and not cpu_speed.is_off(os.environ)
          and jax.default_backend() == "cpu")


def original_draw():
  """JAX's own ``_threefry_random_bits_partitionable(key, bit_width, shape)``, unwrapped."""
  from jax._src.random import threefry2x32  # pylint: disable=g-import-not-at-top
  return _original or threefry2x32._threefry_random_bits_partitionable  # pylint: disable=protected-access


def install() -> bool:
  """Makes Threefry draw N-D shapes flat where :func:`applies`; True if it is (now) in place.
  Idempotent."""
  global _original
  if _original is not None:
    return True
  if not applies():
    return False
  from jax._src.random import threefry2x32  # pylint: disable=g-import-not-at-top
  draw_partitionable = _original = original_draw()

  def draw_flat(key, bit_width, shape):
    if len(shape) < 2 or not all(isinstance(d, (int, np.integer)) for d in shape):
      return draw_partitionable(key, bit_width, shape)  # 0-D / 1-D: already flat; symbolic dims
    return draw_partitionable(key, bit_width, (int(math.prod(shape)),)).reshape(shape)

  threefry2x32._threefry_random_bits_partitionable = draw_flat  # pylint: disable=protected-access
  return True
