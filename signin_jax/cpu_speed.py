"""Two settings that make CPU training 1.7-2.3x faster, in one place, applied before JAX starts.

1. ``XLA_FLAGS`` gets ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``
   (the leading ``-`` removes one type from XLA's default list). jaxlib 0.10.2 sends most
   convolutions of a train step (45 of ResNet-20's 62, every weight-gradient one among them) to
   its new YNNPACK path, which is slow on this project's machines; the flag sends them back to
   XLA's own convolutions. Float rounding differs, by about float32's own error against
   float64 (benchmarks/cpu_settings.py, gradient at initialization, relative: ResNet-20 1.4e-3
   between with and without the flag, 1.1e-3 / 1.6e-3 from float64 without / with it; the
   quickstart CNN 1.9e-7, 4.7e-7 / 4.5e-7).
   An XLA flag that the installed jaxlib does not know aborts the process, so it is added only
   for the jaxlib versions in ``YNN_FLAG_JAXLIB_VERSIONS`` (each checked to accept it).
2. ``LD_PRELOAD`` gets tcmalloc (Debian ``libtcmalloc-minimal4``, installed by
   launch/install.sh), when it is installed. With glibc's malloc a train step's large temporary
   buffer (~235 MB for ResNet-20 at batch 128) is mapped afresh on every step (~57,000 page
   faults a step); tcmalloc keeps it. Results are bitwise identical. Without tcmalloc, glibc
   (2.35 or later) gets ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (transparent huge pages for
   its allocations), a weaker help that needs no install (1.19-1.32x against tcmalloc's
   1.10-1.66x alone, by the same benchmark; also bitwise identical). Both only take effect in a
   process that starts with them, so a script re-executes itself once
   (:func:`reexec_with_cpu_settings`).

Only for a CPU run: ``JAX_PLATFORMS`` names only ``cpu``, or it is unset and no accelerator
backend is installed (no module in JAX's ``jax_plugins`` namespace package or entry-point group,
which is how the CUDA and ROCm plugins install; no ``libtpu``; no ``TPU_LIBRARY_PATH``; no
``+cuda``/``+rocm`` jaxlib build). On a machine with a GPU or TPU backend nothing changes (there,
``JAX_PLATFORMS=cpu`` asks for the settings). A user's own ``XLA_FLAGS``, ``LD_PRELOAD`` and
``GLIBC_TUNABLES`` are kept and extended: the flag is not added if ``XLA_FLAGS`` already sets
``--xla_cpu_experimental_ynn_fusion_type`` in any way; neither tcmalloc nor the glibc tunable
if ``LD_PRELOAD`` already holds a malloc (tcmalloc, jemalloc, mimalloc); the tunable not if
``GLIBC_TUNABLES`` sets ``glibc.malloc.hugetlb``.

Off: ``SIGNIN_JAX_CPU_SETTINGS=0`` in the environment (of main.py, tests/run.sh, sweeps).

Used by main.py and the benchmarks (:func:`reexec_with_cpu_settings`, first thing, before jax
is imported), experiments/sweep.py (:func:`environment` for its runs, :func:`pinned_command`
for ``--parallel``) and tests/run.sh (``eval "$(python3 -m signin_jax.cpu_speed --exports)"``).
``python -m signin_jax.cpu_speed`` prints what would be applied here and why.

This module imports only the standard library (importing it must not start JAX).
"""

import argparse
import importlib.metadata
import importlib.util
import os
import pkgutil
import platform
import re
import shlex
import sys
import sysconfig
from typing import Dict, List, Mapping, Optional, Sequence

OFF_VARIABLE = "SIGNIN_JAX_CPU_SETTINGS"
YNN_FLAG_NAME = "--xla_cpu_experimental_ynn_fusion_type"
YNN_FLAG = f"{YNN_FLAG_NAME}=-individual_convolution"
# jaxlib versions known to accept YNN_FLAG: each was run (2026-12-07, this project's machine)
# with the flag on a jitted gradient of a 3x3 convolution, and with a bogus value of the flag,
# which aborts; their binaries hold the flag and LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
# Its speed-up is measured on 0.10.2 (the pinned version: benchmarks/cpu_settings.py); on 0.9.2,
# 0.10.0, 0.10.1 that gradient was faster with it too (median of 5 alternated rounds 2.2x,
# 2.6x, 1.1x; a heavily loaded machine). Other versions (older ones lack the flag, newer ones
# may drop it) get no flag: add one here only after the same check.
YNN_FLAG_JAXLIB_VERSIONS = frozenset({"0.9.2", "0.10.0", "0.10.1", "0.10.2"})
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_OTHER_MALLOCS = re.compile(r"tcmalloc|jemalloc|mimalloc")
HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
# Read by the dynamic loader and libc when a process starts: changing them needs a re-execution.
_STARTUP_VARIABLES = ("LD_PRELOAD", "GLIBC_TUNABLES")
# Set in the re-executed process to its pid (execve keeps the pid): that process does not
# re-execute again, while its children (other pids) decide for themselves.
_REEXEC_MARKER = "SIGNIN_JAX_CPU_SETTINGS_REEXECUTED"
_OFF_VALUES = ("0", "false", "no", "off")


