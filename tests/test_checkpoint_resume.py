"""Checkpoints: SIGKILL/SIGTERM and resume bitwise, corrupt checkpoints, non-finite losses.

The runs are tiny (LeNet-300-100 at width 1/8 on mock Fashion-MNIST, batch 8) and short, so
each whole run takes seconds; the killed runs are separate processes.
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import fashion_mnist_quickstart
from signin_jax import checkpointing
from signin_jax import input_pipeline
from signin_jax import masks as masks_lib
from signin_jax import run_start
from signin_jax import sparsity
from signin_jax import train
from tests import tfds_mock

# One pytest-xdist worker runs this module: its tests share a module-scoped fixture.
pytestmark = pytest.mark.xdist_group("checkpoint_resume")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCK_EXAMPLES = 64
NUM_STEPS = 60
CHECKPOINT_EVERY = 5


def tiny_config():
  config = fashion_mnist_quickstart.get_config()
  config.model = "lenet300_100"
  config.width = 8
  config.batch_size = 8
  config.num_train_steps = NUM_STEPS
  config.checkpoint_every_steps = CHECKPOINT_EVERY
  config.log_every_steps = 20
  config.keep_checkpoints = 3
  config.data_dir = None
  return config


def run_in_process(workdir, config=None):
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    return train.train_and_evaluate(config or tiny_config(), str(workdir))


_CHILD = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {REPO!r})
    from tests import tfds_mock
    from tests.test_checkpoint_resume import tiny_config
    from signin_jax import train
    with tfds_mock.mock_data(num_examples={MOCK_EXAMPLES}):
      train.train_and_evaluate(tiny_config(), sys.argv[1])
""")


def start_child(workdir, log_path):
  with open(log_path, "w") as log:  # A file, not a pipe: a full pipe would stall the child.
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(workdir)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_for_checkpoint(proc, workdir, step, log_path, timeout=120):
  path = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    if proc.poll() is not None:
      raise AssertionError(f"child exited early:\n{open(log_path).read()[-3000:]}")
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.01)


def final_weights(workdir):
  with np.load(os.path.join(workdir, "final_weights.npz")) as f:
    return {k: f[k] for k in f.files}


