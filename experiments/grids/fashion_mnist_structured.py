"""Issue 21's grid (docs/results.md, part 4): does Sign-In help N:M sparse training from scratch?

    python experiments/sweep.py --grid experiments/grids/fashion_mnist_structured.py --parallel 2
    python experiments/sweep.py --grid experiments/grids/fashion_mnist_structured.py --table_only
    python experiments/paired.py --results experiments/results/fashion_mnist_structured

Setting: parts 1 and 2's protocol (experiments/grids/fashion_mnist_study.py): LeNet-300-100 on
Fashion-MNIST, 10 epochs, batch 128, SGD + Nesterov momentum 0.9, 1 warmup epoch then cosine,
learning rate 0.1 and weight decay 1e-4 (tuned there for PaI, reused without re-tuning), Sign-In
with beta = 1, re-split every epoch, inner state kept; seeds 0, 1, 2, paired: a seed gives the
same initialization, and in a static cell the same mask, with and without Sign-In.

Cells, at N:M = 2:4, 1:4 and 1:8 (groups of M along the contraction axis, signin_jax/structured.py),
each without and with Sign-In:
* ``nm``: a static random N:M mask (N of every M chosen at random, PaI);
* ``srste``: SR-STE (Zhou et al. 2021, lambda 2e-4): the mask recomputed from the dense weights
  every step, starting from the dense initialization;
* ``unstructured``: a static random unstructured mask of the same per-layer densities (the
  uniform budget at 1 - N/M, and the layers that N:M keeps dense kept dense too), so that the
  comparison isolates the structure.
At 1:8 only dense1 (784 inputs) holds the pattern: dense2 (300 inputs) and the classifier (100)
are not multiples of 8, so N:M keeps them dense (the project's rule for such layers) and 1:8 is
23 % dense overall rather than 12.5 %.

Runtime: 18 cells x 3 seeds = 54 runs; docs/results.md gives the measured wall time.
"""

CONFIG = "configs/fashion_mnist_quickstart.py"
LEARNING_RATE = 0.1  # experiments/grids/fashion_mnist_study.py's tuned pair
WEIGHT_DECAY = 1e-4
SEEDS = [0, 1, 2]
RATIOS = ((2, 4), (1, 4), (1, 8))
# LeNet-300-100's layers whose contraction size is not a multiple of M (N:M keeps them dense).
RAGGED = {4: (), 8: ("dense2/kernel", "classifier/kernel")}
COMMON = {"model": "lenet300_100", "width": 300, "num_epochs": 10, "warmup_epochs": 1.0,
          "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "mask.method": "random",
          "mask.distribution": "uniform"}
OFF = {"signin.enabled": False}
SIGNIN = {"signin.enabled": True, "signin.beta": 1.0, "signin.reset_every_epochs": 1,
          "signin.inner_state_at_reset": "keep"}


def _cell(name, method, overrides):
  return {"name": name, "config": CONFIG, "overrides": {**COMMON, **overrides}, "seeds": SEEDS,
          "method": method, "group": "main"}


def get_grid():
  cells = []
  for n, m in RATIOS:
    sparsity = 1 - n / m
    nm = {"sparsity": sparsity, "mask.structure": "n:m", "mask.n": n, "mask.m": m}
    variants = {
        "nm": (f"{n}:{m} static", {**nm, "schedule.method": "static"}),
        "srste": (f"{n}:{m} SR-STE", {**nm, "schedule.method": "sr_ste"}),
        "unstructured": (f"unstructured {sparsity:g}, {n}:{m}'s layer densities",
                         {"sparsity": sparsity, "schedule.method": "static",
                          "mask.dense_layers": RAGGED[m]}),
    }
    for key, (label, overrides) in variants.items():
      cells.append(_cell(f"{key}_{n}of{m}", label, {**overrides, **OFF}))
      cells.append(_cell(f"{key}_signin_{n}of{m}", f"{label} + Sign-In", {**overrides, **SIGNIN}))
  return cells