def jaxlib_version() -> Optional[str]:
  """The installed jaxlib's version (without importing it), or None."""
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None


def find_tcmalloc() -> Optional[str]:
  """The path of tcmalloc in the system's library directories, or None."""
  arch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
  for directory in (f"/usr/lib/{arch}", f"/lib/{arch}", "/usr/lib64", "/usr/lib",
                    "/usr/local/lib"):
    for name in TCMALLOC_NAMES:
      path = os.path.join(directory, name)
      if os.path.isfile(path):
        return path
  return None


def glibc_has_hugetlb_tunable() -> bool:
  """Whether this process's C library is glibc 2.35 or later (glibc.malloc.hugetlb exists)."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    return name == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 35)
  except (AttributeError, ValueError, OSError):
    return False


def _plugin_installed() -> Optional[str]:
  """The name of an installed JAX accelerator backend, or None (nothing is imported)."""
  names = [e.name for e in importlib.metadata.entry_points(group="jax_plugins")]
  spec = importlib.util.find_spec("jax_plugins")
  if spec is not None and spec.submodule_search_locations:
    names += [m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)]
  if names:
    return f"JAX plugin {sorted(names)[0]!r}"
  if importlib.util.find_spec("libtpu") is not None:
    return "libtpu"
  build = re.search(r"\+(cuda|rocm)", jaxlib_version() or "")
  return f"a {build.group(1)} build of jaxlib" if build else None


def accelerator(environ: Mapping[str, str], plugin: Optional[str] = None) -> Optional[str]:
  """Why this run may not be a CPU run (None: it is one). `plugin`: an installed accelerator
  backend (:func:`_plugin_installed`), consulted only when JAX_PLATFORMS is unset."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    names = [p.strip() for p in platforms.split(",") if p.strip()]
    return None if names and set(names) == {"cpu"} else f"JAX_PLATFORMS={platforms}"
  if environ.get("TPU_LIBRARY_PATH"):
    return "TPU_LIBRARY_PATH is set"
  return plugin


def is_off(environ: Mapping[str, str]) -> bool:
  return environ.get(OFF_VARIABLE, "").strip().lower() in _OFF_VALUES


