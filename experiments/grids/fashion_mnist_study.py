"""Issue 5's grid: static random masks with and without Sign-In, LeNet-300-100 on Fashion-MNIST.

    python experiments/sweep.py --grid experiments/grids/fashion_mnist_study.py --parallel 2
    python experiments/plot.py --results experiments/results/fashion_mnist_study \
        --out docs/figures/fashion_mnist_study \
        --layer_order dense1/kernel,dense2/kernel,classifier/kernel

Model: LeNet-300-100 (266,610 parameters) on Fashion-MNIST, 10 epochs, batch 128, SGD +
Nesterov momentum 0.9, 1 epoch of linear warmup to the peak learning rate, then cosine decay. Why
this model: the whole grid has to finish in about an hour on 2 CPU cores (a 10-epoch run takes
under a minute), and three dense layers of very different fan-in (784, 300, 100) show how sign
flips spread from input to output. Why these two values (learning rate 0.1,
weight decay 1e-4): they are the best of a 4 x 3 grid tuned for the baseline, PaI with a random
ERK mask at 90 %, on held-out training data (experiments/grids/fashion_mnist_tuning.py, results
in experiments/results/fashion_mnist_tuning/); every method below, Sign-In included, reuses
them without re-tuning.

Cells (3 seeds each, the same seeds 0, 1, 2 in every cell, so a seed gives the same init and,
at one sparsity and budget, the same mask with and without Sign-In):
* main: dense; PaI with a random mask, uniform and ERK budgets; the same masks with Sign-In
  (beta = 1, reset every epoch, inner state kept); sparsity 0.8, 0.9, 0.95, 0.98.
* ablation, all at 0.9 sparsity with the ERK mask: Sign-In without resets
  (reset_every_epochs=0); reset period 2 and 5 epochs (with the main cell's 1 epoch, three
  periods); inner optimizer state re-initialized at resets ('reinit' vs the main cell's 'keep');
  beta scaled to each layer's weight scale (``signin.beta_scale='weight_scale'``: layer l is
  re-split with m**2 - w**2 = mean of its kept initial weights squared, vs the main cell's
  absolute beta = 1 for every layer).

Runtime: 22 cells x 3 seeds = 66 runs; see docs/results.md for the measured wall time.
"""

CONFIG = "configs/fashion_mnist_quickstart.py"
# The best held-out pair of experiments/grids/fashion_mnist_tuning.py (PaI, random ERK, 90 %).
LEARNING_RATE = 0.1
WEIGHT_DECAY = 1e-4
SEEDS = [0, 1, 2]
SPARSITIES = (0.8, 0.9, 0.95, 0.98)
DISTRIBUTIONS = {"uniform": "uniform", "erk": "ERK"}
COMMON = {"model": "lenet300_100", "width": 300, "num_epochs": 10, "warmup_epochs": 1.0,
          "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "mask.method": "random"}
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
      "beta_weight_scale": ("beta scaled to each layer's initial weight scale",
                            {"signin.beta_scale": "weight_scale"}),
  }
  for key, (label, change) in ablations.items():
    cells.append(_cell(f"ablation_erk_signin_s0.9_{key}", f"PaI ERK + Sign-In, {label}",
                       {**ablation_mask, **SIGNIN, **change}, group="ablation"))
  return cells
