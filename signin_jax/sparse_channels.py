"""Which output channels of a sparse model can be removed physically, found from its dataflow.

A Conv or Dense output channel whose every kernel weight is pruned outputs a constant: 0, or
its bias. It can be removed from the network only if that constant is *provably* zero where
every use of the channel ends (the input of a following Conv or Dense, whose matching input
channels are then removed too), so that dropping it changes no logit. Typically the channel
passes through an eval-mode BatchNorm, whose output for a constant input c is
``(c - mean) * rsqrt(var + eps) * scale + bias`` (not just ``bias``), and then an activation:
``relu`` of a negative constant is 0 (the channel is removed), of a positive one is not (the
channel carries a constant and is kept).

How it is found (:func:`analyze`): the model is traced once with ``jax.make_jaxpr``, with every
Flax ``Dense``, ``Conv`` and ``BatchNorm`` call wrapped in identity markers (a small primitive
that carries the call's index), and the jaxpr is flattened (``jit`` and ``custom_jvp`` calls
inlined). From each such producer's output, the dead channels' constants are pushed forward
through the equations that use it:

* a BatchNorm call in eval mode: the constants go through that module's own code (Flax's, run
  on a ``[1, ..., C]`` array of the constants), and the propagation continues from its output;
* an elementwise primitive whose other operands are constant along the channel axis (``max(x,
  0.0)`` of relu, a scale, a ``convert_element_type``): evaluated on the constants, exactly;
* max pooling (``reduce_window_max`` with a window of 1 along channels), sums, means and maxima
  over other axes, a squeeze, and a flattening ``reshape`` (channel c of ``[N, ..., C]``
  becomes inputs ``s * C + c`` of ``[N, S * C]``);
* the input of a Conv or Dense call: a consumer, where the propagation stops.

Anything else that uses the channel (a residual ``add`` with another tensor, a concatenation,
the model's output, a module called twice, a BatchNorm in training mode) stops the producer
from losing any channel. The result names, per layer, the output channels removed, the input
channels (Dense rows / Conv input channels) removed, and the BatchNorm channels kept.
"""

import itertools
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
from jax.extend import core as jex_core
import jax.numpy as jnp
import numpy as np

marker_p = jex_core.Primitive("signin_jax_module_marker")
marker_p.def_abstract_eval(lambda x, **_: x)
marker_p.def_impl(lambda x, **_: x)

_CALLS = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "checkpoint"}
_ELEMENTWISE = {"max", "min", "add", "sub", "mul", "div", "neg", "abs", "sign", "exp", "log",
                "tanh", "logistic", "integer_pow", "pow", "sqrt", "rsqrt", "square",
                "convert_element_type", "erf", "copy", "copy_p", "clamp", "select_n",
                "stop_gradient", "reduce_precision"}


class Call(NamedTuple):
  """One intercepted module call, as recorded while tracing."""
  path: Tuple[str, ...]
  module: Any
  args: tuple  # the arguments after the input
  kwargs: dict
  in_shape: Tuple[int, ...]
  in_dtype: Any
  out_shape: Tuple[int, ...] = ()


class Removal(NamedTuple):
  """Channels removed physically (indices into the original tensors), by '/'-joined path."""
  out_removed: Dict[str, List[int]]  # Conv/Dense: output channels (kernel axis -1)
  in_removed: Dict[str, List[int]]  # Conv: input channels (axis -2); Dense: kernel rows
  norm_kept: Dict[str, List[int]]  # BatchNorm: channels that remain
  kept_constant: Dict[str, List[int]]  # dead output channels kept: they carry a constant
  why_not: Dict[str, str]  # producers with dead channels that keep them all, and why


def path_name(path) -> str:
  return "/".join(path)


def is_layer(module) -> bool:
  return type(module) in (nn.Dense, nn.Conv)  # pylint: disable=unidiomatic-typecheck


def _is_norm(module) -> bool:
  return type(module) is nn.BatchNorm  # pylint: disable=unidiomatic-typecheck


