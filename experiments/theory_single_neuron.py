"""The paper's single-hidden-neuron argument, reproduced numerically with ``signin_jax.signin``.

    python experiments/theory_single_neuron.py [--num_inits 200] [--dims 1,5]
        [--out docs/theory_single_neuron.md] [--plot docs/theory_single_neuron.png]

**Setting.** One hidden ReLU neuron ``f(x) = a * relu(w . x)`` with ``a`` a scalar and
``w`` in ``R^d``, learning the teacher ``f*(x) = a* relu(w* . x)`` with ``a* = 1`` and ``w*`` a
fixed positive unit vector (``w* ∝ linspace(1, 2, d)``, so ``w* = 1`` for ``d = 1``) under the
square loss ``L = mean_i (f(x_i) - f*(x_i))**2 / 2`` on one fixed sample (full batch) of
``x_i ~ |N(0, I_d)|``. The paper's claims (see ``docs/theory_single_neuron.md`` for what comes out):

* plain gradient flow recovers the teacher only from initial signs ``a > 0, w > 0``;
* Sign-In with a larger inner scale (beta) on the output weight ``a`` than on ``w`` also
  recovers ``a < 0, w > 0``: the output weight flips;
* from ``w < 0`` no method recovers (that would need overparameterization).

**Our choices** (the paper's exact setting could not be read):

* *Inputs with positive coordinates* (``|N(0, I)|``): then ``w < 0`` (every coordinate
  negative) gives ``w . x < 0`` for every input, the neuron is dead, every gradient is zero and
  nothing moves; this is the mechanism by which ``w < 0`` cannot be recovered. With symmetric
  inputs a negative ``w`` would just serve the other half-space and the sign cases would not
  be distinct. On this data the teacher is linear, ``f*(x) = w* . x``.
* *Initialization*: ``a0 = s_a |a0|``, ``w0 = s_w |w0| v`` with signs ``(s_a, s_w)`` fixed per
  sign case, magnitudes ``|a0|, |w0|`` (``|w0|`` is the Euclidean norm) drawn independently
  log-uniform on ``[0.05, 2]`` (``--magnitude_range``), and ``v = |z| / ||z||``, ``z ~ N(0, I_d)``
  a random direction in the positive orthant (``v = 1`` for ``d = 1``). "``w > 0``" means every
  coordinate positive.
* *Methods* (all plain SGD, no momentum, no weight decay; a small step so the discrete run
  follows gradient flow):

  - ``gd``: ``optax.sgd(lr)`` on ``(a, w)``;
  - ``signin``: ``a = m_a w_a`` and ``w = m_w * w_w`` (elementwise), trained through
    ``signin.sign_in(optax.sgd(lr), beta={'a': beta_a, 'w': beta_w}, where={'a': True,
    'w': True})`` with ``beta_a = 4``, ``beta_w = 0`` by default: a large inner scale on the
    output weight, the balanced factorization (no sign flips under gradient flow) on ``w``;
  - ``signin_equal_beta`` (control): the same with ``beta_w = beta_a``;
  - ``signin_reset`` (only with ``--reset_every K``): ``signin`` re-split every K steps.

* *Success* of a run: final loss ``< loss_tol * L_zero`` (``loss_tol = 1e-3``; ``L_zero`` is the
  loss of the zero function, i.e. of a dead neuron) **and** the learned neuron has the
  teacher's signs: ``a > 0`` and ``w . w* > 0``.

**Gradient-flow predictions** (``conserved_quantity``, ``flip_margin``, ``predicted_success``;
derived here, checked against every run). Write ``g_a = dL/da``, ``g_w = dL/dw``. Because relu
is positively homogeneous, ``a g_a = w . g_w``. A Sign-In leaf ``theta = m * w_f`` split with
inner scale ``beta`` moves as ``d theta/dt = -R_beta(theta) g`` with
``R_beta(t) = sqrt(beta**2 + 4 t**2)`` (plain GD: rate 1).

* Invariants. ``gd``: ``d(a**2 - |w|**2)/dt = -2 (a g_a - w . g_w) = 0``. Sign-In:
  ``d R_beta(t)/dt = (4 t / R_beta(t)) dt/dt = -4 t g``, hence
  ``Q = sum_i R_beta_w(w_i) - R_beta_a(a)`` is conserved. For ``beta_w = 0`` this is
  ``2 ||w||_1 - R_beta_a(a)``; for ``beta_w = beta_a`` and ``d = 1`` it is a function of
  ``a**2 - w**2``, i.e. the same invariant as ``gd``.
* ``w < 0``: dead at the start, zero gradient, nothing moves: fails (every method, every d).
* ``a < 0``: ``f <= 0 < f*`` as long as ``a < 0``, so success needs ``a`` to cross 0. At
  ``a = 0`` the invariant reads ``-|w|**2 = Q0`` (``gd``): impossible if ``a0**2 > |w0|**2``;
  for Sign-In ``sum_i R_beta_w(w_i) = Q0 + beta_a``, whose left side is ``>= d beta_w``:
  impossible if ``Q0 + beta_a < d beta_w``, which for ``beta_w = 0`` reads
  ``||w0||_1 + beta_a / 2 < sqrt(beta_a**2 / 4 + a0**2)``. Those inits fail, every d. The
  larger ``beta_a``, the smaller the right side minus ``beta_a / 2`` (about ``a0**2 / beta_a``):
  ``beta_a -> inf`` lets every ``a < 0, w > 0`` init flip; for ``d = 1``, ``beta_a = 4`` about
  84 % of the log-uniform inits (GD: 50 %).
* The other direction (the flip happens and the run converges) is shown for ``d = 1`` (every
  method: with ``w > 0``, ``a < 0`` the residual is negative and pushes ``a`` up and ``w`` down
  until one reaches 0) and for ``signin`` with ``beta_w = 0`` for every d: then
  ``dw_i/dt = -2 |w_i| (g_w)_i``, no coordinate of ``w`` changes sign, the neuron stays fully
  active and the model is the linear ``a (w . x)`` with ``w`` in the positive orthant. The
  runs confirm convergence after the flip. ``a > 0, w > 0`` succeeds in the same settings.
* ``beta_a = 0`` (balanced factors on ``a``): ``da/dt = -2 |a| g_a``, ``a`` never changes
  sign under gradient flow, every ``a < 0`` init fails (the limit ``beta_a -> 0`` of the
  condition above is GD's ``|w0| > |a0|``, but the time to cross 0 grows like
  ``1 / beta_a``). In float32 the stored ``theta`` and ``m`` drift apart by rounding once ``a``
  is tiny, which acts as a tiny positive beta and lets some runs flip late; we therefore do
  not sweep ``beta_a = 0``.
* For ``gd`` and ``signin_equal_beta`` with ``d > 1``, ``w`` may leave the positive orthant and
  part of the inputs switch the neuron off; there the theory here is silent beyond the
  failure condition. For ``d = 1`` the discrete GD step even keeps the sign of
  ``a**2 - w**2`` exactly: it multiplies it by ``1 - lr**2 r**2``.

Predictions are ``nan`` (``null`` in the JSON) where the argument above is silent. All inits of one method are
trained at once (``jax.vmap`` over inits, ``lax.scan`` over steps, one ``jit``).
"""

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from signin_jax import signin

