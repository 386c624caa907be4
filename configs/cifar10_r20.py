"""CIFAR-10, ResNet-20, random ERK mask at 90 % sparsity, Sign-In: the paper's first setting.

    python main.py --config=configs/cifar10_r20.py --workdir=workdirs/cifar10_r20
    # Plain PaI (same mask, Sign-In off) and other sparsities, like for like:
    python main.py --config=configs/cifar10_r20.py --workdir=workdirs/cifar10_r20_pai \
        --config.signin.enabled=False
    python main.py --config=configs/cifar10_r20.py --workdir=workdirs/cifar10_r20_s95 \
        --config.sparsity=0.95
    # Dense-to-sparse training instead of the fixed mask (gmp, acdc, rigl, set), with Sign-In
    # (the default) or without it (--config.signin.enabled=False):
    python main.py --config=configs/cifar10_r20.py --workdir=workdirs/cifar10_r20_rigl \
        --config.schedule.method=rigl

From the paper (arXiv 2504.12801): the model and dataset, the sparsities 0.8 / 0.9 / 0.95, a
random mask, Sign-In with beta = 1 for every layer, SGD with momentum, and the reported top-1
accuracy: random mask 88.25 / 86.25 / 83.56 %, with Sign-In 89.37 / 87.83 / 84.74 %.
Our choice (the paper's values are not available to us; see docs and signin-method.md): the ERK
layer-wise distribution of the random mask, the re-split period (every 5 epochs), keeping the
factors' momentum at a re-split, 160 epochs, batch 128, peak learning rate 0.1 with cosine decay,
Nesterov momentum 0.9, weight decay 1e-4 on kernels, no label smoothing.

Not run on this machine (2 CPU cores): no runtime or accuracy has been measured with this config.
It expects CIFAR-10 prepared by TFDS (`tfds build cifar10`, or the first run downloads it).
"""

from configs import default


def get_config():
  config = default.get_config()  # only what differs from the defaults follows
  config.model = "resnet20"
  config.dataset = "cifar10"
  config.checkpoint_every_steps = 2000
  return config
