"""CPU train-step speed with and without signin_jax/cpu_speed.py's settings, side by side in one run.

    python benchmarks/cpu_settings.py                          # 5 rounds, both models
    python benchmarks/cpu_settings.py --rounds=3 --variants=without,both --models=small_cnn

The settings (README: set-up) are ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
-individual_convolution`` ("flag") and tcmalloc through ``LD_PRELOAD`` ("tcmalloc"). They cannot
change inside a process, so every measurement is a fresh subprocess of this script
(``--worker``) in the environment of one variant: ``without`` (neither; the user's other
XLA_FLAGS / LD_PRELOAD kept), ``flag``, ``tcmalloc``, ``both`` (what main.py applies), and
optionally ``hugetlb`` (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc's own allocator with
transparent huge pages: what cpu_speed uses instead of tcmalloc when tcmalloc is absent). Each round runs every variant once per model, in an order
that alternates between rounds; load from other processes, which changes over seconds, then
hits all variants alike, and each ratio is the median over rounds of the within-round ratio.

What a worker times: a jitted train step of the config's model at batch 128 (float32; a fixed
random batch in memory; forward with BatchNorm statistics, softmax cross-entropy, backward,
SGD with Nesterov momentum and weight decay, buffers donated), ``--steps`` steps after two
warm-up steps; its result is the median step time. Models: ``small_cnn`` is
configs/fashion_mnist_quickstart.py's model (28x28x1 inputs), ``resnet20`` is
configs/cifar10_r20.py's (32x32x3). The dense step without masks or Sign-In: neither changes
what the settings act on (the convolutions, the step's temporary buffers).

It also checks the numbers: a worker hashes its parameters after the timed steps, and saves the
gradient at initialization. tcmalloc must not change a bit (``tcmalloc`` against ``without``,
``both`` against ``flag``: equal hashes); the flag changes float rounding only, so its gradient
is compared with the default's, against the default's own distance to a float64 gradient
(one extra worker with ``JAX_ENABLE_X64=1``). The programs are compiled once per variant and
model into a fresh JAX compilation cache (the same executables, loaded in later rounds).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from signin_jax import cpu_speed  # pylint: disable=g-import-not-at-top,wrong-import-position

MODELS = {"small_cnn": "configs/fashion_mnist_quickstart.py", "resnet20": "configs/cifar10_r20.py"}
INPUT_SHAPES = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
VARIANTS = ("without", "flag", "tcmalloc", "both", "hugetlb")
BATCH = 128


def variant_env(variant: str, environ) -> dict:
  """The environment of a worker of `variant`, from this process's without the settings."""
  base = cpu_speed.without_settings(environ)
  tcmalloc = cpu_speed.find_tcmalloc()
  on = cpu_speed.settings({k: v for k, v in base.items() if k != cpu_speed.OFF_VARIABLE},
                          jaxlib=cpu_speed.jaxlib_version(), tcmalloc=tcmalloc)
  env = dict(base)
  if variant in ("flag", "both"):
    if "XLA_FLAGS" not in on:
      raise SystemExit(f"variant {variant!r}: jaxlib {cpu_speed.jaxlib_version()} is not known "
                       f"to accept {cpu_speed.YNN_FLAG} (cpu_speed.YNN_FLAG_JAXLIB_VERSIONS).")
    env["XLA_FLAGS"] = on["XLA_FLAGS"]
  if variant in ("tcmalloc", "both"):
    if "LD_PRELOAD" not in on:
      raise SystemExit(f"variant {variant!r}: tcmalloc is not installed (bash launch/install.sh "
                       "as root installs libtcmalloc-minimal4).")
    env["LD_PRELOAD"] = on["LD_PRELOAD"]
  if variant == "hugetlb":
    fallback = cpu_speed.settings({k: v for k, v in base.items() if k != cpu_speed.OFF_VARIABLE},
                                  jaxlib=None, tcmalloc=None, hugetlb=True)
    if "GLIBC_TUNABLES" not in fallback:
      raise SystemExit("variant 'hugetlb': GLIBC_TUNABLES or LD_PRELOAD already choose malloc.")
    env["GLIBC_TUNABLES"] = fallback["GLIBC_TUNABLES"]
  return env


# --- Worker: one variant, one model, in its own process ------------------------------------------

def _model_and_batch(name, dtype):
  import importlib.util  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from signin_jax import models
  spec = importlib.util.spec_from_file_location("config", os.path.join(REPO, MODELS[name]))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  model = models.get_model(config.model, num_classes=10, width=config.width, dtype=dtype)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(BATCH, *INPUT_SHAPES[config.dataset])), dtype)
  labels = jnp.asarray(rng.integers(0, 10, size=BATCH))
  variables = model.init(jax.random.PRNGKey(0), images[:1], train=False)
  variables = jax.tree.map(lambda x: x.astype(dtype), variables)
  return model, variables, images, labels, config


def worker(name: str, steps: int, gradient_path, float64: bool) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  import optax
  dtype = jnp.float64 if float64 else jnp.float32
  model, variables, images, labels, config = _model_and_batch(name, dtype)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})

  def loss_fn(params, batch_stats):
    logits, state = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, state["batch_stats"]

  if gradient_path:  # Before any step changes the parameters.
    gradient, _ = jax.jit(jax.grad(loss_fn, has_aux=True))(params, batch_stats)
    np.savez(gradient_path, *[np.asarray(g, np.float64) for g in jax.tree.leaves(gradient)])
  if float64:
    return {}

  tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                   optax.sgd(config.learning_rate, momentum=config.momentum,
                             nesterov=config.nesterov))

  def train_step(params, batch_stats, opt_state):
    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params, batch_stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  step = jax.jit(train_step, donate_argnums=(0, 1, 2))
  state = (params, batch_stats, tx.init(params))
  for _ in range(2):
    state = jax.block_until_ready(step(*state))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state = jax.block_until_ready(step(*state))
    times.append(time.perf_counter() - start)
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state[0]):
    digest.update(np.asarray(leaf).tobytes())
  return {"step_seconds": float(np.median(times)), "params_sha256": digest.hexdigest()}


