"""The CPU settings (signin_jax/cpu_speed.py): which environment a run gets, and that main.py and
scripts really start with it (re-executed once), and the CPU pinning the sweep uses."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from signin_jax import cpu_speed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TCMALLOC = "/lib/tcmalloc/libtcmalloc_minimal.so.4"  # Any path: settings() only passes it on.
KNOWN = sorted(cpu_speed.YNN_FLAG_JAXLIB_VERSIONS)[0]


def settings(environ, jaxlib=KNOWN, tcmalloc=TCMALLOC, plugin=None, hugetlb=False):
  return cpu_speed.settings(environ, jaxlib=jaxlib, tcmalloc=tcmalloc, plugin=plugin,
                            hugetlb=hugetlb)


def test_a_plain_cpu_run_gets_the_flag_and_tcmalloc():
  assert settings({}) == {"XLA_FLAGS": cpu_speed.YNN_FLAG, "LD_PRELOAD": TCMALLOC}
  assert cpu_speed.YNN_FLAG == ("--xla_cpu_experimental_ynn_fusion_type="
                                "-individual_convolution")


def test_the_users_xla_flags_and_preloads_are_kept_and_extended():
  user = {"XLA_FLAGS": " --xla_force_host_platform_device_count=8  --xla_dump_to=/tmp/d ",
          "LD_PRELOAD": "/opt/libprofiler.so"}
  changes = settings(user)
  assert changes["XLA_FLAGS"].split() == [
      "--xla_force_host_platform_device_count=8", "--xla_dump_to=/tmp/d", cpu_speed.YNN_FLAG]
  assert changes["LD_PRELOAD"].split() == ["/opt/libprofiler.so", TCMALLOC]
  # Applied again, nothing more is added: no flag or library twice.
  assert settings({**user, **changes}) == {}


@pytest.mark.parametrize("flags", [
    cpu_speed.YNN_FLAG,
    "--xla_cpu_experimental_ynn_fusion_type=-individual_dot",  # The user's own choice wins.
    "--a=1 --xla_cpu_experimental_ynn_fusion_type=dot",
])
def test_a_ynn_flag_already_set_is_not_added_again(flags):
  assert "XLA_FLAGS" not in settings({"XLA_FLAGS": flags})


def test_a_flag_whose_name_only_starts_alike_does_not_count():
  flags = "--xla_cpu_experimental_ynn_fusion_type_other=1"
  assert settings({"XLA_FLAGS": flags})["XLA_FLAGS"] == f"{flags} {cpu_speed.YNN_FLAG}"


@pytest.mark.parametrize("malloc", ["/usr/lib/libjemalloc.so.2", "/x/libmimalloc.so",
                                    "/y/libtcmalloc.so.4"])
def test_tcmalloc_is_not_added_over_another_preloaded_malloc(malloc):
  assert "LD_PRELOAD" not in settings({"LD_PRELOAD": malloc})


@pytest.mark.parametrize("jaxlib", ["0.10.3", "0.11.0", "0.4.38", "0.10.2.dev20261201", None])
def test_a_jaxlib_not_known_to_accept_the_flag_does_not_get_it(jaxlib):
  assert settings({}, jaxlib=jaxlib) == {"LD_PRELOAD": TCMALLOC}


def test_without_tcmalloc_glibcs_hugetlb_tunable_if_glibc_has_it():
  assert settings({}, tcmalloc=None) == {"XLA_FLAGS": cpu_speed.YNN_FLAG}  # glibc < 2.35.
  hugetlb = "glibc.malloc.hugetlb=1"
  assert settings({}, tcmalloc=None, hugetlb=True) == {"XLA_FLAGS": cpu_speed.YNN_FLAG,
                                                       "GLIBC_TUNABLES": hugetlb}
  assert "GLIBC_TUNABLES" not in settings({}, hugetlb=True)  # tcmalloc is the better one.
  user = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
  changes = settings(user, tcmalloc=None, hugetlb=True)
  assert changes["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{hugetlb}"
  assert settings({**user, **changes}, tcmalloc=None, hugetlb=True) == {}
  assert cpu_speed.without_settings({**user, **changes}) == {**user,
                                                             "SIGNIN_JAX_CPU_SETTINGS": "0"}
  for own in ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
              {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}):
    assert "GLIBC_TUNABLES" not in settings(own, tcmalloc=None, hugetlb=True)


def test_glibc_of_this_machine_is_recognised():
  name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  major_minor = tuple(int(v) for v in version.split(".")[:2])
  assert cpu_speed.glibc_has_hugetlb_tunable() == (name == "glibc" and major_minor >= (2, 35))


class _Executed(Exception):
  pass


@pytest.mark.parametrize("tcmalloc, hugetlb, re_executes", [
    ("/x/libtcmalloc_minimal.so.4", False, True),
    (None, True, True),  # GLIBC_TUNABLES too is read only at process start.
    (None, False, False),  # Only XLA_FLAGS: set in place (JAX reads it when it starts).
])
def test_a_script_re_executes_only_when_a_start_up_variable_changes(monkeypatch, tcmalloc,
                                                                   hugetlb, re_executes):
  monkeypatch.setattr(cpu_speed, "find_tcmalloc", lambda: tcmalloc)
  monkeypatch.setattr(cpu_speed, "glibc_has_hugetlb_tunable", lambda: hugetlb)
  monkeypatch.setattr(cpu_speed, "jaxlib_version", lambda: KNOWN)
  for name in ("XLA_FLAGS", "LD_PRELOAD", "GLIBC_TUNABLES", "SIGNIN_JAX_CPU_SETTINGS"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  calls = []

  def execve(path, argv, env):
    calls.append((path, argv, env))
    raise _Executed

  monkeypatch.setattr(os, "execve", execve)
  if re_executes:
    with pytest.raises(_Executed):
      cpu_speed.reexec_with_cpu_settings()
    [(path, argv, env)] = calls
    assert path == sys.executable and argv == [sys.executable] + sys.orig_argv[1:]
    assert env == {**os.environ, **cpu_speed.current_settings(),
                   "SIGNIN_JAX_CPU_SETTINGS_REEXECUTED": str(os.getpid())}
    assert os.environ.get("XLA_FLAGS") is None  # This process is left as it was.
  else:
    cpu_speed.reexec_with_cpu_settings()
    assert not calls and os.environ["XLA_FLAGS"] == cpu_speed.YNN_FLAG


@pytest.mark.parametrize("value", ["0", "false", "OFF", " no "])
def test_the_off_switch(value):
  assert settings({"SIGNIN_JAX_CPU_SETTINGS": value}) == {}
  assert settings({"SIGNIN_JAX_CPU_SETTINGS": "1"}) != {}  # Anything else: on.


@pytest.mark.parametrize("environ, plugin", [
    ({"JAX_PLATFORMS": "cuda"}, None),
    ({"JAX_PLATFORMS": "tpu"}, None),
    ({"JAX_PLATFORMS": "cuda,cpu"}, None),
    ({"JAX_PLATFORMS": "cpu,tpu"}, None),
    ({"TPU_LIBRARY_PATH": "/opt/libtpu.so"}, None),
    ({}, "JAX plugin 'xla_cuda12'"),
    ({}, "libtpu"),
])
def test_nothing_changes_where_jax_may_use_a_gpu_or_tpu(environ, plugin):
  assert settings(environ, plugin=plugin) == {}


def test_jax_platforms_cpu_asks_for_the_settings_even_with_a_plugin_installed():
  assert settings({"JAX_PLATFORMS": "cpu"}, plugin="libtpu") == settings({})
  assert settings({"JAX_PLATFORMS": " cpu , cpu"}, plugin="libtpu") == settings({})


def test_without_settings_gives_back_the_users_environment():
  user = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "LD_PRELOAD": "/a.so",
          "HOME": "/root"}
  with_settings = {**user, **settings(user, tcmalloc="/usr/lib/libtcmalloc_minimal.so.4")}
  assert cpu_speed.without_settings(with_settings) == {**user, "SIGNIN_JAX_CPU_SETTINGS": "0"}
  assert cpu_speed.without_settings(settings({})) == {"SIGNIN_JAX_CPU_SETTINGS": "0"}


def _cli(*args, env=None, **kwargs):
  return subprocess.run([sys.executable, "-m", "signin_jax.cpu_speed", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=60, env=env, **kwargs)


@pytest.mark.parametrize("package", ["jax_plugins/xla_fake_gpu", "libtpu"])
def test_an_installed_accelerator_backend_is_detected_without_importing_it(tmp_path, package):
  os.makedirs(tmp_path / package)
  # Importing it would fail loudly: detection must only find it.
  (tmp_path / package / "__init__.py").write_text("raise SystemExit('imported')\n")
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TPU_LIBRARY_PATH")}
  env["PYTHONPATH"] = os.pathsep.join([REPO, str(tmp_path)])
  described = _cli(env=env)
  assert described.returncode == 0, described.stderr
  name = "JAX plugin 'xla_fake_gpu'" if package.startswith("jax_") else "libtpu"
  assert f"not a CPU run ({name}): no settings." in described.stdout
  assert _cli("--exports", env=env).stdout == ""
  env["JAX_PLATFORMS"] = "cpu"
  assert "not a CPU run" not in _cli(env=env).stdout


def test_exports_evaluate_in_a_shell_to_the_settings(tmp_path):
  env = dict(cpu_speed.without_settings(os.environ), SIGNIN_JAX_CPU_SETTINGS="1",
             JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_dump_to='/tmp/a b'",
             PYTHONPATH=REPO)
  script = ('eval "$(python3 -m signin_jax.cpu_speed --exports)"; '
            'python3 -c "import os, json; print(json.dumps(dict(os.environ)))"')
  proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  got = json.loads(proc.stdout)
  want = {**env, **cpu_speed.current_settings(env)}
  assert {k: got.get(k) for k in ("XLA_FLAGS", "LD_PRELOAD")} == {
      k: want.get(k) for k in ("XLA_FLAGS", "LD_PRELOAD")}


def test_importing_the_module_does_not_import_jax():
  proc = subprocess.run([sys.executable, "-c", "import sys; from signin_jax import cpu_speed; "
                         "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                         "('jax', 'jaxlib', 'numpy')))"], cwd=REPO, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# --- Re-execution: the settings are there when the process starts ------------------------------

_REPORT = textwrap.dedent("""
    import json, os, sys
    with open(os.environ["REPORT"], "a") as f:
      maps = open("/proc/self/maps").read()
      f.write(json.dumps({"pid": os.getpid(), "argv": sys.argv, "utf8": sys.flags.utf8_mode,
                          "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
                          "LD_PRELOAD": os.environ.get("LD_PRELOAD"),
                          "tcmalloc_mapped": "libtcmalloc" in maps}) + "\\n")