# (name, sign of a0, sign of w0)
SIGN_CASES: Tuple[Tuple[str, int, int], ...] = (
    ("a>0, w>0", 1, 1),
    ("a<0, w>0", -1, 1),
    ("a>0, w<0", 1, -1),
    ("a<0, w<0", -1, -1),
)
BASE_METHODS = ("gd", "signin", "signin_equal_beta")
ALL_METHODS = BASE_METHODS + ("signin_reset",)


class Setup(NamedTuple):
  """Everything that defines one experiment (see the module docstring)."""
  dim: int = 1
  num_samples: int = 256
  lr: float = 0.01
  num_steps: int = 6000
  beta_a: float = 4.0
  beta_w: float = 0.0
  magnitude_range: Tuple[float, float] = (0.05, 2.0)
  loss_tol: float = 1e-3
  reset_every: Optional[int] = None
  seed: int = 0


class Inits(NamedTuple):
  """Initial parameters of many runs: ``a`` of shape (n,), ``w`` of shape (n, d)."""
  a: jax.Array
  w: jax.Array
  case: np.ndarray  # (n,) index into SIGN_CASES


def validate(setup: Setup, methods: Sequence[str]) -> None:
  """Raises ValueError naming the offending field."""
  if setup.dim < 1:
    raise ValueError(f"dim must be >= 1, got {setup.dim}.")
  if setup.num_samples < 1 or setup.num_steps < 1:
    raise ValueError(f"num_samples and num_steps must be >= 1, got {setup.num_samples}, "
                     f"{setup.num_steps}.")
  if not setup.lr > 0:
    raise ValueError(f"lr must be > 0, got {setup.lr}.")
  if setup.beta_a < 0 or setup.beta_w < 0:
    raise ValueError(f"beta_a and beta_w must be >= 0, got {setup.beta_a}, {setup.beta_w}.")
  lo, hi = setup.magnitude_range
  if not 0 < lo <= hi:
    raise ValueError(f"magnitude_range must satisfy 0 < low <= high, got {(lo, hi)}.")
  for m in methods:
    if m not in ALL_METHODS:
      raise ValueError(f"method must be one of {ALL_METHODS}, got {m!r}.")
  if "signin_reset" in methods and setup.reset_every is None:
    raise ValueError("method 'signin_reset' needs reset_every (a positive int).")


