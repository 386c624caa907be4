"""A tiny grid that exercises the sweep end to end in well under a minute (tests/test_sweep.py).

    python experiments/sweep.py --grid experiments/grids/smoke.py

Two cells (a random ERK mask at 90 % with and without Sign-In) x two seeds, 3 training steps of
a LeNet-300-100 of width 8. The numbers mean nothing; only the plumbing is checked.
"""

CONFIG = "configs/fashion_mnist_quickstart.py"
COMMON = {"model": "lenet300_100", "width": 8, "num_train_steps": 3, "sparsity": 0.9,
          "mask.method": "random", "mask.distribution": "erk"}


def get_grid():
  return [
      {"name": "pai_erk", "config": CONFIG, "method": "PaI ERK", "seeds": [0, 1],
       "overrides": {**COMMON, "signin.enabled": False}},
      {"name": "pai_erk_signin", "config": CONFIG, "method": "PaI ERK + Sign-In", "seeds": [0, 1],
       "overrides": {**COMMON, "signin.enabled": True, "signin.reset_every_epochs": 1}},
  ]
