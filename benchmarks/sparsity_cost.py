"""What RigL's mask updates cost, measured side by side in one run on this machine.

    python benchmarks/sparsity_cost.py                     # both parts
    python benchmarks/sparsity_cost.py --part=update       # (b) only
    python benchmarks/sparsity_cost.py --batch_size=8 --period=4 --repeats=2   # seconds

(a) The whole jitted train step (the trainer's own ``train_step``) of the CIFAR ResNet-20 at
    batch 128 on random data, 90 % ERK random mask: ``sparse_training(tx, rigl(...))`` versus
    ``sparse_training(tx, static())``, amortized over one update period: ``--period``
    consecutive steps holding exactly one mask update, versus as many static steps; with tx =
    Sign-In(SGD + momentum) and tx = SGD + momentum. Goal: at most 1.03x. It also prints the
    mask-update step alone against an ordinary step.
(b) The ImageNet ResNet-50 parameter tree (25.6M parameters): one mask update alone (the rigl
    schedule's ``new_masks``, jitted) versus one ordinary optimizer update (``tx.update`` of
    the static ``sparse_training``, jitted), on random gradients. No forward pass.

Timing: the variants run in turn, ``--repeats`` rounds after a warm-up. Each ratio is the
median over rounds of the ratio within a round, with its min-max over rounds, so that load
from other processes, which changes over seconds, hits both sides of a ratio alike; in (a) the
variants also take turns in blocks of ``--block`` steps within a round.

Measured with ``python benchmarks/sparsity_cost.py`` (defaults: batch 128, period 100, 2 rounds;
9.1 min wall) on 2 Intel Xeon cores (1 jax CPU device), jax 0.10.2, optax 0.2.8, machine
otherwise idle, 2026-12-03, commit 46eec9b:

    (a) SGD+m:   static 100 steps 59.3 s, RigL 56.9 s: 0.961x [0.960-0.961];
                 mask-update step 0.63 s vs ordinary step 0.61 s: 1.03x [1.02-1.05]
        Sign-In: static 59.3 s, RigL 56.7 s: 0.956x [0.954-0.957];
                 mask-update step 0.63 s vs 0.61 s: 1.04x [1.04-1.05]
    (b) static sparse_training update: SGD+m 59.2 ms, Sign-In 114 ms; RigL new_masks alone
        6.27 s: 106x [100-113] of SGD+m, 55x [52-58] of Sign-In

RigL's 99 ordinary steps per period measure 0.96x of as many static steps in both rounds (a
difference in how XLA compiles the two schedules' steps, not traced further), so (a) shows
that the mask update costs less than that difference. An earlier run (2026-12-02, AMD EPYC,
machine loaded by test runs: load average 3.3 to 6.7) gave 0.972x and 0.967x, and 119x in (b);
on that machine, at batch 8 (``--batch_size=8 --period=4``), a mask update added about 0.1 s to
the step. (b) is mostly sorting: ``masks._top_k_mask`` runs a stable argsort of a whole leaf
(on the earlier machine about 0.8 s for the 2.36M entries of a 3x3x512x512 kernel, against
0.2 s for ``lax.top_k``, which needs a static k), twice per layer.
"""

from signin_jax import cpu_speed

cpu_speed.reexec_with_cpu_settings()  # Time what main.py runs (README: set-up).

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from signin_jax import masks as masks_lib
from signin_jax import models
from signin_jax import signin
from signin_jax import sparsity as sparsity_lib

SPARSITY = 0.9


def sgd_momentum():
  # Injected, as the trainer's optimizer is: train_step logs the learning rate from the state.
  return optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)


def ratio(num, den, digits=3):
  """Median and min-max over rounds of the within-round ratio num / den."""
  r = np.asarray(num) / np.asarray(den)
  return f"{np.median(r):.{digits}f}x [{r.min():.{digits}f}-{r.max():.{digits}f}]"