# --- the problem ---------------------------------------------------------------------------

def teacher_direction(dim: int) -> jax.Array:
  """``w*``: a fixed positive unit vector, ``∝ linspace(1, 2, dim)`` (``[1.]`` for dim 1)."""
  u = jnp.linspace(1.0, 2.0, dim)
  return u / jnp.linalg.norm(u)


def make_data(key: jax.Array, dim: int, num_samples: int) -> Tuple[jax.Array, jax.Array]:
  """``x ~ |N(0, I)|`` (positive coordinates) and the teacher's outputs ``relu(w* . x)``."""
  x = jnp.abs(jax.random.normal(key, (num_samples, dim)))
  return x, jax.nn.relu(x @ teacher_direction(dim))


def predict(params: Dict[str, jax.Array], x: jax.Array) -> jax.Array:
  return params["a"] * jax.nn.relu(x @ params["w"])


def loss_fn(params, x, y):
  return 0.5 * jnp.mean((predict(params, x) - y) ** 2)


def zero_function_loss(y: jax.Array) -> jax.Array:
  """The loss of f = 0 (a dead neuron); success is measured relative to it."""
  return 0.5 * jnp.mean(y ** 2)


def sample_inits(key: jax.Array, setup: Setup, num_inits: int) -> Inits:
  """``num_inits`` inits for every sign case, stacked case after case."""
  lo, hi = setup.magnitude_range
  k_a, k_w, k_v = jax.random.split(key, 3)
  shape = (len(SIGN_CASES), num_inits)
  log_uniform = lambda k: jnp.exp(jax.random.uniform(k, shape, minval=math.log(lo),
                                                     maxval=math.log(hi)))
  mag_a, mag_w = log_uniform(k_a), log_uniform(k_w)
  v = jnp.abs(jax.random.normal(k_v, shape + (setup.dim,)))
  v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
  s_a = jnp.array([c[1] for c in SIGN_CASES], jnp.float32)[:, None]
  s_w = jnp.array([c[2] for c in SIGN_CASES], jnp.float32)[:, None, None]
  a = (s_a * mag_a).reshape(-1)
  w = (s_w * mag_w[..., None] * v).reshape(-1, setup.dim)
  case = np.repeat(np.arange(len(SIGN_CASES)), num_inits)
  return Inits(a=a, w=w, case=case)


def make_optimizer(method: str, setup: Setup) -> optax.GradientTransformation:
  """The optimizer of ``params = {'a': (), 'w': (d,)}`` for one method."""
  inner = optax.sgd(setup.lr)
  both = {"a": True, "w": True}
  if method == "gd":
    return inner
  if method == "signin":
    return signin.sign_in(inner, beta={"a": setup.beta_a, "w": setup.beta_w}, where=both)
  if method == "signin_equal_beta":
    return signin.sign_in(inner, beta={"a": setup.beta_a, "w": setup.beta_a}, where=both)
  if method == "signin_reset":
    return signin.sign_in(inner, beta={"a": setup.beta_a, "w": setup.beta_w}, where=both,
                          reset_every=setup.reset_every)
  raise ValueError(f"method must be one of {ALL_METHODS}, got {method!r}.")


def train(method: str, setup: Setup, inits: Inits, x: jax.Array, y: jax.Array,
          num_records: int = 1) -> Dict[str, jax.Array]:
  """Trains every init with ``method`` for ``setup.num_steps`` full-batch steps.

  Returns ``{'a': (n, R), 'w': (n, R, d), 'loss': (n, R)}`` recorded after every
  ``num_steps / R`` steps (``R = num_records``, which must divide ``num_steps``); the last
  record is the final state.
  """
  if setup.num_steps % num_records:
    raise ValueError(f"num_records ({num_records}) must divide num_steps ({setup.num_steps}).")
  tx = make_optimizer(method, setup)
  steps_per_record = setup.num_steps // num_records

  def step(carry, _):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  def record(carry, _):
    carry, _ = jax.lax.scan(step, carry, None, length=steps_per_record)
    params = carry[0]
    return carry, dict(params, loss=loss_fn(params, x, y))

  def run_one(a0, w0):
    params = {"a": a0, "w": w0}
    _, records = jax.lax.scan(record, (params, tx.init(params)), None, length=num_records)
    return records

  return jax.jit(jax.vmap(run_one))(inits.a, inits.w)


def success(a: jax.Array, w: jax.Array, loss: jax.Array, y: jax.Array,
            setup: Setup) -> jax.Array:
  """Loss below ``loss_tol * L_zero`` and the teacher's signs (``a > 0``, ``w . w* > 0``)."""
  aligned = (w @ teacher_direction(setup.dim)) > 0
  return (loss < setup.loss_tol * zero_function_loss(y)) & (a > 0) & aligned


