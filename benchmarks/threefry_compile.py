"""Compile time of one random draw, JAX's own N-D Threefry against flat_threefry's flat draw.

    python benchmarks/threefry_compile.py                     # 3 rounds, shape 3x3x8x12
    python benchmarks/threefry_compile.py --rounds=1 --shape=3,3,3,8

Each measurement is a fresh subprocess (``--worker``, no compilation cache) that times its
first ``jax.random.normal(key, shape)`` (tracing, compiling and running it): with
``flat_threefry.install()`` ("flat") or without ("nd"). The two alternate in order between
rounds; printed: each round's seconds and the medians. The worker also prints a hash of the
drawn numbers: both ways must give the same one (the module's claim: the same numbers).
"""
import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(variant: str, shape) -> None:
  sys.path.insert(0, REPO)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from signin_jax import flat_threefry  # pylint: disable=g-import-not-at-top
  if variant == "flat" and not flat_threefry.install():
    raise SystemExit("flat_threefry does not apply here (jax version, backend or switched off)")
  key = jax.random.PRNGKey(0)
  start = time.perf_counter()
  numbers = np.asarray(jax.random.normal(key, shape))
  seconds = time.perf_counter() - start
  print(f"{seconds:.3f} {hashlib.sha256(numbers.tobytes()).hexdigest()[:16]}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--shape", default="3,3,8,12")
  parser.add_argument("--worker", choices=("flat", "nd"))
  args = parser.parse_args()
  shape = tuple(int(d) for d in args.shape.split(","))
  if args.worker:
    worker(args.worker, shape)
    return
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  times, hashes = {"nd": [], "flat": []}, set()
  for r in range(args.rounds):
    order = ("nd", "flat") if r % 2 == 0 else ("flat", "nd")
    for variant in order:
      out = subprocess.run([sys.executable, __file__, "--worker", variant, "--shape", args.shape],
                           env=env, capture_output=True, text=True, check=True).stdout.split()
      times[variant].append(float(out[0]))
      hashes.add(out[1])
    print(f"round {r}: nd {times['nd'][-1]:.2f} s, flat {times['flat'][-1]:.2f} s", flush=True)
  print(f"shape {shape}: median nd {statistics.median(times['nd']):.2f} s, flat "
        f"{statistics.median(times['flat']):.2f} s; same numbers both ways: {len(hashes) == 1}")
  if len(hashes) != 1:
    raise SystemExit("the two draws differ")


if __name__ == "__main__":
  main()