def trace(model, variables, example, apply_kwargs):
  """(calls, flat equations, output keys, {key: shape}) of the model applied to `example`."""
  calls: List[Call] = []

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not (is_layer(module) or _is_norm(module)):
      return next_fun(*args, **kwargs)
    tag = len(calls)
    x = jnp.asarray(args[0])
    calls.append(Call(tuple(module.scope.path), module, args[1:], dict(kwargs),
                      tuple(x.shape), x.dtype))
    y = next_fun(marker_p.bind(x, tag=tag, role="in"), *args[1:], **kwargs)
    calls[tag] = calls[tag]._replace(out_shape=tuple(y.shape))
    return marker_p.bind(y, tag=tag, role="out")

  def run(variables, x):
    with nn.intercept_methods(interceptor):
      return model.apply(variables, x, **apply_kwargs)

  closed = jax.make_jaxpr(run)(variables, example)
  return (calls,) + _flatten(closed)


class _Eqn(NamedTuple):
  primitive: Any
  inputs: list  # int keys or jax Literals
  outputs: list  # int keys
  params: dict


def _flatten(closed):
  """The jaxpr's equations with every call-like primitive inlined, its vars renamed to ints;
  its outputs; the shape of every var."""
  counter = itertools.count()
  eqns: List[_Eqn] = []
  shapes: Dict[int, tuple] = {}

  def new(var):
    key = next(counter)
    shapes[key] = tuple(var.aval.shape)
    return key

  def read(env, atom):
    return atom if isinstance(atom, jex_core.Literal) else env[atom]

  def walk(jaxpr, env):
    for eqn in jaxpr.eqns:
      inputs = [read(env, a) for a in eqn.invars]
      sub = _inner_jaxpr(eqn)
      if sub is not None:
        inner, consts = sub
        inner_env = {v: new(v) for v in inner.constvars}
        inner_env.update(zip(inner.invars, inputs))
        walk(inner, inner_env)
        for outer, v in zip(eqn.outvars, inner.outvars):
          env[outer] = read(inner_env, v)
        continue
      outputs = []
      for v in eqn.outvars:
        env[v] = new(v)
        outputs.append(env[v])
      eqns.append(_Eqn(eqn.primitive, inputs, outputs, dict(eqn.params)))

  jaxpr = closed.jaxpr
  env = {v: new(v) for v in list(jaxpr.constvars) + list(jaxpr.invars)}
  walk(jaxpr, env)
  return eqns, [read(env, v) for v in jaxpr.outvars], shapes


def _inner_jaxpr(eqn):
  if eqn.primitive.name not in _CALLS:
    return None
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    inner = eqn.params.get(key)
    if isinstance(inner, jex_core.ClosedJaxpr):
      inner, consts = inner.jaxpr, inner.consts
    elif isinstance(inner, jex_core.Jaxpr):
      consts = ()
    else:
      continue
    if len(inner.invars) == len(eqn.invars) and len(inner.outvars) == len(eqn.outvars):
      return inner, consts
  return None


class _State(NamedTuple):
  """What is known of a tensor that carries a producer's channels."""
  layout: tuple  # ('last', C) channels on the last axis; ('flat', S, C): index s * C + c
  constants: np.ndarray  # [C], the dead channels' constant values (live channels: 0)
  known: np.ndarray  # [C] bool: the dead channel's value is that constant everywhere


class _Escape(Exception):
  pass


def _variables_of(variables, path):
  """The variables of the module at `path` (every collection), for applying it alone."""
  out = {}
  for collection, tree in variables.items():
    node = tree
    for name in path:
      if not isinstance(node, dict) or name not in node:
        node = None
        break
      node = node[name]
    if node is not None:
      out[collection] = node
  return out


def _norm_of_constants(call: Call, variables, constants, ndim):
  """The BatchNorm's own output for an input that is `constants` along its channels."""
  module = call.module
  running = nn.merge_param("use_running_average", module.use_running_average,
                           call.kwargs.get("use_running_average"))
  if not running:
    raise _Escape(f"BatchNorm {path_name(call.path)} is in training mode")
  if module.axis not in (-1, ndim - 1):
    raise _Escape(f"BatchNorm {path_name(call.path)} normalizes axis {module.axis}")
  x = np.asarray(constants).reshape((1,) * (ndim - 1) + (-1,))
  y = module.clone(parent=None).apply(_variables_of(variables, call.path), jnp.asarray(x),
                                      *call.args, **call.kwargs)
  return np.asarray(y).reshape(-1)