def ms(seconds):
  return f"{np.median(seconds) * 1e3:9.1f} ms"


def init_params(model, input_shape):
  return jax.jit(lambda k: model.init(k, jnp.zeros(input_shape), train=False))(
      jax.random.PRNGKey(0))


def train_step_part(args):
  from signin_jax import train_steps  # pylint: disable=g-import-not-at-top  (needs flax)
  num_classes, period = 10, args.period
  model = models.get_model("resnet20", num_classes=num_classes)
  variables = init_params(model, (1, 32, 32, 3))
  mask = jax.jit(lambda k, p: masks_lib.create_masks(k, p, SPARSITY, method="random",
                                                     distribution="erk"))(
      jax.random.PRNGKey(1), variables["params"])
  params = masks_lib.apply_mask(variables["params"], mask)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(args.batch_size, 32, 32, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, num_classes, args.batch_size), jnp.int32)}
  # Updates at every multiple of `period` up to well past the last timed step, so each timed
  # round holds one and the cosine-annealed drop fraction stays near its start (>= 0.26).
  end_step = 4 * period * (args.repeats + 1)
  warmup = 2  # steps: the first compiles

  def runner(inner, schedule):
    tx = sparsity_lib.sparse_training(inner, schedule, mask)
    # Start the update counter `warmup` steps before a period boundary: after the warm-up each
    # round is steps k*period+1 .. (k+1)*period, whose last one is RigL's mask update.
    opt_state = tx.init(params)._replace(count=jnp.asarray(period - warmup, jnp.int32))
    state = [train_steps.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                              batch_stats=variables["batch_stats"], opt_state=opt_state,
                              rng=jax.random.PRNGKey(2))]
    step = jax.jit(lambda s, b: train_steps.train_step(s, b, apply_fn=model.apply, tx=tx,
                                                 num_classes=num_classes, label_smoothing=0.0))

    def steps(n):
      start = time.perf_counter()
      for _ in range(n):
        state[0], metrics = step(state[0], batch)
      jax.block_until_ready(metrics)
      return time.perf_counter() - start

    steps(warmup)
    return steps

  variants = {}
  for inner_name, inner in (("sgd", sgd_momentum()),
                            ("signin", signin.sign_in(sgd_momentum(),
                                                      reset_every=args.reset_every))):
    variants[inner_name, "static"] = runner(inner, sparsity_lib.static())
    variants[inner_name, "rigl"] = runner(inner, sparsity_lib.rigl(
        params, sparsity=SPARSITY, end_step=end_step, update_every=period, distribution="erk"))
  rest = {k: [] for k in variants}  # seconds of a round's first period - 1 steps
  last = {k: [] for k in variants}  # seconds of its last step
  for _ in range(args.repeats):
    # The variants take turns in blocks of `--block` steps, so that each one's period spans
    # the same minutes as the others' (a period lasts minutes; other load changes faster).
    for k in variants:
      rest[k].append(0.0)
    for done in range(0, period - 1, args.block):
      for k, steps in variants.items():
        rest[k][-1] += steps(min(args.block, period - 1 - done))
    for k, steps in variants.items():  # The last step on its own: RigL's mask update.
      last[k].append(steps(1))
  total = {k: np.add(rest[k], last[k]) for k in variants}

  print(f"(a) whole train step, CIFAR ResNet-20, batch {args.batch_size}, {SPARSITY:.0%} ERK "
        f"random mask, {period} steps per round (one RigL mask update), {args.repeats} rounds, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
  print("    ratios: median over rounds [min-max]")
  for inner_name, label in (("sgd", "SGD+m"),
                            ("signin", f"Sign-In(SGD+m), reset_every={args.reset_every}")):
    s, r = (inner_name, "static"), (inner_name, "rigl")
    print(f"  {label}")
    rows = ((f"static, {period} steps", total[s], None),
            (f"RigL, {period} steps", total[r], f"{ratio(total[r], total[s])} (goal <= 1.03x)"),
            ("static, one ordinary step", last[s], None),
            ("RigL, the mask-update step", last[r], ratio(last[r], last[s], 2)),
            (f"RigL, the {period - 1} other steps", rest[r],
             f"{ratio(rest[r], rest[s])} (vs as many static steps: the cond and selects)"))
    for name, seconds, versus in rows:
      print(f"    {name:30s}{ms(seconds)}" + (f"   {versus}" if versus else ""))


def update_part(args):
  model = models.get_model("resnet50", num_classes=1000)
  params = init_params(model, (1, 224, 224, 3))["params"]
  num_params = sum(p.size for p in jax.tree.leaves(params))
  mask = jax.jit(lambda k, p: masks_lib.create_masks(k, p, SPARSITY, method="random",
                                                     distribution="erk"))(
      jax.random.PRNGKey(1), params)
  params = masks_lib.apply_mask(params, mask)
  keys = iter(jax.random.split(jax.random.PRNGKey(3), len(jax.tree.leaves(params))))
  grads = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape, p.dtype) * 0.01, params)
  schedule = sparsity_lib.rigl(params, sparsity=SPARSITY, end_step=10 * args.period,
                               update_every=args.period, distribution="erk")
  # The first update, as sparse_training calls it: index and step traced.
  new_masks = jax.jit(schedule.new_masks)
  index, t = jnp.asarray(0, jnp.int32), jnp.asarray(schedule.update_steps[0], jnp.int32)
  key = jax.random.PRNGKey(4)

  def mask_update():
    jax.block_until_ready(new_masks(index, t, mask, params, grads, key))

  def optimizer_update(inner):
    tx = sparsity_lib.sparse_training(inner, sparsity_lib.static(), mask)
    update = jax.jit(tx.update)
    state = [tx.init(params)]

    def call():
      updates, state[0] = update(grads, state[0], params)
      jax.block_until_ready(updates)
    return call

  calls = {"mask": mask_update, "sgd": optimizer_update(sgd_momentum()),
           "signin": optimizer_update(signin.sign_in(sgd_momentum(),
                                                     reset_every=args.reset_every))}
  for call in calls.values():  # warm-up (compiles)
    call()
  times = {k: [] for k in calls}
  for _ in range(args.repeats):
    for k, call in calls.items():
      start = time.perf_counter()
      call()
      times[k].append(time.perf_counter() - start)

  print(f"(b) ResNet-50 tree ({num_params / 1e6:.2f}M params), {SPARSITY:.0%} ERK, "
        f"{args.repeats} rounds; ratios: median over rounds [min-max]")
  print(f"    static sparse_training(SGD+m).update          {ms(times['sgd'])}")
  print(f"    static sparse_training(Sign-In(SGD+m)).update {ms(times['signin'])}")
  print(f"    RigL new_masks alone                          {ms(times['mask'])}   "
        f"{ratio(times['mask'], times['sgd'], 1)} of SGD+m, "
        f"{ratio(times['mask'], times['signin'], 1)} of Sign-In")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", choices=("all", "train_step", "update"), default="all")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--period", type=int, default=100,
                      help="RigL's update_every: steps per timed round (at least 2).")
  parser.add_argument("--block", type=int, default=10,
                      help="(a): steps a variant runs before the next one takes its turn.")
  parser.add_argument("--reset_every", type=int, default=1950,
                      help="Sign-In's re-split period (configs/cifar10_r20.py: 5 epochs).")
  args = parser.parse_args()
  if args.period < 2 or args.repeats < 1 or args.block < 1:
    parser.error("needs --period >= 2, --repeats >= 1 and --block >= 1.")
  if args.part in ("all", "train_step"):
    train_step_part(args)
  if args.part in ("all", "update"):
    update_part(args)


if __name__ == "__main__":
  main()