def settings(environ: Mapping[str, str], *, jaxlib: Optional[str], tcmalloc: Optional[str],
             plugin: Optional[str] = None, hugetlb: bool = False) -> Dict[str, str]:
  """The variables to set (with their full new values) for a run in `environ`.

  Pure: `jaxlib` is the installed jaxlib version, `tcmalloc` the library's path (None: absent),
  `plugin` an installed accelerator backend's name (None: none), `hugetlb` whether glibc has
  the hugetlb tunable (the fallback without tcmalloc).
  """
  if is_off(environ) or accelerator(environ, plugin):
    return {}
  changes = {}
  flags = environ.get("XLA_FLAGS", "")
  user_set = any(f == YNN_FLAG_NAME or f.startswith(YNN_FLAG_NAME + "=") for f in flags.split())
  if jaxlib in YNN_FLAG_JAXLIB_VERSIONS and not user_set:
    changes["XLA_FLAGS"] = f"{flags.strip()} {YNN_FLAG}".strip()
  preload = environ.get("LD_PRELOAD", "")
  if _OTHER_MALLOCS.search(preload):
    return changes  # The user chose a malloc.
  tunables = environ.get("GLIBC_TUNABLES", "")
  if tcmalloc:
    changes["LD_PRELOAD"] = f"{preload.strip()} {tcmalloc}".strip()  # ld.so: space-separated.
  elif hugetlb and "glibc.malloc.hugetlb=" not in tunables:
    changes["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables.strip(), HUGETLB_TUNABLE]))
  return changes


def current_settings(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
  """:func:`settings` for this machine."""
  environ = os.environ if environ is None else environ
  return settings(environ, jaxlib=jaxlib_version(), tcmalloc=find_tcmalloc(),
                  plugin=None if environ.get("JAX_PLATFORMS") else _plugin_installed(),
                  hugetlb=glibc_has_hugetlb_tunable())


def environment(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
  """`environ` (default: this process's) with the settings: the environment for a
  subprocess that trains, e.g. ``subprocess.run(cmd, env=cpu_speed.environment())``."""
  environ = dict(os.environ if environ is None else environ)
  return {**environ, **current_settings(environ)}


def without_settings(environ: Mapping[str, str]) -> Dict[str, str]:
  """`environ` with everything this module adds taken out again (for baselines)."""
  env = dict(environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if f != YNN_FLAG]
  preload = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split()
             if os.path.basename(p) not in TCMALLOC_NAMES]
  tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and t != HUGETLB_TUNABLE]
  for name, kept, separator in (("XLA_FLAGS", flags, " "), ("LD_PRELOAD", preload, " "),
                                ("GLIBC_TUNABLES", tunables, ":")):
    if kept:
      env[name] = separator.join(kept)
    else:
      env.pop(name, None)
  env.pop(_REEXEC_MARKER, None)
  env[OFF_VARIABLE] = "0"
  return env


def reexec_with_cpu_settings() -> None:
  """Gives this script's process the settings: call it first, before jax is imported.

  If they change nothing (already applied, turned off, not a CPU run) it returns. If only
  XLA_FLAGS changes, it sets it and returns (XLA reads it when JAX starts its backend).
  Otherwise (LD_PRELOAD or GLIBC_TUNABLES) it re-executes the same command line once with the
  new environment (same pid, argv and interpreter options), printing one line to stderr that
  says so.
  """
  if os.environ.get(_REEXEC_MARKER) == str(os.getpid()):
    return  # This is the re-executed process.
  changes = {k: v for k, v in current_settings().items() if os.environ.get(k) != v}
  if not changes:
    return
  startup = [k for k in _STARTUP_VARIABLES if k in changes]
  if not startup or not sys.executable or sys.argv[:1] in ([""], ["-"]):
    for k in startup:  # Cannot re-execute (interactive, stdin): only what acts later.
      del changes[k]
    os.environ.update(changes)
    return
  added = ", ".join(f"{k} += {v[len(os.environ.get(k, '')):].strip(' :')}"
                    for k, v in changes.items())
  print(f"signin_jax: CPU settings ({OFF_VARIABLE}=0 turns them off): {added}; "
        "re-executing once.", file=sys.stderr, flush=True)
  sys.stdout.flush()
  env = {**os.environ, **changes, _REEXEC_MARKER: str(os.getpid())}
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


def pinned_command(command: Sequence[str], cpus: Sequence[int]) -> List[str]:
  """`command` run with its CPU affinity set to `cpus` (and inherited by all its threads and
  children): through this module's ``--cpus``, which sets it and then executes `command`."""
  if not cpus:
    raise ValueError("pinned_command needs at least one CPU.")
  return [sys.executable, "-m", "signin_jax.cpu_speed", "--cpus",
          ",".join(str(c) for c in cpus), "--", *command]


def _describe() -> str:
  environ = os.environ
  plugin = None if environ.get("JAX_PLATFORMS") else _plugin_installed()
  lines = [f"jaxlib {jaxlib_version()}, tcmalloc {find_tcmalloc() or 'not installed'}"]
  if is_off(environ):
    lines.append(f"{OFF_VARIABLE}={environ[OFF_VARIABLE]}: no settings.")
  elif accelerator(environ, plugin):
    lines.append(f"not a CPU run ({accelerator(environ, plugin)}): no settings.")
  else:
    changes = current_settings()
    if jaxlib_version() not in YNN_FLAG_JAXLIB_VERSIONS:
      lines.append(f"{YNN_FLAG} not added: jaxlib {jaxlib_version()} is not known to accept it.")
    lines += [f"{k}={v}" for k, v in changes.items()] or ["nothing to add (already set)."]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m signin_jax.cpu_speed", description=__doc__.split("\n")[0])
  parser.add_argument("--exports", action="store_true",
                      help="Print shell 'export' lines of the settings (for eval).")
  parser.add_argument("--cpus", help="Comma-separated CPU ids: run the command after '--' "
                                     "pinned to them.")
  parser.add_argument("command", nargs="*", help="With --cpus: the command to run.")
  args = parser.parse_args(argv)
  if args.cpus is not None:
    if not args.command:
      parser.error("--cpus needs a command after '--'.")
    try:
      cpus = {int(c) for c in args.cpus.split(",")}
    except ValueError:
      parser.error(f"--cpus must be comma-separated CPU ids, got {args.cpus!r}.")
    os.sched_setaffinity(0, cpus)
    os.execvp(args.command[0], args.command)
  if args.exports:
    for name, value in current_settings().items():
      print(f"export {name}={shlex.quote(value)}")
    return
  print(_describe())


if __name__ == "__main__":
  main()
