"""Issue 11's grid: Sign-In with dense-to-sparse training, and "signs are sufficient".

    python experiments/sweep.py --grid experiments/grids/fashion_mnist_dst.py --parallel 2
    python experiments/sweep.py --grid experiments/grids/fashion_mnist_dst.py --table_only

Setting: the same as experiments/grids/fashion_mnist_study.py (LeNet-300-100 on Fashion-MNIST,
10 epochs, batch 128, SGD + Nesterov momentum 0.9 with 1 warmup epoch and cosine decay, the
learning rate 0.1 and weight decay 1e-4 tuned there for PaI and reused here without re-tuning,
ERK budget, seeds 0, 1, 2), so its PaI and PaI + Sign-In rows (cells pai_erk_s*, and dense) are
this study's too. Why this model rather than the small CNN: the part-1 rows are reused as they
are, and the whole grid (126 runs) fits in about an hour at --parallel 2.

Cells (3 paired seeds each: a seed gives the same initialization, and for RigL and SET the same
initial random ERK mask, with and without Sign-In):
* main: GMP, AC/DC, RigL, SET, each without and with Sign-In (beta = 1, re-split every epoch,
  momentum kept: part 1's setting), at sparsity 0.9, 0.95 and 0.98, with the schedule defaults
  of configs/default.py as fractions of the 10 epochs (GMP: prune every 100 steps from 0 to
  75 %; AC/DC: dense first epoch, half-epoch phases, sparse last epoch; RigL / SET: update every
  100 steps to 75 %, drop fraction 0.3 cosine-annealed). The 0.9 cells without Sign-In export
  their weights at the end of epoch 3 (the paper takes signs at epoch 30 of 100).
* signs (group 'ablation'), at 0.9, for the masks GMP, AC/DC and RigL learned (each seed from
  the same seed's run of that method, static mask from its end):
  - signs3_randmag: the signs of epoch 3, random magnitudes (an independent init draw);
  - mag3_randsign: the magnitudes of epoch 3, random signs (our choice: the same epoch as the
    signs above, so the two rows differ only in which half of the weights is kept);
  - reinit: this seed's own initialization, i.e. the source run's initialization rewound onto
    its final mask (a lottery ticket; GMP and AC/DC start dense from it, RigL's random ERK mask
    keeps part of it);
  - reinit_signin: the same, trained with Sign-In;
  - fresh: a fresh random initialization, independent of the source's (random signs and
    magnitudes of an independent draw of the initializer: the paper's "random init" row);
  - fresh_signin: the same, trained with Sign-In.
"""

CONFIG = "configs/fashion_mnist_quickstart.py"
LEARNING_RATE = 0.1  # experiments/grids/fashion_mnist_study.py's tuned pair
WEIGHT_DECAY = 1e-4
SEEDS = [0, 1, 2]
SPARSITIES = (0.9, 0.95, 0.98)
METHODS = {"gmp": "GMP", "acdc": "AC/DC", "rigl": "RigL", "set": "SET"}
SIGNS_METHODS = ("gmp", "acdc", "rigl")
SIGNS_EPOCH = 3
COMMON = {"model": "lenet300_100", "width": 300, "num_epochs": 10, "warmup_epochs": 1.0,
          "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "mask.method": "random",
          "mask.distribution": "erk"}
OFF = {"signin.enabled": False}
SIGNIN = {"signin.enabled": True, "signin.beta": 1.0, "signin.reset_every_epochs": 1,
          "signin.inner_state_at_reset": "keep"}


def _cell(name, method, overrides, group="main"):
  return {"name": name, "config": CONFIG, "overrides": {**COMMON, **overrides}, "seeds": SEEDS,
          "method": method, "group": group}


def get_grid():
  cells = []
  for key, label in METHODS.items():
    for sparsity in SPARSITIES:
      base = {"sparsity": sparsity, "schedule.method": key}
      export = {"export_epochs": (SIGNS_EPOCH,)} if sparsity == 0.9 else {}
      cells.append(_cell(f"{key}_s{sparsity}", label, {**base, **OFF, **export}))
      cells.append(_cell(f"{key}_signin_s{sparsity}", f"{label} + Sign-In", {**base, **SIGNIN}))
  variants = {
      "signs3_randmag": ("signs of epoch 3, random magnitudes",
                         {"init_from.signs": "learned", "init_from.signs_epoch": SIGNS_EPOCH,
                          "init_from.magnitudes": "random", **OFF}),
      "mag3_randsign": ("magnitudes of epoch 3, random signs",
                        {"init_from.magnitudes": "learned",
                         "init_from.magnitudes_epoch": SIGNS_EPOCH,
                         "init_from.signs": "random", **OFF}),
      "reinit": ("original init", {**OFF}),
      "reinit_signin": ("original init + Sign-In", {**SIGNIN}),
      "fresh": ("fresh random init", {"init_from.signs": "random",
                                      "init_from.magnitudes": "random", **OFF}),
      "fresh_signin": ("fresh random init + Sign-In", {"init_from.signs": "random",
                                                       "init_from.magnitudes": "random",
                                                       **SIGNIN}),
  }
  for key in SIGNS_METHODS:
    for variant, (label, change) in variants.items():
      cells.append(_cell(
          f"{key}_mask_{variant}", f"{METHODS[key]} mask, {label}",
          {"sparsity": 0.9, "init_from.workdir": f"{{workdir:{key}_s0.9}}", **change},
          group="ablation"))
  return cells
