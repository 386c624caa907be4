"""Where jax.experimental.sparse BCSR's batch-1 time goes: its cost per stored weight by batch.

    taskset -c 1 python benchmarks/bcsr_batch_sizes.py

One 784x300 kernel (random masks at 90 / 95 / 98 %) as BCSR ``K^T [300, 784]`` times a
pre-transposed ``x^T [784, B]`` (so no transposes are timed), jitted, for B = 1 .. 128, against
scipy's CSR on the same arrays (no JAX). Each time is the minimum over 15 rounds of the mean of
40 calls, in CPU time of this process (a shared machine). It prints microseconds per call and
nanoseconds per stored weight.

Measured (2026-12-07, the commit that added this script, AMD EPYC, one core of a loaded machine):
at B = 1, 2 and 4 BCSR costs 18-25 ns per stored weight whatever B (218 us at 95 %, where
scipy takes 13 us); at B = 8 and 16, 5-8 ns (62 us at 95 %); at B = 128, 16-21 ns. jaxlib's
kernel (jaxlib/cpu/sparse_kernels.cc) runs a batch this small on one thread as Eigen's
``SparseMatrix<RowMajor> * Matrix<RowMajor>``, which adds ``v * rhs.row(k)`` to ``res.row(j)``
for each stored weight: a row of B runtime-sized floats. Below 8 floats (one AVX register)
that row update is not vectorised, and its fixed cost per stored weight, not the arithmetic,
nor threads or transposes, is the time: hence batch 1 slower than batch 8.
"""

import time

import jax
import jax.numpy as jnp
from jax.experimental import sparse as jsparse
import numpy as np
import scipy.sparse


def best(f, *args, calls=40, rounds=15):
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(rounds):
    start = time.process_time()
    for _ in range(calls):
      out = f(*args)
    jax.block_until_ready(out)
    times.append((time.process_time() - start) / calls * 1e6)
  return min(times)


def main():
  rng = np.random.default_rng(0)
  product = jax.jit(lambda xt, k: k @ xt)
  for sparsity in (0.9, 0.95, 0.98):
    w = rng.standard_normal((784, 300)).astype(np.float32)
    w *= rng.random((784, 300)) >= sparsity
    kt = jsparse.BCSR.fromdense(jnp.asarray(w.T))
    csr = scipy.sparse.csr_matrix(w.T)
    for batch in (1, 2, 4, 8, 16, 128):
      xt = rng.standard_normal((784, batch)).astype(np.float32)
      t_bcsr = best(product, jnp.asarray(xt), kt)
      t_scipy = best(lambda a: csr @ a, xt)
      print(f"{sparsity:.0%} nnz {kt.nse:6d} batch {batch:4d}: BCSR {t_bcsr:8.1f} us "
            f"({t_bcsr * 1e3 / kt.nse:5.1f} ns per stored weight), scipy {t_scipy:8.1f} us")


if __name__ == "__main__":
  main()
