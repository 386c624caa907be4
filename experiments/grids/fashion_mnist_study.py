"""Issue 5's grid: static random masks with and without Sign-In, LeNet-300-100 on Fashion-MNIST.

    python experiments/sweep.py --grid experiments/grids/fashion_mnist_study.py --parallel 2
    python experiments/plot.py --results experiments/results/fashion_mnist_study \
        --out docs/figures/fashion_mnist_study \
        --layer_order dense1/kernel,dense2/kernel,classifier/kernel

Model: LeNet-300-100 (266k weights), 10 epochs, batch 128, SGD + Nesterov momentum 0.9, cosine
learning rate from 0.1, weight decay 1e-4: the recipe of `configs/fashion_mnist_quickstart.py`,
used unchanged for every method (this grid does not tune it; the baseline's learning rate and
weight decay are reused for Sign-In).

Cells (3 seeds each, the same seeds 0, 1, 2 in every cell, so a seed gives the same init and,
at one sparsity and budget, the same mask with and without Sign-In):
* main: dense; PaI with a random mask, uniform and ERK budgets; the same masks with Sign-In
  (beta = 1, reset every epoch, inner state kept); sparsity 0.8, 0.9, 0.95, 0.98.
* ablation, all at 0.9 sparsity with the ERK mask: Sign-In without resets
  (reset_every_epochs=0); reset period 2 and 5 epochs (with the main cell's 1 epoch, three
  periods); inner optimizer state re-initialized at resets ('reinit' vs the main cell's 'keep').
  Beta scaled to each layer's weight scale is LEFT OUT: `signin.sign_in` accepts a per-layer
  beta, but the trainer's config has only the scalar `signin.beta`, so it cannot be set from a
  config.

Runtime, measured: one 10-epoch run (ERK, 90 %, Sign-In) took 54 s end to end (44 s inside the
trainer, the rest start-up) on this 2-core machine while other work was running; the grid has
21 cells x 3 seeds = 63 runs, about 57 min one after another.
"""

CONFIG = "configs/fashion_mnist_quickstart.py"
SEEDS = [0, 1, 2]
SPARSITIES = (0.8, 0.9, 0.95, 0.98)
DISTRIBUTIONS = {"uniform": "uniform", "erk": "ERK"}
COMMON = {"model": "lenet300_100", "num_epochs": 10, "learning_rate": 0.1, "weight_decay": 1e-4,
          "mask.method": "random"}
SIGNIN = {"signin.enabled": True, "signin.beta": 1.0, "signin.reset_every_epochs": 1,
          "signin.inner_state_at_reset": "keep"}


def _cell(name, method, overrides, group="main"):
  return {"name": name, "config": CONFIG, "overrides": {**COMMON, **overrides}, "seeds": SEEDS,
          "method": method, "group": group}


def get_grid():
  cells = [_cell("dense", "Dense", {"sparsity": 0.0, "signin.enabled": False})]
  for key, label in DISTRIBUTIONS.items():
    for sparsity in SPARSITIES:
      mask = {"sparsity": sparsity, "mask.distribution": key}
      cells.append(_cell(f"pai_{key}_s{sparsity}", f"PaI {label}",
                         {**mask, "signin.enabled": False}))
      cells.append(_cell(f"pai_{key}_signin_s{sparsity}", f"PaI {label} + Sign-In",
                         {**mask, **SIGNIN}))
  ablation_mask = {"sparsity": 0.9, "mask.distribution": "erk"}
  ablations = {
      "noreset": ("no resets", {"signin.reset_every_epochs": 0}),
      "reset2": ("reset every 2 epochs", {"signin.reset_every_epochs": 2}),
      "reset5": ("reset every 5 epochs", {"signin.reset_every_epochs": 5}),
      "reinit": ("inner state reinit at reset", {"signin.inner_state_at_reset": "reinit"}),
  }
  for key, (label, change) in ablations.items():
    cells.append(_cell(f"ablation_erk_signin_s0.9_{key}", f"PaI ERK + Sign-In, {label}",
                       {**ablation_mask, **SIGNIN, **change}, group="ablation"))
  return cells
