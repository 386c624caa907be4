"""Sign-In on 8 emulated CPU devices: pmap and jit over a Mesh agree with one device, with a
fixed mask and with masks that RigL or SET change during the run (same masks, same weights).

Run by tests/test_signin_multidevice.py in a subprocess (the device count is fixed when JAX
starts). Exits non-zero with a message on any mismatch.
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from signin_jax import flat_threefry
from signin_jax import masks as masks_lib
from signin_jax import signin
from signin_jax import sparsity

flat_threefry.install()  # As the trainer and tests/conftest.py do.
STEPS, RESET_EVERY = 7, 3


def init_params():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  return {"hidden": {"kernel": jax.random.normal(k1, (6, 16)) * 0.5, "bias": jnp.zeros(16)},
          "out": {"kernel": jax.random.normal(k2, (16, 3)) * 0.5, "bias": jnp.zeros(3)}}


def loss_fn(params, x, y):
  h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  return jnp.mean((h @ params["out"]["kernel"] + params["out"]["bias"] - y) ** 2)


KINDS = ("signin", "rigl+signin", "set")


def make_tx(kind="signin"):
  """Sign-In alone; RigL around Sign-In; SET around plain SGD (masks updated every 2 steps)."""
  inner = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.2, momentum=0.9))
  if kind == "signin":
    return signin.sign_in(inner, reset_every=RESET_EVERY)
  params = init_params()
  grow = sparsity.rigl if kind == "rigl+signin" else sparsity.set_evolution
  schedule = grow(params, sparsity=0.7, end_step=STEPS - 1, update_every=2,
                  drop_fraction=0.5, distribution="uniform")
  tx = signin.sign_in(inner, reset_every=RESET_EVERY) if kind == "rigl+signin" else inner
  return sparsity.sparse_training(tx, schedule, initial_masks(), key=jax.random.PRNGKey(3))


def initial_masks():
  return masks_lib.create_masks(jax.random.PRNGKey(2), init_params(), 0.7,
                                distribution="uniform")


def initial_params(kind):
  params = init_params()
  return params if kind == "signin" else masks_lib.apply_mask(params, initial_masks())


def batches():
  rng = np.random.default_rng(1)
  for _ in range(STEPS):
    yield (rng.normal(size=(32, 6)).astype(np.float32), rng.normal(size=(32, 3)).astype(np.float32))


def sgd_step(tx, axis_name=None):
  """One training step; with `axis_name` (under pmap) the gradients are averaged over it."""

  def step(params, state, x, y):
    g = jax.grad(loss_fn)(params, x, y)
    if axis_name is not None:
      g = jax.lax.pmean(g, axis_name)
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _masks(state):
  masks = sparsity.current_masks(state)
  return {} if masks is None else masks


def single_device(kind):
  tx = make_tx(kind)
  params = initial_params(kind)
  state = tx.init(params)
  step = jax.jit(sgd_step(tx))
  for x, y in batches():
    params, state = step(params, state, x, y)
  return params, _masks(state)


def with_pmap(kind):
  tx = make_tx(kind)
  n = jax.device_count()
  params = jax.tree.map(lambda a: jnp.stack([a] * n), initial_params(kind))
  state = jax.pmap(tx.init)(params)
  step = jax.pmap(sgd_step(tx, "batch"), axis_name="batch")
  for x, y in batches():
    params, state = step(params, state, x.reshape(n, -1, 6), y.reshape(n, -1, 3))
  replicas = [jax.tree.map(lambda a, i=i: a[i], (params, _masks(state))) for i in range(n)]
  for r in replicas[1:]:
    jax.tree.map(np.testing.assert_array_equal, r, replicas[0])
  return replicas[0]


def with_mesh(kind):
  tx = make_tx(kind)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  params = jax.device_put(initial_params(kind), replicated)
  state = jax.jit(tx.init)(params)
  step = jax.jit(sgd_step(tx))
  for x, y in batches():
    params, state = step(params, state, jax.device_put(x, batch_sharding),
                         jax.device_put(y, batch_sharding))
  return params, _masks(state)


def state_keeps_parameter_sharding():
  """Parameters sharded over the mesh (FSDP-style): Sign-In's m is sharded the same way."""
  tx = make_tx()
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  shardings = {"hidden": {"kernel": NamedSharding(mesh, P(None, "data")),
                          "bias": NamedSharding(mesh, P("data"))},
               "out": {"kernel": NamedSharding(mesh, P("model", None)),
                       "bias": NamedSharding(mesh, P())}}
  params = jax.device_put(init_params(), shardings)
  state = jax.jit(tx.init)(params)
  x, y = next(batches())
  step = jax.jit(sgd_step(tx))
  for _ in range(RESET_EVERY + 1):  # through a reset
    params, state = step(params, state, x, y)
  for name in ("hidden", "out"):
    want = shardings[name]["kernel"]
    for arr in (params[name]["kernel"], state.m[name]["kernel"],
                state.inner_state[1][0].trace.m[name]["kernel"]):
      assert arr.sharding.is_equivalent_to(want, arr.ndim), (name, arr.sharding, want)


def main():
  assert jax.device_count() == 8, jax.devices()
  for kind in KINDS:
    params_1, masks_1 = single_device(kind)
    if kind != "signin":  # The masks did change during the run.
      assert any(not np.array_equal(a, b) for a, b in zip(
          jax.tree.leaves(masks_1), jax.tree.leaves(initial_masks()))), kind
    for name, (params, masks) in (("pmap", with_pmap(kind)), ("jit-mesh", with_mesh(kind))):
      for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(masks_1)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{kind} {name}")
      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6,
                                   err_msg=f"{kind} {name}")
      print(f"{kind}: {name}: matches one device after {STEPS} steps")
  state_keeps_parameter_sharding()
  print("sharded state: ok")


if __name__ == "__main__":
  main()