def assert_bitwise_equal(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run: its final weights are what every interrupted run must reproduce."""
  workdir = tmp_path_factory.mktemp("reference")
  summary = run_in_process(workdir)
  return {"workdir": str(workdir), "weights": final_weights(workdir), "summary": summary}


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_identical(reference, tmp_path):
  workdir = str(tmp_path / "killed")
  log_path = str(tmp_path / "child.log")
  child = start_child(workdir, log_path)
  wait_for_checkpoint(child, workdir, CHECKPOINT_EVERY, log_path)
  assert child.poll() is None, "the run finished before it could be killed"
  child.send_signal(signal.SIGKILL)
  child.wait()
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps and steps[-1] < NUM_STEPS  # Killed mid-run ...
  summary = run_in_process(workdir)  # ... and resumed with the same command.
  assert_bitwise_equal(final_weights(workdir), reference["weights"])
  assert summary["test_accuracy"] == reference["summary"]["test_accuracy"]
  assert summary["sign_flips_vs_init"] == reference["summary"]["sign_flips_vs_init"]


def test_sigterm_saves_a_checkpoint_and_returns_cleanly(reference, tmp_path):
  workdir = str(tmp_path / "terminated")
  checkpoint = os.path.join(workdir, "checkpoints", str(CHECKPOINT_EVERY))

  def terminate_after_first_checkpoint():
    while not os.path.isdir(checkpoint):
      time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGTERM)

  # The trainer handles SIGTERM while it runs; should the signal come later, ignore it here.
  previous = signal.signal(signal.SIGTERM, lambda *_: None)
  try:
    threading.Thread(target=terminate_after_first_checkpoint, daemon=True).start()
    result = run_in_process(workdir)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert result["preempted"] and CHECKPOINT_EVERY <= result["step"] < NUM_STEPS
  # The stop step was saved (and finalized) before returning; no summary yet.
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(result["step"])))
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  run_in_process(workdir)
  assert_bitwise_equal(final_weights(workdir), reference["weights"])


def _corrupt_arrays(step_dir):
  """Flips a byte in the middle of every array data file of the checkpoint's state."""
  corrupted = 0
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for name in files:
      if os.sep + "d" in root:
        path = os.path.join(root, name)
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(path, "wb").write(bytes(data))
        corrupted += 1
  assert corrupted


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, caplog):
  workdir = str(tmp_path / "corrupt")
  shutil.copytree(reference["workdir"], workdir)
  for name in ("summary.json", "final_weights.npz"):
    os.remove(os.path.join(workdir, name))
  checkpoints = os.path.join(workdir, "checkpoints")
  _corrupt_arrays(os.path.join(checkpoints, str(NUM_STEPS)))
  os.makedirs(os.path.join(checkpoints, f"{NUM_STEPS + 5}.orbax-checkpoint-tmp-123"))  # Partial.
  with caplog.at_level(logging.INFO):
    run_in_process(workdir)
  log = caplog.text
  assert f"Checkpoint at step {NUM_STEPS} is corrupt" in log
  assert f"Resuming from the checkpoint at step {NUM_STEPS - CHECKPOINT_EVERY}" in log
  assert "Ignoring incomplete checkpoint" in log
  moved = os.listdir(os.path.join(workdir, "checkpoints_corrupt"))
  assert len(moved) == 1 and moved[0].startswith(f"{NUM_STEPS}.")  # Kept, not deleted.
  assert_bitwise_equal(final_weights(workdir), reference["weights"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rigl", "acdc"])
def test_resume_across_a_mask_update_is_bitwise(method, tmp_path):
  """The masks live in the optimizer state: a run resumed from a checkpoint taken before mask
  updates ends bitwise equal to the uninterrupted run (30 steps, resumed at step 10: RigL
  updates at steps 5, 10, 15, 20; AC/DC changes phase at steps 4, 7, 10, ..., 25)."""
  config = tiny_config()
  config.num_train_steps = 30
  config.schedule.method = method
  config.schedule.update_every_steps = 5
  config.schedule.phase = 0.1
  config.keep_checkpoints = 30 // CHECKPOINT_EVERY
  uninterrupted = str(tmp_path / "uninterrupted")
  run_in_process(uninterrupted, config)
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(uninterrupted, "checkpoints", "10"),
                  os.path.join(resumed, "checkpoints", "10"))
  run_in_process(resumed, config)
  want, got = final_weights(uninterrupted), final_weights(resumed)
  assert_bitwise_equal(got, want)
  masks = [k for k in want if k.startswith("masks/")]
  kept = sum(int(want[k].sum()) for k in masks) / sum(want[k].size for k in masks)
  assert masks and kept == pytest.approx(1 - config.sparsity, abs=1e-3)  # Ended sparse.
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  assert logged[0]["step"] > 10  # It did resume, from step 10.


@pytest.mark.slow
def test_a_fresh_start_checks_its_masks_and_a_resumed_run_does_not(tmp_path, monkeypatch):
  """RigL with the ERK budget from a uniform-budget mask: a fresh run is refused before it
  trains, naming the layer; a run resumed from a checkpoint (whose masks are the ones in use),
  here one written as by a version without the check, continues, bitwise as uninterrupted."""
  config = tiny_config()
  config.num_train_steps, config.keep_checkpoints = 20, 4
  config.schedule.method, config.schedule.update_every_steps = "rigl", 5

  def uniform_budget_masks(config, key, params, **unused):
    return masks_lib.create_masks(key, params, config.sparsity, distribution="uniform")

  monkeypatch.setattr(run_start, "create_masks", uniform_budget_masks)
  with pytest.raises(ValueError, match=r"'dense1/kernel' keeps [\d,]+ of [\d,]+ entries where "
                                       r"the schedule needs [\d,]+"):
    run_in_process(tmp_path / "fresh", config)
  assert not os.path.exists(os.path.join(tmp_path, "fresh", "checkpoints"))
  old = str(tmp_path / "unchecked")
  with monkeypatch.context() as unchecked:  # as a version without the check would run it
    unchecked.setattr(sparsity, "check_start_masks", lambda *args: None)
    run_in_process(old, config)
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(old, "checkpoints", "10"),
                  os.path.join(resumed, "checkpoints", "10"))
  run_in_process(resumed, config)
  assert_bitwise_equal(final_weights(resumed), final_weights(old))
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    assert json.loads(f.readline())["step"] > 10  # It did resume, from step 10.