def conserved_quantity(method: str, a, w, setup: Setup) -> np.ndarray:
  """The quantity gradient flow conserves, per init (``a``: (n,), ``w``: (n, d)).

  ``gd``: ``a**2 - |w|**2``. Sign-In with inner scales ``beta_a`` on ``a`` and ``beta_w`` on
  every coordinate of ``w``: ``sum_i R_beta_w(w_i) - R_beta_a(a)`` with
  ``R_beta(t) = sqrt(beta**2 + 4 t**2)`` (``signin_equal_beta``: ``beta_w = beta_a``).
  Both follow from ``a dL/da = w . dL/dw`` (relu is positively homogeneous).
  """
  a, w = np.asarray(a, np.float64), np.asarray(w, np.float64)
  if method == "gd":
    return a ** 2 - np.sum(w ** 2, -1)
  beta_w = setup.beta_a if method == "signin_equal_beta" else setup.beta_w
  return np.sum(np.hypot(beta_w, 2 * w), -1) - np.hypot(setup.beta_a, 2 * a)


def flip_margin(a0, w0, method: str, setup: Setup) -> np.ndarray:
  """How far the invariant is from forbidding ``a`` to reach 0 (> 0: allowed).

  At ``a = 0`` the invariant reads ``-|w|**2 = Q0`` (``gd``), so ``a`` can reach 0 only if
  ``Q0 <= 0``; for Sign-In it reads ``sum_i R_beta_w(w_i) = Q0 + beta_a``, and the left side
  is ``>= d beta_w``, so only if ``Q0 + beta_a >= d beta_w``. For ``signin`` with
  ``beta_w = 0`` this is ``||w0||_1 + beta_a / 2 >= sqrt(beta_a**2 / 4 + a0**2)``.
  """
  q0 = conserved_quantity(method, a0, w0, setup)
  if method == "gd":
    return -q0
  beta_w = setup.beta_a if method == "signin_equal_beta" else setup.beta_w
  return q0 + setup.beta_a - np.shape(w0)[-1] * beta_w


def predicted_success(a0, w0, method: str, setup: Setup) -> np.ndarray:
  """Gradient-flow prediction per init: 1.0 success, 0.0 failure, nan where theory is silent.

  * ``w0 < 0``: dead neuron, zero gradient: 0 (every method, every d).
  * ``a0 < 0``, ``w0 > 0`` and ``flip_margin < 0``: ``a`` can never reach 0, ``f <= 0``: 0
    (every method, every d).
  * ``a0 < 0``, ``w0 > 0`` and ``flip_margin > 0``: 1 where the flip is also shown to happen
    and be followed by convergence: d = 1 (every method), and ``signin`` with ``beta_w = 0``
    for every d (``w`` keeps its signs, so the neuron stays fully active).
  * ``a0 > 0``, ``w0 > 0``: 1 in the same settings.
  """
  a0, w0 = np.asarray(a0, np.float64), np.asarray(w0, np.float64)
  out = np.full(a0.shape, np.nan)
  w_pos, w_neg = np.all(w0 > 0, -1), np.all(w0 < 0, -1)
  margin = flip_margin(a0, w0, method, setup)
  decided = setup.dim == 1 or (method in ("signin", "signin_reset") and setup.beta_w == 0)
  if decided:
    out[w_pos & (a0 > 0)] = 1.0
    out[w_pos & (a0 < 0) & (margin > 0)] = 1.0
  out[w_pos & (a0 < 0) & (margin < 0)] = 0.0
  if method != "gd" and setup.beta_a == 0:
    # d a/dt = -2 |a| g_a: a decays towards 0 but never reaches it.
    out[a0 < 0] = 0.0
  out[w_neg] = 0.0
  return out


# --- the experiment ------------------------------------------------------------------------

