"""Quickstart: Sign-In on Fashion-MNIST at 90 % sparsity (random ERK mask), a few minutes on a CPU.

    python main.py --config=configs/fashion_mnist_quickstart.py --workdir=workdirs/quickstart

(or `bash launch/quickstart.sh`, which installs everything first). Fashion-MNIST is prepared on
first use: from /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist) when present,
else through TFDS's download.

Measured with the command above pinned to one core (`taskset -c 1 python main.py ...`; commit
94b5929, jax 0.10.2 on CPU, with main.py's CPU settings, README: set-up) on this project's
machine, a 2-core AMD EPYC, no GPU, 2026-12-07, shared with other jobs (load average 7-9 on its
2 cores, so the times are upper bounds), Fashion-MNIST already prepared: 10 min 28 s end to end
(9 min 51 s in training and evaluation, 2340 steps), test accuracy 90.13 %, measured sparsity
of the prunable layers 90.00 %, 35.64 % of the kept weights with another sign than at
initialization. The same run with the settings off (`SIGNIN_JAX_CPU_SETTINGS=0`, same commit,
right after): test accuracy 90.23 % (the XLA flag changes float rounding), 21 min 45 s end to
end under a heavier load (4.7 rising to 14), so its time says little. Earlier: 90.09 % and
1 min 43 s end to end on both cores of the idle machine (`bash launch/quickstart.sh`, commit
0e00446, before the CPU settings existed).

Each mask schedule, with `--config.schedule.method=<method>` and Sign-In on (default) / off
(`--config.signin.enabled=False`), one run each (seed 0), commit 73c691f, same machine but
shared with other jobs (wall times are upper bounds): test accuracy, measured sparsity 90.00 %
in every run:
  rigl 90.12 / 90.00 %, acdc 88.94 / 88.66 %, gmp 89.56 / 88.95 %, set 90.45 / 90.57 %;
  2 to 4 min each. One seed, no tuning: not evidence for or against Sign-In (docs/results.md).

2:4 structured sparsity (N:M along the input channels; the 1-channel stem conv is kept dense)
trained straight-through with SR-STE (README, "Structured sparsity"; not run to the end here):

    python main.py --config=configs/fashion_mnist_quickstart.py --workdir=workdirs/quickstart_2to4 \
      --config.mask.structure=n:m --config.mask.n=2 --config.mask.m=4 --config.sparsity=0.5 \
      --config.mask.method=magnitude --config.schedule.method=sr_ste
"""

from configs import default


def get_config():
  config = default.get_config()  # only what differs from the defaults follows
  # A small CNN (conv 16 -> conv 32 -> dense 64), the kind of layer Sign-In is about, and heavy
  # enough per step that the input pipeline costs nothing noticeable (LeNet-300-100 is so light
  # that feeding it costs ~10 %: benchmarks/pipeline_throughput.py --config.model=lenet300_100).
  config.model = "small_cnn"
  config.width = 16
  config.dataset = "fashion_mnist"
  config.num_epochs = 5
  config.signin.reset_every_epochs = 1
  config.checkpoint_every_steps = 500
  return config
