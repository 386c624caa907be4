"""signin_jax: sparse training from scratch with Sign-In (arXiv 2504.12801).

The core needs only jax and optax::

    import signin_jax
    tx = signin_jax.sign_in(optax.sgd(0.1, momentum=0.9), reset_every=steps_per_epoch)

``signin_jax.masks`` builds static binary masks; ``signin_jax.train`` (which needs flax,
orbax, tensorflow-datasets) is the training system behind ``main.py``.
"""

from signin_jax.signin import (
    Factors,
    SignInState,
    factor_betas,
    factors,
    find_signin_state,
    merge,
    merge_factors,
    schedule_free_eval_params,
    sign_in,
    split,
)

__version__ = "0.1.0"