def _channel_vector(value: np.ndarray, channels: int) -> Optional[np.ndarray]:
  """A concrete operand as a per-channel vector, if it is constant along every other axis."""
  value = np.asarray(value)
  if value.ndim == 0:
    return np.full((channels,), value, value.dtype)
  if value.shape[-1] not in (1, channels):
    return None
  flat = value.reshape(-1, value.shape[-1])
  if not (flat == flat[:1]).all():
    return None
  return np.broadcast_to(flat[0], (channels,)).copy()


def analyze(calls: Sequence[Call], eqns, outputs, shapes, variables,
            dead: Dict[int, Tuple], planned) -> Removal:
  """The channels that can be removed, for `dead`: call index -> (dead channel indices,
  their constant output values) of every Conv/Dense producer with dead output channels.
  `planned`: the paths of the layers that run planned products (only those can lose input
  channels)."""
  users: Dict[int, List[Tuple[int, int]]] = {}
  for i, eqn in enumerate(eqns):
    for position, atom in enumerate(eqn.inputs):
      if not isinstance(atom, jex_core.Literal):
        users.setdefault(atom, []).append((i, position))
  marker_out = {eqn.params["tag"]: eqn.outputs[0] for eqn in eqns
                if eqn.primitive is marker_p and eqn.params["role"] == "out"}
  concrete = _concrete_values(eqns)
  counts = {}
  for call in calls:
    counts[call.path] = counts.get(call.path, 0) + 1
  output_keys = {o for o in outputs if not isinstance(o, jex_core.Literal)}

  removal = Removal({}, {}, {}, {}, {})
  for tag, (channels, values) in sorted(dead.items()):
    producer = calls[tag]
    name = path_name(producer.path)
    try:
      if counts[producer.path] > 1:
        raise _Escape("the module is called more than once")
      consumers, norms = _propagate(tag, calls, eqns, users, marker_out, concrete, shapes,
                                    variables, counts, output_keys, channels, values, planned)
    except _Escape as e:
      removal.why_not[name] = str(e)
      continue
    removable = [c for c in channels
                 if all(state.known[c] and state.constants[c] == 0 for _, state in consumers)]
    kept = sorted(set(channels) - set(removable))
    if kept:
      removal.kept_constant[name] = [int(c) for c in kept]
    if not removable or not consumers:
      if not consumers:
        removal.why_not[name] = "its output reaches no Conv or Dense layer"
      continue
    removal.out_removed[name] = sorted(int(c) for c in removable)
    for norm_tag in norms:
      norm = calls[norm_tag]
      size = int(np.asarray(_variables_of(variables, norm.path)["batch_stats"]["mean"]).size)
      removal.norm_kept[path_name(norm.path)] = sorted(set(range(size)) - set(removable))
    for consumer_tag, state in consumers:
      rows = _consumer_rows(state.layout, removable)
      key = path_name(calls[consumer_tag].path)
      removal.in_removed[key] = sorted(set(removal.in_removed.get(key, [])) | set(rows))
  return removal


def _consumer_rows(layout, removable) -> List[int]:
  if layout[0] == "last":
    return [int(c) for c in removable]
  _, spatial, channels = layout
  return [int(s * channels + c) for s in range(spatial) for c in removable]


def _concrete_values(eqns) -> Dict[int, np.ndarray]:
  """Values of the variables computed from literals alone (e.g. a broadcast 0.0)."""
  values: Dict[int, np.ndarray] = {}
  for eqn in eqns:
    if eqn.primitive is marker_p or eqn.primitive.name in _CALLS:
      continue
    args = []
    for atom in eqn.inputs:
      if isinstance(atom, jex_core.Literal):
        args.append(atom.val)
      elif atom in values:
        args.append(values[atom])
      else:
        break
    else:
      if eqn.inputs and eqn.primitive.name in ("broadcast_in_dim", "convert_element_type",
                                               "reshape") | _ELEMENTWISE:
        try:
          out = eqn.primitive.bind(*args, **eqn.params)
        except Exception:  # pylint: disable=broad-except
          continue
        outs = out if eqn.primitive.multiple_results else [out]
        for key, value in zip(eqn.outputs, outs):
          values[key] = np.asarray(value)
  return values


