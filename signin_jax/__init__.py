"""signin_jax: sparse training from scratch with Sign-In (arXiv 2504.12801).

The core needs only jax and optax::

    import signin_jax
    tx = signin_jax.sign_in(optax.sgd(0.1, momentum=0.9), reset_every=steps_per_epoch)

``signin_jax.masks`` builds static binary masks; ``signin_jax.train`` (which needs flax,
orbax, tensorflow-datasets) is the training system behind ``main.py``.
"""

import importlib

# Sign-In's public names, imported on first use (PEP 562), so that importing a light submodule
# (signin_jax.cpu_speed, which main.py imports before JAX may start) does not import jax.
_SIGNIN_NAMES = ("Factors", "SignInState", "factor_betas", "factors", "find_signin_state",
                 "merge", "merge_factors", "schedule_free_eval_params", "sign_in", "split")
__all__ = list(_SIGNIN_NAMES)


def __getattr__(name):
  if name == "signin":  # Was imported eagerly before: signin_jax.signin keeps working.
    return importlib.import_module("signin_jax.signin")
  if name in _SIGNIN_NAMES:
    return getattr(importlib.import_module("signin_jax.signin"), name)
  raise AttributeError(f"module 'signin_jax' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_SIGNIN_NAMES))


__version__ = "0.1.0"
