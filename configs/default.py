"""Shared defaults for every training config; the other configs start from `get_config()`.

Not meant to be run on its own (it names no experiment); every field is documented here once.
The values below are the CIFAR-10 / ResNet-20 recipe (see `cifar10_r20.py` for the run):

    python main.py --config=configs/cifar10_r20.py --workdir=workdirs/cifar10_r20

Command-line overrides work for every field, e.g. `--config.sparsity=0.95 --config.signin.enabled=False`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Model and data. `width` scales the model's channels/units (None: the model's own default).
  config.model = "resnet20"
  config.width = config_dict.placeholder(int)
  config.dataset = "cifar10"
  config.data_dir = config_dict.placeholder(str)  # None: TFDS's default (~/tensorflow_datasets).
  # TFDS (sub-)splits to train and evaluate on; None: the dataset's own train and test splits.
  # For tuning, hold out part of the training split, e.g. 'train[:50000]' and 'train[50000:]'
  # (the summary's test_* numbers are then measured on the held-out part).
  config.train_split = config_dict.placeholder(str)
  config.eval_split = config_dict.placeholder(str)
  # Training augmentation: None keeps the dataset's default (CIFAR and ImageNet: on; Fashion-MNIST:
  # off); True on Fashion-MNIST applies CIFAR's pad-4 random crop and horizontal flip.
  config.augment = config_dict.placeholder(bool)

  # Length. num_train_steps = -1 derives it as num_epochs * steps_per_epoch.
  config.num_epochs = 160
  config.num_train_steps = -1
  config.batch_size = 128  # Global: over all devices of all processes (README: Scale-out).

  # Optimizer: weight decay (on conv/dense kernels, or on both Sign-In factors of them), then SGD.
  # Peak learning rate, reached after the warmup, for the global batch above. Neither depends on
  # the number of hosts or devices; to change the global batch, set the learning rate with it.
  config.learning_rate = 0.1
  config.lr_schedule = "cosine"  # 'cosine' (to 0 at the end) or 'step'.
  config.lr_step_epochs = (80, 120)  # 'step' only: multiply by lr_step_factor at these epochs.
  config.lr_step_factor = 0.1
  config.warmup_epochs = 0.0  # Linear warmup from 0 to learning_rate.
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 1e-4
  config.label_smoothing = 0.0

  config.seed = 0

  # Sparsity. 0.0 trains the dense baseline through the same code path.
  config.sparsity = 0.9
  config.mask = ml_collections.ConfigDict()
  config.mask.method = "random"  # How entries are chosen within a layer.
  config.mask.distribution = "erk"  # How the density budget is split across layers.
  config.mask.scope = "layer"
  config.mask.dense_layers = ()  # Regexes of parameter paths kept dense.
  config.mask.sparsity_aware_init = False  # Rescale the init to the kept fan-in.
  # The mask's structure (signin_jax/structured.py): 'unstructured' (any entries), 'n:m' (n of
  # every m consecutive entries along the contraction axis, axis -2 of Dense [in, out] and HWIO
  # kernels; config.sparsity must be 1 - n/m; layers whose contraction size is not a multiple of
  # m are kept dense), 'channel' (whole output channels, budget in channels; the classifier is
  # never pruned) or 'block' (tiles of block_shape = (rows, cols) over the [fan_in, out] view).
  config.mask.structure = "unstructured"
  config.mask.n = 2  # n:m
  config.mask.m = 4  # n:m
  config.mask.block_shape = (4, 4)  # block: (rows over fan_in, columns over outputs).

  # How the mask changes during training (signin_jax.sparsity). Times are fractions of the run
  # (of num_train_steps updates), so a schedule is complete for any run length.
  #   'static': the mask chosen at initialization (config.mask) is kept: pruning at init (PaI).
  #   'gmp':  gradual magnitude pruning (Zhu and Gupta 2017) from the dense network: sparsity
  #           s_f + (s_i - s_f) (1 - (t - start) / (end - start))**3 with s_i =
  #           initial_sparsity and s_f = config.sparsity, pruning the smallest |theta| every
  #           update_every_steps from `start` to `end`, with config.mask.distribution and
  #           config.mask.scope ('layer' or 'global').
  #   'acdc': AC/DC (Peste et al. 2021) from the dense network: dense `warmup`, then sparse and
  #           dense phases of `phase` each (top-|theta| masks at config.sparsity), then a sparse
  #           `final` fine-tune.
  #   'rigl': RigL (Evci et al. 2020) from config.mask's initial mask: every update_every_steps
  #           from `start` to `end`, each layer drops drop_fraction (cosine-annealed) of its
  #           weights with the smallest |theta| and grows as many with the largest dense |grad|.
  #   'set':  SET (Mocanu et al. 2018): as 'rigl', growing at random.
  #   'ste', 'sr_ste': straight-through training (signin_jax/straight_through.py): the dense
  #           weights live in the optimizer state (starting at the dense initialization, the
  #           first step masked by config.mask), the gradient at the masked parameters
  #           updates them (SR-STE, Zhou et al. 2021: plus sr_ste_lambda * (1 - mask) * w), and
  #           the mask is recomputed from them every step in config.mask.structure.
  # With a structure other than 'unstructured', 'gmp' is refused and the other methods keep the
  # structure (README, "Structured sparsity").
  # Dropped and grown weights restart from 0 with zeroed optimizer state (Sign-In: m =
  # sqrt(beta)); config.signin.enabled combines with every method.
  config.schedule = ml_collections.ConfigDict()
  config.schedule.method = "static"
  config.schedule.update_every_steps = 100  # gmp, rigl, set (RigL's Delta T).
  config.schedule.start = 0.0  # gmp, rigl, set: first update, as a fraction of the run.
  config.schedule.end = 0.75  # gmp: target reached; rigl, set: last update (RigL: 75 %).
  config.schedule.initial_sparsity = 0.0  # gmp: s_i.
  config.schedule.drop_fraction = 0.3  # rigl, set: alpha (RigL).
  config.schedule.drop_fraction_anneal = "cosine"  # rigl, set: 'cosine' or 'constant'.
  # acdc, fractions of the run; ours from Peste et al.'s 100-epoch ImageNet schedule (10 dense
  # warm-up epochs, 5-epoch phases, 10 final sparse epochs).
  config.schedule.warmup = 0.1
  config.schedule.phase = 0.05
  config.schedule.final = 0.1
  config.schedule.sr_ste_lambda = 2e-4  # sr_ste: the decay of the pruned weights (Zhou et al.).

  # Start from another run's artifacts (signin_jax/transfer.py): its mask at the end of epoch
  # mask_epoch (-1: its final mask) and, per kept weight, theta = sign * magnitude with signs
  # 'init' (this run's own init), 'learned' (the source's at signs_epoch) or 'random' (+-1),
  # and magnitudes 'init', 'learned' (the source's |theta| at magnitudes_epoch) or 'random'
  # (an independent init draw). The source must have exported those epochs (export_epochs
  # below; -1 is final_weights.npz); config.sparsity must equal its mask's. Schedules: 'static',
  # or 'rigl' / 'set' starting from the transferred mask, which then must have config.mask's
  # per-layer budget counts (a fresh start refuses other counts, naming the layer).
  config.init_from = ml_collections.ConfigDict()
  config.init_from.workdir = config_dict.placeholder(str)  # None: an ordinary fresh start.
  config.init_from.mask_epoch = -1
  config.init_from.signs = "init"
  config.init_from.signs_epoch = -1
  config.init_from.magnitudes = "init"
  config.init_from.magnitudes_epoch = -1
  # Epochs whose end writes weights/epoch_<k>.npz (params, BatchNorm statistics, masks; 0: the
  # initialization), e.g. (30,) for a later run's init_from.signs_epoch=30.
  config.export_epochs = ()

  # Sign-In (theta = m * w, re-split every reset_every_epochs epochs with m**2 - w**2 = beta).
  config.signin = ml_collections.ConfigDict()
  config.signin.enabled = True
  config.signin.beta = 1.0
  # 'absolute': every layer is re-split with m**2 - w**2 = beta (the paper). 'weight_scale':
  # layer l with beta * mean(theta_l**2) over its unmasked weights at initialization.
  config.signin.beta_scale = "absolute"
  config.signin.reset_every_epochs = 5  # 0: never re-split.
  config.signin.inner_state_at_reset = "keep"  # 'keep' or 'reinit' the factors' momentum.

  # Devices. parallelism: 'jit' (Mesh + NamedSharding) or 'pmap'. dtype: compute dtype
  # ('float32' or 'bfloat16'); parameters and optimizer state are always float32.
  config.parallelism = "jit"
  config.dtype = "float32"
  # Multi-process (several hosts, or one process per GPU): distributed=True joins the job via
  # jax.distributed.initialize(). The next three, left at None, are detected from the cluster
  # (Cloud TPU pod, SLURM, Open MPI); set all three elsewhere, e.g. 'host0:1234', 2, 0 / 1.
  config.distributed = False
  config.distributed_coordinator = config_dict.placeholder(str)  # 'host:port' of process 0.
  config.num_processes = config_dict.placeholder(int)
  config.process_id = config_dict.placeholder(int)  # This process: 0 .. num_processes - 1.

  # Bookkeeping.
  config.eval_every_epochs = 1
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  return config
