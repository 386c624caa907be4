"""Does the input pipeline keep up? Quickstart training throughput, side by side in one run.

    python benchmarks/pipeline_throughput.py [--steps=400] [--config=configs/X.py]
    python benchmarks/pipeline_throughput.py --config.model=lenet300_100   # any override

Runs the config's jitted train step (the trainer's own ``train_step`` under the config's
parallelism) twice, alternating blocks of ``--block`` steps:
  * fed by the real pipeline: ``input_pipeline.train_iterator`` (TFDS, augmentation, batching)
    moved to the devices by the trainer's ``put_batch`` through its prefetching;
  * fed one device-resident batch, over and over (no input work at all).
The model, masks, optimizer and initial state are the trainer's own (``create_run_start``). It
prints images/s of both and their ratio (goal: at least 0.95). The dataset is prepared first if
needed, as main.py does.
"""

from signin_jax import cpu_speed

cpu_speed.reexec_with_cpu_settings()  # Time what main.py runs (README: set-up).

# pylint: disable=g-import-not-at-top,wrong-import-position
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from signin_jax import config_validation
from signin_jax import input_pipeline
from signin_jax import prepare_data
from signin_jax import parallel
from signin_jax import run_start


_CONFIG = config_flags.DEFINE_config_file("config", "configs/fashion_mnist_quickstart.py",
                                          "Training config.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 400, "Timed steps of each kind.")
_BLOCK = flags.DEFINE_integer("block", 50, "Steps per alternating block.")


def main(argv):
  del argv
  config = _CONFIG.value
  config_validation.validate_config(config)
  prepare_data.ensure_prepared(config.dataset, config.data_dir)  # As main.py does.
  run = run_start.create_run_start(config)  # The trainer's model, masks, optimizer, state.
  parallelism = parallel.create_parallelism(config, model=run.model, tx=run.tx,
                                         num_classes=run.dataset.num_classes)
  mesh_state = parallelism.put_state(parallel.replicate_from_host(
      jax.device_get(run.state), parallelism.replicated))
  states = {"pipeline": mesh_state, "resident": mesh_state}

  batches = parallel.prefetch(map(parallelism.put_batch, input_pipeline.train_iterator(
      config.dataset, global_batch_size=config.batch_size, seed=config.seed, **run.data_kwargs)))
  resident = next(batches)
  feeds = {"pipeline": lambda: next(batches), "resident": lambda: resident}

  def run_block(kind, n):
    state = states[kind]
    start = time.perf_counter()
    for _ in range(n):
      state, step_metrics = parallelism.train_step(state, feeds[kind]())
    jax.block_until_ready(step_metrics)
    states[kind] = state
    return time.perf_counter() - start

  for kind in feeds:  # compile and warm up both
    run_block(kind, 5)
  seconds = {kind: 0.0 for kind in feeds}
  blocks = max(_STEPS.value // _BLOCK.value, 1)
  for _ in range(blocks):
    for kind in feeds:
      seconds[kind] += run_block(kind, _BLOCK.value)
  images = blocks * _BLOCK.value * config.batch_size
  rate = {kind: images / s for kind, s in seconds.items()}
  print(f"{config.model} on {config.dataset}, batch {config.batch_size}, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"parallelism={config.parallelism}")
  print(f"  real input pipeline    {rate['pipeline']:10,.0f} images/s")
  print(f"  device-resident batch  {rate['resident']:10,.0f} images/s")
  print(f"  ratio                  {rate['pipeline'] / rate['resident']:10.3f}   (goal >= 0.95)")


if __name__ == "__main__":
  app.run(main)
