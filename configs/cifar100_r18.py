"""CIFAR-100, ResNet-18 (CIFAR stem), random ERK mask at 90 % sparsity, Sign-In: the paper's second setting.

    python main.py --config=configs/cifar100_r18.py --workdir=workdirs/cifar100_r18
    # Plain PaI with the same mask, or another sparsity:
    python main.py --config=configs/cifar100_r18.py --workdir=workdirs/cifar100_r18_pai \
        --config.signin.enabled=False
    python main.py --config=configs/cifar100_r18.py --workdir=workdirs/cifar100_r18_s80 \
        --config.sparsity=0.8
    # Dense-to-sparse training instead of the fixed mask (gmp, acdc, rigl, set), with Sign-In
    # (the default) or without it (--config.signin.enabled=False):
    python main.py --config=configs/cifar100_r18.py --workdir=workdirs/cifar100_r18_rigl \
        --config.schedule.method=rigl

From the paper (arXiv 2504.12801): the model and dataset, the sparsities 0.8 / 0.9 / 0.95, a
random mask, Sign-In with beta = 1 for every layer, SGD with momentum, and the reported top-1
accuracy: random mask 73.95 / 72.96 / 71.36 %, with Sign-In 75.32 / 73.94 / 72.51 %.
Our choice (the paper's values are not available to us): the ERK distribution of the random
mask, the re-split period (every 5 epochs), keeping the factors' momentum at a re-split, 200
epochs, batch 128, peak learning rate 0.1 with cosine decay, Nesterov momentum 0.9, weight decay
5e-4 on kernels, no label smoothing.

Not run on this machine (2 CPU cores): no runtime or accuracy has been measured with this config.
It expects CIFAR-100 prepared by TFDS (`tfds build cifar100`, or the first run downloads it).
"""

from configs import default


def get_config():
  config = default.get_config()  # only what differs from the defaults follows
  config.model = "resnet18_cifar"
  config.dataset = "cifar100"
  config.num_epochs = 200
  config.weight_decay = 5e-4
  config.checkpoint_every_steps = 2000
  return config