# --- Parent: alternating rounds ------------------------------------------------------------------

def run_worker(variant, name, steps, directory, env, *, gradient=False, float64=False):
  """One worker's result; with `gradient`, also the path of its gradient at initialization."""
  gradient_path = os.path.join(directory, f"grad_{name}_{variant}.npz") if gradient else None
  command = ([sys.executable, os.path.abspath(__file__), "--worker", f"--models={name}",
              f"--steps={steps}"] + ([f"--gradient={gradient_path}"] if gradient else [])
             + (["--float64"] if float64 else []))
  if float64:
    env = dict(env, JAX_ENABLE_X64="1")
  proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
  if proc.returncode != 0:
    raise SystemExit(f"worker {variant} {name} failed:\n{proc.stderr[-3000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  result["gradient"] = gradient_path
  return result


def relative_difference(path_a, path_b) -> float:
  """||a - b|| / ||b|| over all leaves of two saved gradients."""
  with np.load(path_a) as a, np.load(path_b) as b:
    keys = sorted(a.files)
    x = np.concatenate([a[k].ravel() for k in keys])
    y = np.concatenate([b[k].ravel() for k in keys])
  return float(np.linalg.norm(x - y) / np.linalg.norm(y))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20, help="Timed steps per worker.")
  parser.add_argument("--models", default="small_cnn,resnet20")
  parser.add_argument("--variants", default="without,flag,tcmalloc,both",
                      help=f"Comma-separated, from {VARIANTS}.")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--gradient", help=argparse.SUPPRESS)
  parser.add_argument("--float64", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  names = args.models.split(",")
  variants = args.variants.split(",")
  bad = [n for n in names if n not in MODELS] + [v for v in variants if v not in VARIANTS]
  if bad or len(set(variants)) != len(variants):
    parser.error(f"--models must be from {list(MODELS)}, --variants distinct ones from "
                 f"{list(VARIANTS)}; got {bad or variants}.")
  if args.worker:
    print(json.dumps(worker(names[0], args.steps, args.gradient, args.float64)))
    return
  if args.rounds < 1 or args.steps < 1:
    parser.error("--rounds and --steps must be >= 1.")

  with tempfile.TemporaryDirectory() as directory:
    environ = dict(os.environ)
    environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(directory, "jax_cache"))
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    envs = {v: variant_env(v, environ) for v in variants}
    print(f"jaxlib {cpu_speed.jaxlib_version()}, {os.cpu_count()} CPUs "
          f"(affinity {sorted(os.sched_getaffinity(0))}), batch {BATCH}, {args.steps} timed "
          f"steps per worker, {args.rounds} rounds; load average at start "
          f"{os.getloadavg()[0]:.2f}")
    for v in variants:
      added = {k: envs[v][k] for k in ("XLA_FLAGS", "LD_PRELOAD", "GLIBC_TUNABLES")
               if k in envs[v]}
      print(f"  {v:9s} {added or '(nothing added)'}")
    results = {(n, v): [] for n in names for v in variants}
    for r in range(args.rounds):
      order = variants if r % 2 == 0 else variants[::-1]
      for name in names:
        for v in order:
          results[name, v].append(run_worker(v, name, args.steps, directory, envs[v],
                                             gradient=r == 0))
      print(f"  round {r + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.2f})",
            flush=True)

    base = "without" if "without" in variants else variants[0]
    print(f"\nimages/s (median over rounds), and the ratio to '{base}' (median over rounds of "
          "the within-round ratio [quartiles]):")
    for name in names:
      for v in variants:
        seconds = np.array([x["step_seconds"] for x in results[name, v]])
        line = f"  {name:9s} {v:9s} {BATCH / np.median(seconds):8,.0f} images/s"
        if v != base:
          ratios = np.array([x["step_seconds"] for x in results[name, base]]) / seconds
          q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
          line += f"   {q50:.2f}x [{q25:.2f}-{q75:.2f}]"
        print(line)

    print("\nnumbers:")
    for name in names:
      for with_malloc, without_malloc in (("tcmalloc", "without"), ("both", "flag"),
                                          ("hugetlb", "without")):
        if with_malloc in variants and without_malloc in variants:
          hashes = {x["params_sha256"] for v in (with_malloc, without_malloc)
                    for x in results[name, v]}
          print(f"  {name:9s} parameters after {2 + args.steps} steps, {with_malloc} vs "
                f"{without_malloc}: {'bitwise identical' if len(hashes) == 1 else 'DIFFERENT'} "
                f"({len(hashes)} distinct hash(es) over all rounds)")
      if "flag" in variants or "both" in variants:
        flagged = results[name, "flag" if "flag" in variants else "both"][0]["gradient"]
        default = results[name, base][0]["gradient"]
        float64 = run_worker("float64", name, 1, directory, envs[base], gradient=True,
                             float64=True)
        print(f"  {name:9s} gradient at initialization, relative difference: flag vs default "
              f"{relative_difference(flagged, default):.1e}; against float64: default "
              f"{relative_difference(default, float64['gradient']):.1e}, flag "
              f"{relative_difference(flagged, float64['gradient']):.1e}")


if __name__ == "__main__":
  main()
