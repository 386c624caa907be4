"""ImageNet, ResNet-50 v1.5, random ERK mask at 90 % sparsity, Sign-In: the paper's third setting.

    python main.py --config=configs/imagenet_r50.py --workdir=gs://BUCKET/imagenet_r50 \
        --config.data_dir=gs://BUCKET/tensorflow_datasets
    # Multi-host (TPU pod slice / SLURM): the same command on every host, plus
    #   --config.distributed=True
    # Plain PaI with the same mask, or another sparsity:
    #   --config.signin.enabled=False      --config.sparsity=0.95
    # Dense-to-sparse training, with Sign-In (default) or --config.signin.enabled=False:
    #   --config.schedule.method=rigl      # from the ERK mask; updates every 100 steps to 75 %
    #   --config.schedule.method=acdc      # dense 10 epochs, 5-epoch phases, sparse last 10

From the paper (arXiv 2504.12801): the model and dataset, the sparsities 0.8 / 0.9 / 0.95, a
random mask, Sign-In with beta = 1 for every layer, SGD with momentum, and the reported top-1
accuracy: random mask 73.87 / 71.56 / 68.72 %, with Sign-In 74.12 / 72.19 / 69.38 %; with
dense-to-sparse training at 80 / 90 / 95 %, RigL 75.02 / 73.70 / 71.89 % and RigL + Sign-In
75.02 / 74.27 / 73.07 %, AC/DC 75.83 / 74.75 / 72.59 % and AC/DC + Sign-In 75.90 / 74.74 /
72.88 %.
Our choice (the paper's values are not available to us): the ERK distribution of the random
mask, the re-split period (every 5 epochs), keeping the factors' momentum at a re-split, 100
epochs, global batch 1024, peak learning rate 0.4 (0.1 per 256 examples) after a 5-epoch linear
warmup, cosine decay, Nesterov momentum 0.9, weight decay 1e-4 on kernels, label smoothing 0.1,
bfloat16 compute with float32 parameters, `jit` data parallelism over all devices. For the
schedules, the defaults of configs/default.py: RigL's published Delta T = 100, alpha = 0.3
cosine-annealed, end at 75 % (Evci et al. 2020, whose batch was 4096, not 1024); AC/DC's phases
as we read Peste et al. 2021 for 100 epochs; every mask update is also a gradient step.

Not run on this machine (2 CPU cores): no runtime or accuracy has been measured with this config.
ImageNet cannot be downloaded by TFDS: place ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
in <data_dir>/downloads/manual/ and run `tfds build imagenet2012 --data_dir=<data_dir>` once.
"""

from configs import default


def get_config():
  config = default.get_config()  # only what differs from the defaults follows
  config.model = "resnet50"
  config.dataset = "imagenet2012"
  config.num_epochs = 100
  config.batch_size = 1024
  config.learning_rate = 0.4
  config.warmup_epochs = 5.0
  config.label_smoothing = 0.1
  config.dtype = "bfloat16"
  config.checkpoint_every_steps = 5000
  return config
