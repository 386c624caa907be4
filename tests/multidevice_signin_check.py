"""Sign-In on 8 emulated CPU devices: pmap and jit over a Mesh agree with one device.

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

from signin_jax import signin

STEPS, RESET_EVERY = 7, 3


def init_params():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  return {"hidden": {"kernel": jax.random.normal(k1, (6, 16)) * 0.5, "bias": jnp.zeros(16)},
          "out": {"kernel": jax.random.normal(k2, (16, 3)) * 0.5, "bias": jnp.zeros(3)}}


def loss_fn(params, x, y):
  h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  return jnp.mean((h @ params["out"]["kernel"] + params["out"]["bias"] - y) ** 2)


def make_tx():
  inner = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.2, momentum=0.9))
  return signin.sign_in(inner, reset_every=RESET_EVERY)


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


def single_device():
  tx = make_tx()
  params = init_params()
  state = tx.init(params)
  step = jax.jit(sgd_step(tx))
  for x, y in batches():
    params, state = step(params, state, x, y)
  return params


def with_pmap():
  tx = make_tx()
  n = jax.device_count()
  params = jax.tree.map(lambda a: jnp.stack([a] * n), init_params())
  state = jax.pmap(tx.init)(params)
  step = jax.pmap(sgd_step(tx, "batch"), axis_name="batch")
  for x, y in batches():
    params, state = step(params, state, x.reshape(n, -1, 6), y.reshape(n, -1, 3))
  replicas = [jax.tree.map(lambda a, i=i: a[i], params) for i in range(n)]
  for r in replicas[1:]:
    jax.tree.map(np.testing.assert_array_equal, r, replicas[0])
  return replicas[0]


def with_mesh():
  tx = make_tx()
  mesh = Mesh(np.array(jax.devices()), ("data",))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  params = jax.device_put(init_params(), replicated)
  state = jax.jit(tx.init)(params)
  step = jax.jit(sgd_step(tx))
  for x, y in batches():
    params, state = step(params, state, jax.device_put(x, batch_sharding),
                         jax.device_put(y, batch_sharding))
  return params


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
  reference = single_device()
  for name, params in (("pmap", with_pmap()), ("jit-mesh", with_mesh())):
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6,
                                 err_msg=name)
    print(f"{name}: matches one device after {STEPS} steps")
  state_keeps_parameter_sharding()
  print("sharded state: ok")


if __name__ == "__main__":
  main()