def run_experiment(setup: Setup, num_inits: int, methods: Sequence[str] = BASE_METHODS,
                   num_records: int = 2) -> Dict:
  """Trains every (sign case, init) with every method; returns per-init raw results.

  Two records: after half and after all the steps, so the caller can see whether the
  outcomes were still changing (``outcome_changes_second_half``).
  """
  validate(setup, methods)
  key_data, key_init = jax.random.split(jax.random.PRNGKey(setup.seed))
  x, y = make_data(key_data, setup.dim, setup.num_samples)
  inits = sample_inits(key_init, setup, num_inits)
  a0, w0 = np.asarray(inits.a), np.asarray(inits.w)
  results = {"setup": setup._asdict(), "num_inits": num_inits,
             "cases": [c[0] for c in SIGN_CASES], "case": inits.case.tolist(),
             "a0": a0.tolist(), "w0": w0.tolist(), "methods": {}}
  for method in methods:
    start = time.perf_counter()
    rec = jax.block_until_ready(train(method, setup, inits, x, y, num_records))
    ok = np.asarray(success(rec["a"], rec["w"], rec["loss"], y, setup))  # (n, R)
    final_w = np.asarray(rec["w"][:, -1])
    results["methods"][method] = {
        "success": ok[:, -1].astype(int).tolist(),
        "outcome_changes_second_half": int(np.sum(ok[:, -1] != ok[:, num_records // 2 - 1]))
        if num_records > 1 else None,
        "final_loss_rel": (np.asarray(rec["loss"][:, -1]) / float(zero_function_loss(y))).tolist(),
        "final_a": np.asarray(rec["a"][:, -1]).tolist(),
        "final_w_dot_teacher": (final_w @ np.asarray(teacher_direction(setup.dim))).tolist(),
        "predicted": predicted_success(a0, w0, method, setup).tolist(),
        "flip_margin": flip_margin(a0, w0, method, setup).tolist(),
        "invariant_drift_max": float(np.max(np.abs(
            conserved_quantity(method, rec["a"][:, -1], final_w, setup)
            - conserved_quantity(method, a0, w0, setup)))),
        "seconds": time.perf_counter() - start,
    }
  return results


def beta_sweep(setup: Setup, num_inits: int, betas: Sequence[float]) -> Dict[float, Dict]:
  """``signin``'s success rate and predicted rate in case ``a < 0, w > 0`` for each ``beta_a``."""
  case_name = SIGN_CASES[1][0]
  out = {}
  for beta_a in betas:
    res = run_experiment(setup._replace(beta_a=float(beta_a)), num_inits, ("signin",))
    out[float(beta_a)] = summarize(res)["signin"][case_name]
  return out


def summarize(results: Dict) -> Dict:
  """Per method and sign case: success rate (also split by |a0| > |w0| and |a0| < |w0|), the
  predicted rate where the theory decides every init of the case, and agreement counts."""
  case = np.asarray(results["case"])
  a0, w0 = np.asarray(results["a0"]), np.asarray(results["w0"])
  a_bigger = np.abs(a0) > np.linalg.norm(w0, axis=-1)
  out = {}
  for method, r in results["methods"].items():
    ok, pred = np.asarray(r["success"]), np.asarray(r["predicted"])
    margin = np.asarray(r["flip_margin"])
    per_case = {}
    for i, (name, _, _) in enumerate(SIGN_CASES):
      sel = case == i
      known = sel & ~np.isnan(pred)
      per_case[name] = {
          "rate": float(ok[sel].mean()),
          "rate_a_bigger": float(ok[sel & a_bigger].mean()) if np.any(sel & a_bigger) else None,
          "rate_w_bigger": float(ok[sel & ~a_bigger].mean()) if np.any(sel & ~a_bigger) else None,
          "predicted_rate": float(pred[known].mean()) if np.all(known == sel) else None,
          "agree": int(np.sum(ok[known] == pred[known])), "predicted_n": int(known.sum()),
          # Inits on the boundary take unboundedly long to flip: how close are the misses?
          "max_disagreeing_margin": float(np.max(np.abs(margin[known & (ok != pred)]),
                                                 initial=0.0)),
      }
    out[method] = per_case
  return out


def claims(results: Dict) -> list:
  """The paper's three claims, each next to the counts measured in ``results``."""
  case = np.asarray(results["case"])
  a0, w0 = np.asarray(results["a0"]), np.asarray(results["w0"])
  a_bigger = np.abs(a0) > np.linalg.norm(w0, axis=-1)
  ok = {m: np.asarray(r["success"], bool) for m, r in results["methods"].items()}
  flip = (case == 1) & a_bigger
  dead = np.isin(case, (2, 3))
  count = lambda m, sel: f"{int(ok[m][sel].sum())}/{int(sel.sum())}"
  out = [f"- Claim: plain GD does not recover a < 0, w > 0 (here: when \\|a0\\| > \\|w0\\|). "
         f"Measured: `gd` succeeds on {count('gd', flip)} such inits."]
  if "signin" in ok:
    out.append(f"- Claim: Sign-In with the larger beta on `a` recovers them. Measured: "
               f"`signin` succeeds on {count('signin', flip)} of them "
               f"({count('signin', case == 1)} over the whole a < 0, w > 0 row, `gd` "
               f"{count('gd', case == 1)}); the invariant says which: those with "
               "`Q0 + beta_a >= d beta_w` (`flip_margin` > 0), a share that grows with beta_a.")
  out.append("- Claim: nothing recovers w < 0. Measured: "
             + ", ".join(f"`{m}` {count(m, dead)}" for m in ok) + " succeed.")
  return out


def agreement(method: str, per_case: Sequence[Dict]) -> str:
  """``'`method` k/n'`` inits whose outcome equals the prediction, plus the largest
  |flip_margin| of a disagreeing init when there is one."""
  per_case = list(per_case)
  k = sum(c["agree"] for c in per_case)
  n = sum(c["predicted_n"] for c in per_case)
  worst = max(c["max_disagreeing_margin"] for c in per_case)
  name = f"`{method}` " if method else ""
  return f"{name}{k}/{n}" + (f" ({worst:.1e})" if k < n else "")


def format_markdown(dim_results: Sequence[Dict], command: str, wall_seconds: float,
                    sweeps: Optional[Sequence[Dict[float, Dict]]] = None) -> str:
  """The report: one table per d, plus the setup, the machine, the convergence and
  integrator checks and (optionally, one per d) ``beta_sweep`` results."""
  first = dim_results[0]["setup"]
  methods = list(dim_results[0]["methods"])
  lo, hi = first["magnitude_range"]
  lines = [
      "# Single hidden neuron: which initial signs GD and Sign-In recover",
      "",
      "Reproduces the theory section of the Sign-In paper (arXiv 2504.12801); generated by:",
      "",
      "```",
      command,
      "```",
      "",
      f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
      f"no GPU; jax {jax.__version__}, backend {jax.default_backend()}. "
      f"Wall time {wall_seconds:.1f} s (all runs and sweeps including compilation; "
      "not the plot).",
      "",
      "Setting (details and derivations: module docstring of "
      "`experiments/theory_single_neuron.py`): `f(x) = a * relu(w . x)`, teacher `a* = 1`, "
      "`w*` a positive unit vector (`∝ linspace(1, 2, d)`), inputs `x ~ |N(0, I_d)|` "
      f"({first['num_samples']} fixed samples, full batch), square loss. Initial `|a0|` and "
      f"`|w0|` (norm) log-uniform on [{lo}, {hi}], `w0` along a random positive direction, "
      f"signs per row. Plain SGD, lr {first['lr']}, {first['num_steps']} steps, no momentum "
      f"or weight decay. `signin`: beta_a = {first['beta_a']} on `a`, beta_w = "
      f"{first['beta_w']} on `w`; `signin_equal_beta`: beta {first['beta_a']} on both"
      + (f"; `signin_reset`: `signin` re-split every {first['reset_every']} steps"
         if first["reset_every"] else "")
      + f". Success: final loss < {first['loss_tol']:g} x (loss of the zero function) and "
        "`a > 0`, `w . w* > 0`.",
      "",
      "Each cell: success rate over the inits of that row; in brackets the gradient-flow "
      "prediction (fraction of those inits the theory predicts to succeed; `-` where the "
      "theory is silent for some of them).",
  ]
  for index, res in enumerate(dim_results):
    summ = summarize(res)
    setup = res["setup"]
    n = res["num_inits"]
    lines += ["", f"## d = {setup['dim']}", "",
              "| sign case | " + " | ".join(methods) + " | inits |",
              "|---|" + "---|" * len(methods) + "---|"]
    case = np.asarray(res["case"])
    a0, w0 = np.asarray(res["a0"]), np.asarray(res["w0"])
    a_bigger = np.abs(a0) > np.linalg.norm(w0, axis=-1)

    def cell(c):
      pred = "-" if c["predicted_rate"] is None else f"{c['predicted_rate']:.2f}"
      return f"{c['rate']:.2f} ({pred})"

    for name, _, _ in SIGN_CASES:
      lines.append(f"| {name} | " + " | ".join(cell(summ[m][name]) for m in methods)
                   + f" | {n} |")
    c2 = SIGN_CASES[1][0]
    n_big = int(np.sum((case == 1) & a_bigger))
    lines.append(f"| {c2}, only \\|a0\\| > \\|w0\\| | "
                 + " | ".join(f"{summ[m][c2]['rate_a_bigger']:.2f}" for m in methods)
                 + f" | {n_big} |")
    lines.append(f"| {c2}, only \\|a0\\| < \\|w0\\| | "
                 + " | ".join(f"{summ[m][c2]['rate_w_bigger']:.2f}" for m in methods)
                 + f" | {n - n_big} |")
    lines += [""] + claims(res)
    agree = [agreement(m, summ[m].values()) for m in methods]
    changes = ", ".join(f"`{m}` {res['methods'][m]['outcome_changes_second_half']}"
                        for m in methods)
    drift = ", ".join(f"`{m}` {res['methods'][m]['invariant_drift_max']:.1e}" for m in methods)
    lines += ["", f"Measured outcome = gradient-flow prediction, over the inits where the theory "
              f"predicts: {', '.join(agree)} (in brackets: the largest \\|flip_margin\\| "
              "of a disagreeing init; inits on the boundary take unboundedly long to flip).",
              f"Convergence check: outcomes that changed between step {setup['num_steps'] // 2} "
              f"and step {setup['num_steps']}: {changes}.",
              f"Integrator check: largest change of the gradient-flow invariant "
              f"(`conserved_quantity`, whose values lie within about ±6 here) over the run, over all inits: "
              f"{drift} (it halves with the step: `tests/test_theory.py`)."]
    if sweeps:
      sweep = sweeps[index]
      lines += ["", f"`signin` in case {c2} against beta_a (beta_w = {setup['beta_w']}): "
                "success rate (gradient-flow prediction)", "",
                "| beta_a | " + " | ".join(f"{b:g}" for b in sweep) + " |",
                "|---|" + "---|" * len(sweep),
                "| success | " + " | ".join(cell(c) for c in sweep.values()) + " |",
                "| = prediction | " + " | ".join(agreement("", [c]) for c in sweep.values())
                + " |"]
  return "\n".join(lines) + "\n"


# --- plot ----------------------------------------------------------------------------------

def plot(path: str, results: Dict) -> None:
  """d = 1, case a < 0, w > 0: trajectories (GD vs Sign-In) and success maps over (|a0|, |w0|).

  ``results``: a ``run_experiment`` output for d = 1 that includes ``gd`` and ``signin``.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  setup = Setup(**{**results["setup"], "magnitude_range": tuple(results["setup"]["magnitude_range"])})
  if setup.dim != 1 or not {"gd", "signin"} <= set(results["methods"]):
    raise ValueError("plot needs results for dim 1 with methods 'gd' and 'signin'.")
  key_data, key_init = jax.random.split(jax.random.PRNGKey(setup.seed))
  x, y = make_data(key_data, 1, setup.num_samples)
  lo, hi = setup.magnitude_range
  # A few hand-picked starts in a < 0, w > 0 on both sides of both boundaries.
  starts = [(-1.5, 0.3), (-1.5, 1.2), (-0.6, 0.4), (-0.5, 0.9), (-1.0, 0.15), (-0.3, 1.5)]
  traj_inits = Inits(a=jnp.array([s[0] for s in starts]), w=jnp.array([[s[1]] for s in starts]),
                     case=np.ones(len(starts), int))
  num_records = setup.num_steps  # every step: Sign-In crosses a = 0 within a few dozen
  fig, axes = plt.subplots(1, 3, figsize=(16, 5))
  ax = axes[0]
  grid = np.linspace(-2.2, 2.2, 400)
  ax.plot(grid[grid > 0], 1 / grid[grid > 0], "k:", lw=1, label="teacher  a w = 1")
  ax.plot(grid[grid < 0], -grid[grid < 0], color="tab:blue", lw=0.8, alpha=0.5,
          label="GD boundary  w = |a|")
  hb = setup.beta_a / 2
  ax.plot(grid[grid < 0], np.hypot(hb, grid[grid < 0]) - hb, color="tab:red", lw=0.8,
          alpha=0.5, label=f"Sign-In boundary  w = sqrt(β²/4 + a²) − β/2, β = {setup.beta_a:g}")
  for method, color, style in (("gd", "tab:blue", "--"), ("signin", "tab:red", "-")):
    rec = train(method, setup, traj_inits, x, y, num_records)
    a = np.concatenate([np.asarray(traj_inits.a)[:, None], np.asarray(rec["a"])], 1)
    w = np.concatenate([np.asarray(traj_inits.w)[:, :1], np.asarray(rec["w"][..., 0])], 1)
    for i in range(len(starts)):
      ax.plot(a[i], w[i], style, color=color, lw=1.5,
              label={"gd": "GD", "signin": "Sign-In"}[method] if i == 0 else None)
      ax.plot(a[i, -1], w[i, -1], "o", color=color, ms=4)
  ax.plot([s[0] for s in starts], [s[1] for s in starts], "ks", ms=4, label="start")
  ax.axhline(0, color="gray", lw=0.5)
  ax.axvline(0, color="gray", lw=0.5)
  ax.set(xlim=(-2.2, 2.2), ylim=(-0.3, 2.6), xlabel="a", ylabel="w",
         title="d = 1, start a < 0, w > 0: trajectories (dots: end)")
  ax.legend(fontsize=7, loc="upper left", framealpha=0.9)

  case = np.asarray(results["case"])
  sel = case == 1
  a0 = np.abs(np.asarray(results["a0"])[sel])
  w0 = np.asarray(results["w0"])[sel, 0]
  mags = np.geomspace(lo, hi, 200)
  for ax, method, title, boundary in (
      (axes[1], "gd", "GD", mags),
      (axes[2], "signin", f"Sign-In (β_a = {setup.beta_a:g}, β_w = {setup.beta_w:g})",
       np.hypot(hb, mags) - hb)):
    ok = np.asarray(results["methods"][method]["success"], bool)[sel]
    ax.scatter(a0[ok], w0[ok], s=10, c="tab:green", label="success")
    ax.scatter(a0[~ok], w0[~ok], s=10, c="tab:gray", marker="x", label="failure")
    ax.plot(mags, boundary, "k-", lw=1, label="gradient-flow boundary")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="|a0|",
           ylabel="w0", title=f"{title}: a0 < 0, w0 > 0 ({ok.mean():.0%} succeed)")
    ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _round_floats(tree, digits: int = 5):
  """Floats to ``digits`` significant digits (the raw JSON stays small enough to commit)."""
  if isinstance(tree, float):
    return float(f"{tree:.{digits}g}") if math.isfinite(tree) else None
  if isinstance(tree, dict):
    return {k: _round_floats(v, digits) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_round_floats(v, digits) for v in tree]
  return tree


# --- CLI -----------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  defaults = Setup()
  parser.add_argument("--num_inits", type=int, default=200, help="inits per sign case")
  parser.add_argument("--dims", default="1,5", help="comma-separated input dimensions")
  parser.add_argument("--num_samples", type=int, default=defaults.num_samples)
  parser.add_argument("--lr", type=float, default=defaults.lr)
  parser.add_argument("--num_steps", type=int, default=defaults.num_steps)
  parser.add_argument("--beta_a", type=float, default=defaults.beta_a)
  parser.add_argument("--beta_w", type=float, default=defaults.beta_w)
  parser.add_argument("--magnitude_range", type=float, nargs=2, default=defaults.magnitude_range)
  parser.add_argument("--loss_tol", type=float, default=defaults.loss_tol)
  parser.add_argument("--reset_every", type=int, default=None,
                      help="also run 'signin_reset': signin re-split every this many steps")
  parser.add_argument("--seed", type=int, default=defaults.seed)
  parser.add_argument("--beta_a_sweep", default="0.25,1,4,16",
                      help="comma-separated beta_a values for the signin sweep ('' to skip)")
  parser.add_argument("--out", default=None, help="write the markdown here (and .json next to it)")
  parser.add_argument("--plot", default=None, help="write a PNG here")
  args = parser.parse_args(argv)
  if args.num_inits < 1:
    parser.error(f"--num_inits must be >= 1, got {args.num_inits}")
  if args.reset_every is not None and args.reset_every < 1:
    parser.error(f"--reset_every must be a positive int, got {args.reset_every}")
  try:
    dims = [int(d) for d in args.dims.split(",")]
  except ValueError:
    parser.error(f"--dims must be comma-separated ints, got {args.dims!r}")
  try:
    betas = [float(b) for b in args.beta_a_sweep.split(",")] if args.beta_a_sweep else []
  except ValueError:
    parser.error(f"--beta_a_sweep must be comma-separated numbers, got {args.beta_a_sweep!r}")

  methods = BASE_METHODS + (("signin_reset",) if args.reset_every else ())
  start = time.perf_counter()
  dim_results, sweeps = [], []
  for dim in dims:
    setup = Setup(dim=dim, num_samples=args.num_samples, lr=args.lr, num_steps=args.num_steps,
                  beta_a=args.beta_a, beta_w=args.beta_w,
                  magnitude_range=tuple(args.magnitude_range), loss_tol=args.loss_tol,
                  reset_every=args.reset_every, seed=args.seed)
    try:
      validate(setup, methods)
    except ValueError as e:
      parser.error(str(e))
    dim_results.append(run_experiment(setup, args.num_inits, methods))
    if betas:
      try:
        sweeps.append(beta_sweep(setup, args.num_inits, betas))
      except ValueError as e:
        parser.error(f"--beta_a_sweep: {e}")
  wall = time.perf_counter() - start
  command = "python " + shlex.join([os.path.relpath(__file__)] + list(
      sys.argv[1:] if argv is None else argv))
  report = format_markdown(dim_results, command, wall, sweeps)
  print(report)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(report)
    raw = {"command": command, "wall_seconds": wall,
           "summary": [summarize(r) for r in dim_results],
           "beta_a_sweep": [{str(b): c for b, c in sw.items()} for sw in sweeps],
           "runs": dim_results}
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
      json.dump(_round_floats(raw), f)
  if args.plot:
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    d1 = [r for r in dim_results if r["setup"]["dim"] == 1]
    plot(args.plot, d1[0] if d1 else run_experiment(setup._replace(dim=1), args.num_inits,
                                                    ("gd", "signin")))


if __name__ == "__main__":
  main()