def _tiny_state(value):
  return {"w": jnp.full((3, 2), value, jnp.float32), "step": jnp.array(int(value), jnp.int32)}


def test_checksum_mismatch_and_structure_mismatch(tmp_path):
  manager = checkpointing.create_manager(str(tmp_path / "ckpt"), keep=3)
  for step in (1, 2):
    checkpointing.save(manager, step, state=_tiny_state(step), extras={"m": jnp.ones(2, bool)},
                       meta={"data_position": step})
  manager.wait_until_finished()
  meta_path = tmp_path / "ckpt" / "2" / "meta" / "metadata"
  meta = json.loads(meta_path.read_text())
  meta["checksums"]["state"][1] += 1  # As if one array no longer read back as written ...
  meta["meta_digest"] = checkpointing._meta_digest(meta)  # ... with self-consistent metadata.
  meta_path.write_text(json.dumps(meta))
  messages = []
  restored = checkpointing.restore_latest_good(
      manager, state_target=_tiny_state(0), extras_target={"m": jnp.zeros(2, bool)},
      quarantine_dir=str(tmp_path / "bad"), log=messages.append)
  assert restored.step == 1 and float(restored.state["w"][0, 0]) == 1.0
  assert len(messages) == 1 and "checksum mismatch" in messages[0]
  assert manager.all_steps() == [1]
  with pytest.raises(ValueError, match="different model"):
    checkpointing.restore_latest_good(
        manager, state_target={"w": jnp.zeros((4, 2))}, extras_target={"m": jnp.zeros(2, bool)},
        quarantine_dir=str(tmp_path / "bad"))
  assert manager.all_steps() == [1]  # A config mistake moves nothing.
  manager.close()


def test_edited_fingerprint_is_corruption_not_another_config(tmp_path):
  """One hex digit of the newest checkpoint's structure fingerprint edited: that checkpoint is
  set aside like any other corruption and the previous one is restored (a genuinely different
  structure, with intact metadata, still raises: the test above)."""
  manager = checkpointing.create_manager(str(tmp_path / "ckpt"), keep=3)
  for step in (1, 2):
    checkpointing.save(manager, step, state=_tiny_state(step), extras={"m": jnp.ones(2, bool)},
                       meta={"data_position": step})
  manager.wait_until_finished()
  meta_path = tmp_path / "ckpt" / "2" / "meta" / "metadata"
  meta = json.loads(meta_path.read_text())
  digit = meta["fingerprint"]["state"][0]
  meta["fingerprint"]["state"] = ("0" if digit != "0" else "1") + meta["fingerprint"]["state"][1:]
  meta_path.write_text(json.dumps(meta))
  messages = []
  restored = checkpointing.restore_latest_good(
      manager, state_target=_tiny_state(0), extras_target={"m": jnp.zeros(2, bool)},
      quarantine_dir=str(tmp_path / "bad"), log=messages.append)
  assert restored.step == 1 and float(restored.state["w"][0, 0]) == 1.0
  assert len(messages) == 1 and "metadata digest mismatch" in messages[0]
  assert manager.all_steps() == [1] and len(os.listdir(tmp_path / "bad")) == 1
  manager.close()


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_good_checkpoints(tmp_path):
  config = tiny_config()
  config.checkpoint_every_steps = 2
  config.lr_schedule = "step"
  # From step 7 on the learning rate is 1e30: the parameters blow up and the loss follows.
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    steps_per_epoch = input_pipeline.steps_per_epoch(config.dataset, config.batch_size)
  config.lr_step_epochs = (6 / steps_per_epoch,)
  config.lr_step_factor = 1e30 / config.learning_rate
  workdir = tmp_path / "nan"
  with pytest.raises(train.NonFiniteLossError, match="non-finite at step") as info:
    run_in_process(workdir, config)
  failed_at = int(str(info.value).split("non-finite at step ")[1].split(";")[0])
  assert failed_at > 6
  steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
  assert steps and steps[-1] < failed_at and f"step {steps[-1]}" in str(info.value)
  manager = checkpointing.create_manager(str(workdir / "checkpoints"), keep=3)
  for step in steps:  # Every checkpoint written holds a finite state.
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state)
               if np.issubdtype(np.asarray(x).dtype, np.floating))
  manager.close()
  assert not os.path.exists(workdir / "summary.json")


