"""Issue 19's grid (docs/results.md, part 3): the paper's claims on a residual conv net.

    python experiments/sweep.py --grid experiments/grids/fashion_mnist_resnet.py
    python experiments/sweep.py --grid experiments/grids/fashion_mnist_resnet.py --table_only

Setting: ``resnet_narrow`` (the CIFAR ResNet-20 layout: a 3x3 stem, 3 stages of 3 basic
residual blocks, BatchNorm after every conv, 8 / 16 / 32 channels, projection shortcuts where the width
changes: 21 masked conv kernels and the classifier; 68,642 parameters) on Fashion-MNIST (60,000 training images, the 10,000 test
images), 5 epochs, batch 128, SGD + Nesterov momentum 0.9, learning rate 0.1 with cosine decay
to 0, weight decay 1e-4 on the kernels (the project's ResNet recipe, configs/default.py, not
re-tuned), no augmentation (``config.augment`` left at Fashion-MNIST's default: in 5 epochs a
CIFAR-style crop and flip would only slow the dense model down), the CPU settings of
signin_jax/cpu_speed.py on. Masks: random, ERK budget, the paper's PaI baseline.

How the size was chosen (2-core AMD EPYC, 2026-12-07, main.py pinned to one core while other
jobs loaded the machine): a ResNet-20 (16 / 32 / 64 channels) train step ran at 83-90 images/s,
``resnet_narrow`` at 105-112 images/s: on this CPU the narrow network is step-overhead bound,
so halving the width buys little, and the budget (blocks 1 and 2: 24 runs in about 12
CPU-hours, i.e. about 30 minutes a run) allows about 5 epochs of the narrow one on an idle
core. The dense cell's seed 0 ran first (commit acd989e ran the cells in another order); then
the 95 % PaI cells: if dense and 95 % show no gap, the grid is chosen again before the rest of
the budget is spent (docs/results.md, part 3, says what was found).

Cells (3 paired seeds: a seed gives the same initialization and the same random ERK mask with
and without Sign-In), in the order the sweep runs them, the issue's priorities:
1. PaI against PaI + Sign-In (beta = 1, re-split every epoch, momentum kept: parts 1 and 2's
   setting) at 95 % and 90 % (block 1);
2. RigL against RigL + Sign-In at 90 % and 95 % (block 2; RigL's defaults as fractions of the
   run: update every 100 steps until 75 %, drop fraction 0.3 cosine-annealed);
3. at 90 %: Sign-In without resets (block 3);
4. dense (block 4; its seed 0 ran first, as the reference for the gap check above);
5. PaI with and without Sign-In at 80 % and 98 % (block 1's "if the budget allows").
Every run logs per-layer sign flips (summary.json), so the per-stage flip table needs no extra
cells.
"""

CONFIG = "configs/fashion_mnist_quickstart.py"
SEEDS = [0, 1, 2]
COMMON = {"model": "resnet_narrow", "width": 8, "num_epochs": 5, "batch_size": 128,
          "learning_rate": 0.1, "weight_decay": 1e-4, "warmup_epochs": 0.0,
          "mask.method": "random", "mask.distribution": "erk"}
SIGNIN = {"signin.enabled": True, "signin.beta": 1.0, "signin.reset_every_epochs": 1,
          "signin.inner_state_at_reset": "keep"}
NO_SIGNIN = {"signin.enabled": False}


def _cell(name, method, overrides, group="main"):
  return {"name": name, "config": CONFIG, "overrides": {**COMMON, **overrides}, "seeds": SEEDS,
          "method": method, "group": group}


def _pai_pair(sparsity):
  return [_cell(f"pai_erk_s{sparsity}", "PaI ERK", {"sparsity": sparsity, **NO_SIGNIN}),
          _cell(f"pai_erk_signin_s{sparsity}", "PaI ERK + Sign-In",
                {"sparsity": sparsity, **SIGNIN})]


def get_grid():
  cells = _pai_pair(0.95) + _pai_pair(0.9)
  for sparsity in (0.9, 0.95):
    rigl = {"sparsity": sparsity, "schedule.method": "rigl"}
    cells.append(_cell(f"rigl_s{sparsity}", "RigL", {**rigl, **NO_SIGNIN}))
    cells.append(_cell(f"rigl_signin_s{sparsity}", "RigL + Sign-In", {**rigl, **SIGNIN}))
  cells.append(_cell("ablation_erk_signin_s0.9_noreset", "PaI ERK + Sign-In, no resets",
                     {"sparsity": 0.9, **SIGNIN, "signin.reset_every_epochs": 0},
                     group="ablation"))
  cells.append(_cell("dense", "Dense", {"sparsity": 0.0, **NO_SIGNIN}))
  cells += _pai_pair(0.8) + _pai_pair(0.98)
  return cells