""")
_SCRIPT = (f"import sys\nsys.path.insert(0, {REPO!r})\nfrom signin_jax import cpu_speed\n"
           "cpu_speed.reexec_with_cpu_settings()\n" + _REPORT)

needs_tcmalloc = pytest.mark.skipif(
    cpu_speed.find_tcmalloc() is None,
    reason="tcmalloc is not installed (bash launch/install.sh as root installs it)")


def _user_env(tmp_path, **extra):
  env = cpu_speed.without_settings(os.environ)
  env.pop("SIGNIN_JAX_CPU_SETTINGS")
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
             REPORT=str(tmp_path / "report.jsonl"), **extra)
  return env


def _reports(tmp_path):
  with open(tmp_path / "report.jsonl") as f:
    return [json.loads(line) for line in f]


@needs_tcmalloc
def test_a_script_re_executes_itself_once_with_its_argv_and_interpreter_options(tmp_path):
  script = tmp_path / "script.py"
  script.write_text(_SCRIPT)
  env = _user_env(tmp_path)
  proc = subprocess.Popen([sys.executable, "-X", "utf8", str(script), "--a=1", "b c"], env=env,
                          stderr=subprocess.PIPE, text=True)
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 0, stderr
  [report] = _reports(tmp_path)  # The script's body ran once, in the re-executed process ...
  assert report["pid"] == proc.pid  # ... which is the same process (execve), ...
  assert stderr.count("re-executing once") == 1, stderr
  assert report["argv"] == [str(script), "--a=1", "b c"] and report["utf8"] == 1  # ... same line.
  assert report["XLA_FLAGS"] == cpu_speed.environment(env)["XLA_FLAGS"]  # The user's, extended.
  assert report["XLA_FLAGS"].startswith("--xla_force_host_platform_device_count=2")
  assert report["LD_PRELOAD"] == cpu_speed.find_tcmalloc() and report["tcmalloc_mapped"]


@needs_tcmalloc
def test_no_re_execution_when_the_settings_are_there_or_turned_off(tmp_path):
  script = tmp_path / "script.py"
  script.write_text(_SCRIPT)
  applied = cpu_speed.environment(_user_env(tmp_path))
  off = _user_env(tmp_path, SIGNIN_JAX_CPU_SETTINGS="0")
  for env in (applied, off):
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "re-executing" not in proc.stderr, proc.stderr
  with_settings, without = _reports(tmp_path)
  assert with_settings["tcmalloc_mapped"] and with_settings["XLA_FLAGS"] == applied["XLA_FLAGS"]
  assert not without["tcmalloc_mapped"] and without["LD_PRELOAD"] is None
  assert without["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


@needs_tcmalloc
def test_main_py_starts_training_with_the_settings(tmp_path):
  """main.py itself: its config file runs in the process that trains, and reports from there
  (then stops the run with a config error)."""
  config = tmp_path / "report_config.py"
  config.write_text(_REPORT.replace("import json", "import json, ml_collections") +
                    "def get_config():\n  return ml_collections.ConfigDict({'model': 'x'})\n")
  env = _user_env(tmp_path)
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, "main.py"), f"--config={config}",
                           "--workdir=/nonexistent"], env=env,
                          stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode != 0  # The report config is no valid config ...
  [report] = _reports(tmp_path)  # ... but it was read once, in main.py's own process.
  assert report["pid"] == proc.pid and stderr.count("re-executing once") == 1, stderr[-3000:]
  assert report["argv"] == [os.path.join(REPO, "main.py"), f"--config={config}",
                            "--workdir=/nonexistent"]
  assert report["tcmalloc_mapped"]
  assert report["XLA_FLAGS"] == cpu_speed.environment(env)["XLA_FLAGS"]


# --- Pinning: what experiments/sweep.py --parallel uses ---------------------------------------

_AFFINITY = ("import os, threading, json\n"
             "seen = {}\n"
             "t = threading.Thread(target=lambda: seen.update(thread=sorted("
             "os.sched_getaffinity(0))))\n"
             "t.start(); t.join()\n"
             "print(json.dumps({'main': sorted(os.sched_getaffinity(0)), **seen}))")


def test_a_pinned_command_and_its_threads_run_on_the_given_cpus_only():
  for cpu in sorted(os.sched_getaffinity(0)):
    proc = subprocess.run(cpu_speed.pinned_command([sys.executable, "-c", _AFFINITY], [cpu]),
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"main": [cpu], "thread": [cpu]}


def test_pinning_to_no_cpu_is_refused():
  with pytest.raises(ValueError, match="at least one CPU"):
    cpu_speed.pinned_command(["true"], [])
  proc = _cli("--cpus", "a,b", "--", "true")
  assert proc.returncode == 2 and "--cpus must be comma-separated CPU ids" in proc.stderr
