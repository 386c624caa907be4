"""What Sign-In costs, measured side by side in one run on this machine.

    python benchmarks/signin_cost.py                 # both parts
    python benchmarks/signin_cost.py --part=update   # (a) only

(a) The optimizer update alone (``tx.update`` + ``optax.apply_updates``, jitted) on the
    ImageNet ResNet-50 parameter tree (25.6M parameters): Sign-In around SGD + momentum +
    weight decay versus SGD + momentum + weight decay. Goal: at most 2.5x.
(b) A whole jitted train step (forward, backward, optimizer) of the CIFAR ResNet-20 at batch
    128 with a 90 % ERK random mask: PaI + Sign-In versus PaI, through the trainer's own
    ``train_step``. Goal: at most 1.02x.
It also prints the optimizer-state bytes per parameter (goal: at most 3 floats per
reparameterized weight beyond the parameter itself).

Timing: the variants run in turn, ``--repeats`` rounds after a warm-up. Each ratio is the
median over rounds of the ratio within a round (printed with its quartiles), so that load from
other processes, which changes over seconds, hits both sides of a ratio alike.
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


def sgd_momentum_wd():
  return optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))


def time_alternately(calls, repeats):
  """Runs each callable once (warm-up), then `repeats` rounds in turn; seconds per round."""
  for call in calls.values():
    call()
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - start)
  return {name: np.asarray(t) for name, t in times.items()}


def ms(times, name):
  return f"{np.median(times[name]) * 1e3:8.1f} ms"


def ratio(times, name, base, digits=2):
  """Median and quartiles over rounds of the within-round ratio name / base."""
  q25, q50, q75 = np.percentile(times[name] / times[base], [25, 50, 75])
  return f"{q50:.{digits}f}x [{q25:.{digits}f}-{q75:.{digits}f}]"


def state_bytes(opt_state) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(opt_state))


def update_only(repeats):
  model = models.get_model("resnet50", num_classes=1000)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
  keys = iter(jax.random.split(jax.random.PRNGKey(0), len(jax.tree.leaves(shapes["params"]))))
  params = jax.tree.map(lambda s: jax.random.normal(next(keys), s.shape, s.dtype) * 0.05,
                        shapes["params"])
  num_params = sum(p.size for p in jax.tree.leaves(params))
  grads = jax.tree.map(lambda p: p * 0.01, params)

  def runner(tx):
    state = [params, tx.init(params)]

    @jax.jit
    def step(p, s, g):
      updates, s = tx.update(g, s, p)
      return optax.apply_updates(p, updates), s

    def call():
      state[0], state[1] = step(state[0], state[1], grads)
      jax.block_until_ready(state[0])
    return call, state

  plain, plain_state = runner(sgd_momentum_wd())
  # An ordinary step (no reset within the timed steps) and a step that re-splits (every step).
  signed, signed_state = runner(signin.sign_in(sgd_momentum_wd(), reset_every=10**9))
  resetting, _ = runner(signin.sign_in(sgd_momentum_wd(), reset_every=1))
  # Without resets there is no lax.cond: what carrying m through it costs on ordinary steps.
  never, _ = runner(signin.sign_in(sgd_momentum_wd(), reset_every=None))
  times = time_alternately(
      {"sgd": plain, "signin": signed, "reset": resetting, "never": never}, repeats)
  reparameterized = sum(p.size for p in jax.tree.leaves(params) if p.ndim >= 2)
  extra = state_bytes(signed_state[1]) - state_bytes(plain_state[1])
  print(f"(a) optimizer update, ResNet-50 tree ({num_params / 1e6:.2f}M params, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s))")
  print("    ratios: median over rounds [quartiles]")
  print(f"    SGD+momentum+wd                    {ms(times, 'sgd')}")
  print(f"    Sign-In(SGD+m+wd), ordinary step   {ms(times, 'signin')}   "
        f"{ratio(times, 'signin', 'sgd')} (goal <= 2.5x)")
  print(f"    Sign-In(SGD+m+wd), reset step      {ms(times, 'reset')}   "
        f"{ratio(times, 'reset', 'sgd')} (once every reset_every steps)")
  print(f"    Sign-In(SGD+m+wd), reset_every=None{ms(times, 'never')}   "
        f"{ratio(times, 'never', 'sgd')} (no resets: what the reset select costs)")
  print(f"    optimizer state: SGD+m {state_bytes(plain_state[1]) / num_params:.2f} B/param, "
        f"Sign-In {state_bytes(signed_state[1]) / num_params:.2f} B/param; per reparameterized "
        f"weight Sign-In keeps {state_bytes(signed_state[1]) / 4 / reparameterized:.2f} floats "
        f"beyond the parameter (m and the two momenta; goal <= 3), "
        f"{extra / 4 / reparameterized:.2f} more than SGD+m")


def train_step_ratio(repeats):
  # The trainer's own optimizer and train step, as configs/cifar10_r20.py builds them.
  from configs import cifar10_r20  # pylint: disable=g-import-not-at-top
  from signin_jax import run_start, train_steps  # pylint: disable=g-import-not-at-top  (needs flax)
  from signin_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = cifar10_r20.get_config()
  # CIFAR-10 itself is not needed (nor available here): a random batch, and the steps per
  # epoch that its training split gives.
  dataset = input_pipeline.DATASETS[config.dataset]
  batch_size, num_classes = config.batch_size, dataset.num_classes
  steps_per_epoch = dataset.num_train // batch_size
  model = run_start.create_model(config, num_classes=num_classes)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + dataset.image_shape),
                         train=False)
  mask = masks_lib.create_masks(jax.random.PRNGKey(1), variables["params"], 0.9,
                                method="random", distribution="erk")
  params = masks_lib.apply_mask(variables["params"], mask)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(batch_size,) + dataset.image_shape),
                                jnp.float32),
           "label": jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32)}

  def runner(signin_enabled):
    config.signin.enabled = signin_enabled
    tx = train_steps.create_optimizer(config, steps_per_epoch=steps_per_epoch,
                                num_steps=config.num_epochs * steps_per_epoch, masks=mask)
    state = [train_steps.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                              batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                              rng=jax.random.PRNGKey(2))]
    step = jax.jit(lambda s, b: train_steps.train_step(s, b, apply_fn=model.apply, tx=tx,
                                                 num_classes=num_classes, label_smoothing=0.0))

    def call():
      state[0], metrics = step(state[0], batch)
      jax.block_until_ready(metrics)
    return call

  pai, signed = runner(False), runner(True)
  times = time_alternately({"pai": pai, "signin": signed}, repeats)
  print(f"(b) whole train step, CIFAR ResNet-20 (configs/cifar10_r20.py optimizer), batch "
        f"{batch_size}, 90 % ERK mask")
  print(f"    PaI                    {ms(times, 'pai')} "
        f"({batch_size / np.median(times['pai']):.0f} images/s)")
  print(f"    PaI + Sign-In          {ms(times, 'signin')}")
  print(f"    ratio                  {ratio(times, 'signin', 'pai', digits=3)} "
        "(median over rounds [quartiles]; goal <= 1.02x)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", choices=("all", "update", "train_step"), default="all")
  parser.add_argument("--repeats", type=int, default=30)
  args = parser.parse_args()
  if args.part in ("all", "update"):
    update_only(args.repeats)
  if args.part in ("all", "train_step"):
    train_step_ratio(args.repeats)


if __name__ == "__main__":
  main()