def _propagate(tag, calls, eqns, users, marker_out, concrete, shapes, variables, counts,
               output_keys, channels, values, planned):
  """(consumers [(call index, state at its input)], BatchNorm call indices on the way)."""
  start = marker_out[tag]
  n_channels = shapes[start][-1]
  constants = np.zeros((n_channels,), np.asarray(values).dtype)
  constants[list(channels)] = values
  known = np.zeros((n_channels,), bool)
  known[list(channels)] = True
  todo = [(start, _State(("last", n_channels), constants, known))]
  consumers, norms = [], []
  seen = set()
  while todo:
    key, state = todo.pop()
    if key in seen:
      raise _Escape("its channels reach one tensor by two paths")
    seen.add(key)
    if key in output_keys:
      raise _Escape("its channels reach the model's output")
    for index, position in users.get(key, []):
      eqn = eqns[index]
      if eqn.primitive is marker_p:
        call_tag = eqn.params["tag"]
        call = calls[call_tag]
        if eqn.params["role"] != "in" or counts[call.path] > 1:
          raise _Escape(f"its channels reach {path_name(call.path)}, called more than once")
        if _is_norm(call.module):
          if state.layout[0] != "last":
            raise _Escape(f"BatchNorm {path_name(call.path)} after a reshape")
          out = _norm_of_constants(call, variables, state.constants, len(shapes[key]))
          norms.append(call_tag)
          todo.append((marker_out[call_tag], state._replace(constants=out)))
        elif is_layer(call.module) and call.path in planned:
          consumers.append((call_tag, state))
        else:
          raise _Escape(f"its channels reach {path_name(call.path)}")
        continue
      todo.append((eqn.outputs[0], _step(eqn, position, state, concrete, shapes[key])))
  return consumers, norms


def _step(eqn, position, state: _State, concrete, in_shape) -> _State:
  """The state of the equation's output (its operand `position`, of shape `in_shape`,
  carries the channels)."""
  name = eqn.primitive.name
  rank = len(in_shape)
  layout = state.layout
  if name in _ELEMENTWISE:
    if layout[0] != "last":
      raise _Escape(f"'{name}' after a reshape")
    channels = layout[1]
    args = []
    for i, atom in enumerate(eqn.inputs):
      if i == position:
        args.append(state.constants)
        continue
      value = atom.val if isinstance(atom, jex_core.Literal) else concrete.get(atom)
      vector = None if value is None else _channel_vector(value, channels)
      if vector is None:
        raise _Escape(f"its channels meet another tensor in '{name}'")
      args.append(vector)
    constants = np.asarray(eqn.primitive.bind(*[jnp.asarray(a) for a in args], **eqn.params))
    return _State(layout, constants, state.known)
  if name == "reduce_window_max":
    if eqn.params["window_dimensions"][-1] != 1 or eqn.params["window_strides"][-1] != 1 \
        or tuple(eqn.params["padding"][-1]) != (0, 0):
      raise _Escape("a pooling window across channels")
    return state
  if layout[0] != "last":
    raise _Escape(f"'{name}' after a reshape")
  channels = layout[1]
  if name in ("reduce_sum", "reduce_max", "reduce_min"):
    if any(a in (-1, rank - 1) for a in eqn.params["axes"]):
      raise _Escape(f"'{name}' over the channel axis")
    known = state.known
    if name == "reduce_sum":  # a sum of copies of c is exactly c only for c = 0
      known = known & (state.constants == 0)
    return _State(layout, state.constants, known)
  if name in ("squeeze", "expand_dims"):
    if any(a in (-1, rank - 1) for a in eqn.params.get("dimensions", ())):
      raise _Escape(f"'{name}' of the channel axis")
    return state
  if name == "reshape":
    new_sizes = tuple(eqn.params["new_sizes"])
    if eqn.params.get("dimensions") is not None:
      raise _Escape("a transposing reshape")
    if len(new_sizes) >= 2 and new_sizes[-1] == channels:
      return state  # the channel axis stays last and whole
    if len(new_sizes) == 2 and new_sizes[0] == in_shape[0]:  # [N, ..., C] -> [N, S * C]
      return _State(("flat", new_sizes[1] // channels, channels), state.constants, state.known)
    raise _Escape("a reshape that moves the channel axis")
  raise _Escape(f"its channels reach '{name}'")