def test_each_epoch_logs_sign_flips_betas_and_test_accuracy(reference):
  with open(os.path.join(reference["workdir"], "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  by_step = {}
  for r in records:
    if "step" in r:
      by_step.setdefault(r["step"], {}).update(r)
  with tfds_mock.mock_data(num_examples=MOCK_EXAMPLES):
    steps_per_epoch = input_pipeline.steps_per_epoch("fashion_mnist", 8)
  epoch_ends = list(range(steps_per_epoch, NUM_STEPS + 1, steps_per_epoch)) + [NUM_STEPS]
  assert len(epoch_ends) > 3
  for step in epoch_ends:
    logged = by_step[step]
    assert 0.0 < logged["sign_flips_vs_init/total"] < 1.0
    assert 0.0 <= logged["sign_flips_vs_prev_epoch/total"] < 1.0
    assert 0.0 <= logged["test_accuracy"] <= 1.0
    # beta = m^2 - w^2 decays between re-splits (weight decay, discrete steps) and is read
    # before the re-split at the epoch boundary sets it back to 1.
    assert 0.0 < logged["beta/total"] < 1.0
  # Within reset periods beta is logged at every log step too.
  within = [s for s in range(20, NUM_STEPS, 20) if s not in epoch_ends]
  assert within and all(0.0 < by_step[s]["beta/total"] < 1.0 for s in within)
  layers = {k.split("/", 1)[1] for k in by_step[NUM_STEPS] if k.startswith("sign_flips_vs_init/")}
  assert {"dense1/kernel", "dense2/kernel", "classifier/kernel", "total"} <= layers
  assert by_step[NUM_STEPS]["sign_flips_vs_init/total"] == pytest.approx(
      reference["summary"]["sign_flips_vs_init"]["total"])


# --- Resuming under another config; what a refused run leaves --------------------------------

def short_rigl_config():
  config = tiny_config()
  config.num_train_steps, config.log_every_steps = 10, 5
  config.schedule.method, config.schedule.update_every_steps = "rigl", 2
  return config


def workdir_snapshot(workdir):
  """Every file and directory under ``workdir`` with its size, mtime and content digest."""
  import hashlib
  found = {}
  for root, dirs, files in os.walk(workdir):
    for name in dirs + files:
      path = os.path.join(root, name)
      stat = os.stat(path)
      digest = (hashlib.sha256(open(path, "rb").read()).hexdigest() if name in files else None)
      found[os.path.relpath(path, workdir)] = (stat.st_size if digest else 0, stat.st_mtime_ns,
                                               digest)
  return found


@pytest.fixture(scope="module")
def finished_rigl_run(tmp_path_factory):
  """A 10-step RigL run (checkpoints at steps 5 and 10), to copy and resume under changes."""
  workdir = str(tmp_path_factory.mktemp("rigl") / "run")
  run_in_process(workdir, short_rigl_config())
  return workdir


def _copy_with_unfinished_save(source, workdir):
  shutil.copytree(source, workdir)
  # What a killed save leaves; orbax's CheckpointManager deletes it when it is created.
  os.makedirs(os.path.join(workdir, "checkpoints", "15.orbax-checkpoint-tmp-7", "state"))


def test_resume_under_another_config_is_refused_naming_the_fields(finished_rigl_run, tmp_path):
  workdir = str(tmp_path / "run")
  _copy_with_unfinished_save(finished_rigl_run, workdir)
  before = workdir_snapshot(workdir)
  config = short_rigl_config()
  config.schedule.method = "set"  # Same state structure as RigL: the fingerprint matches.
  config.learning_rate = 0.2
  with pytest.raises(ValueError, match=r"Cannot resume .* differs in config.learning_rate: "
                                       r"0.1 in the checkpoint, 0.2 now; "
                                       r"config.schedule.method: 'rigl' in the checkpoint, "
                                       r"'set' now\.") as info:
    run_in_process(workdir, config)
  assert "step 10" in str(info.value) and workdir in str(info.value)
  assert workdir_snapshot(workdir) == before  # config.json, the unfinished save: untouched.


def test_a_refused_resume_changes_nothing_in_the_workdir(finished_rigl_run, tmp_path):
  workdir = str(tmp_path / "run")
  _copy_with_unfinished_save(finished_rigl_run, workdir)
  before = workdir_snapshot(workdir)
  config = short_rigl_config()
  config.signin.enabled = False  # Another state structure: refused by the fingerprint too.
  with pytest.raises(ValueError, match="signin.enabled"):
    run_in_process(workdir, config)
  assert workdir_snapshot(workdir) == before


def test_resume_may_change_cadence_exports_and_keep(finished_rigl_run, tmp_path):
  """The fields that do not change what is computed may differ; the run then ends bitwise where
  the uninterrupted one did."""
  workdir = str(tmp_path / "run")
  shutil.copytree(os.path.join(finished_rigl_run, "checkpoints", "5"),
                  os.path.join(workdir, "checkpoints", "5"))
  config = short_rigl_config()
  config.log_every_steps, config.checkpoint_every_steps, config.keep_checkpoints = 2, 3, 5
  config.eval_every_epochs, config.export_epochs = 2, (1,)
  run_in_process(workdir, config)
  assert_bitwise_equal(final_weights(workdir), final_weights(finished_rigl_run))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["log_every_steps"] == 2  # config.json: the config of the latest start.


def _rewrite_saved_config(workdir, step, edit):
  meta_path = os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")
  with open(meta_path) as f:
    meta = json.load(f)
  edit(meta["config"])
  meta["meta_digest"] = checkpointing._meta_digest(meta)  # As an older version wrote it.
  with open(meta_path, "w") as f:
    json.dump(meta, f)


def test_a_field_an_older_checkpoint_lacks_counts_as_its_default(finished_rigl_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_rigl_run, workdir)
  for step in (5, 10):  # As if label_smoothing had been added to the config since.
    _rewrite_saved_config(workdir, step, lambda c: c.pop("label_smoothing"))
  config = short_rigl_config()
  config.label_smoothing = 0.1
  with pytest.raises(ValueError, match=r"config.label_smoothing: absent in the checkpoint "
                                       r"\(counts as the default 0.0\), 0.1 now"):
    run_in_process(workdir, config)
  run_in_process(workdir, short_rigl_config())  # Its default, 0.0: the same run.


def test_metrics_of_a_checkpointed_step_are_on_disk_before_its_checkpoint(tmp_path,
                                                                          monkeypatch):
  """A run killed right after a save loses none of the metrics up to that step."""
  workdir = str(tmp_path / "run")
  on_disk_at_save = {}
  real_save = checkpointing.save

  def save(manager, step, **kwargs):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      on_disk_at_save[step] = {r["step"] for r in map(json.loads, f) if "step" in r}
    return real_save(manager, step, **kwargs)

  monkeypatch.setattr(checkpointing, "save", save)
  config = short_rigl_config()  # Logs at steps 5 and 10, saves at 5 and 10; epoch ends at 8.
  run_in_process(workdir, config)
  assert on_disk_at_save == {5: {5}, 10: {5, 8, 10}}


_ENDLESS_CHILD = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {REPO!r})
    from tests import tfds_mock
    from tests.test_checkpoint_resume import tiny_config
    from signin_jax import train
    config = tiny_config()
    config.num_train_steps = 10**6  # Still running when the second run starts.
    with tfds_mock.mock_data(num_examples={MOCK_EXAMPLES}):
      train.train_and_evaluate(config, sys.argv[1])
""")


@pytest.mark.slow
def test_the_same_command_twice_on_one_workdir(tmp_path, monkeypatch):
  """The second run stops at once naming the first (host, pid) and touches nothing; once the
  first is killed, the same command gets past the lock: none is left behind."""
  workdir = str(tmp_path / "twice")
  log_path = str(tmp_path / "child.log")
  with open(log_path, "w") as log:
    child = subprocess.Popen([sys.executable, "-c", _ENDLESS_CHILD, workdir], cwd=REPO,
                             stdout=log, stderr=subprocess.STDOUT)

  def must_not_run(*args, **kwargs):
    raise AssertionError("the run went on to build its start")

  monkeypatch.setattr(run_start, "create_run_start", must_not_run)
  config = tiny_config()
  config.num_train_steps = 10**6  # The same command ...
  config.log_every_steps = 7  # ... but for a field that may differ: an overwrite would show.
  try:
    wait_for_checkpoint(child, workdir, CHECKPOINT_EVERY, log_path)
    with open(os.path.join(workdir, "config.json")) as f:
      config_json = f.read()
    with pytest.raises(RuntimeError, match=rf"in use by another run: process {child.pid} on "
                                           rf"host {socket.gethostname()}"):
      run_in_process(workdir, config)
    with open(os.path.join(workdir, "config.json")) as f:
      assert f.read() == config_json
    assert child.poll() is None  # The first run was still running all along.
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait()
  with pytest.raises(AssertionError, match="went on to build its start"):
    run_in_process(workdir, config)  # Past the lock (and the resume check): nothing stuck.


_MAIN_CHILD = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {REPO!r})
    # main.py's command line (its config flag reads sys.argv when main is imported).
    sys.argv = ["main.py", "--config=configs/fashion_mnist_quickstart.py",
                "--workdir=" + sys.argv[1], "--config.model=lenet300_100", "--config.width=8",
                "--config.batch_size=8", "--config.num_train_steps=100000",
                "--config.checkpoint_every_steps={CHECKPOINT_EVERY}"]
    from absl import app
    from tests import tfds_mock
    from signin_jax import prepare_data
    import main
    prepare_data.ensure_prepared = lambda *args, **kwargs: None  # The mock needs no files.
    with tfds_mock.mock_data(num_examples={MOCK_EXAMPLES}):
      app.run(main.main)
""")


def test_main_stopped_by_sigterm_exits_143_after_its_checkpoint(tmp_path):
  """Not 0 as a finished run: `a && b` does not go on to b, a scheduler sees a stopped run."""
  workdir = str(tmp_path / "stopped")
  log_path = str(tmp_path / "main.log")
  with open(log_path, "w") as log:
    child = subprocess.Popen([sys.executable, "-c", _MAIN_CHILD, workdir], cwd=REPO,
                             stdout=log, stderr=subprocess.STDOUT)
  try:
    wait_for_checkpoint(child, workdir, CHECKPOINT_EVERY, log_path)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=120) == 143, open(log_path).read()[-3000:]
  finally:
    if child.poll() is None:
      child.kill()
  log = open(log_path).read()
  step = int(log.split("saved the checkpoint at step ")[1].split()[0])
  assert str(step) in os.listdir(os.path.join(workdir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
