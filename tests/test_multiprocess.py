"""Multi-process training on this machine: 2 processes x 2 CPU devices against 1 x 4.

JAX runs several processes on one machine with ``jax.distributed.initialize`` over loopback
(coordinator ``127.0.0.1:<free port>``, gloo CPU collectives) and
``--xla_force_host_platform_device_count=2`` devices per process. Each process is
``tests/multiprocess_worker.py`` calling ``train.train_and_evaluate`` (LeNet-300-100 at width
1/8 with Sign-In at 90 % sparsity, global batch 8, on a 64-example id-carrying TFDS mock: 8 steps
per epoch), for ``parallelism='pmap'`` and ``'jit'``. Three launches:

1. 2 processes: an uninterrupted 12-step run per mode (checkpoints at steps 5, 10, 12);
2. 2 new processes: each mode resumed from the first run's step-5 checkpoint alone; then a run
   in which process 1 computes a different mask, one with SNIP masks, and per mode a 200-step
   run that never waits for the devices before its end (LONG_QUEUE);
3. 1 process with 4 devices, concurrently with 2: each mode on the same global batches (see the
   worker), and each mode resumed from the 2-process step-5 checkpoint.

Every launch is bounded in time; its processes run in their own process group, killed on
failure or timeout.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from signin_jax import run_start
from signin_jax import workdir_lock
from tests import multiprocess_worker
from tests.test_checkpoint_resume import final_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multiprocess_worker.py")
MODES = ("pmap", "jit")
NUM_STEPS, RESUME_STEP, STEPS_PER_EPOCH = 12, 5, 8
LAUNCH_TIMEOUT = 300  # Seconds per launch; the whole module takes ~2 minutes here.
# A run that never syncs with the host on its own: no log line, checkpoint or epoch end before
# its last step, then 100 evaluation batches (before parallel.MAX_STEPS_IN_FLIGHT, this hung).
LONG_QUEUE = dict(num_train_steps=200, log_every_steps=10**4, checkpoint_every_steps=10**4,
                  num_train=1600, num_eval=800)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(root, name, *, processes, devices, runs):
  """Starts one launch: `processes` workers with `devices` CPU devices each."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  coordinator = f"127.0.0.1:{free_port()}" if processes > 1 else None
  launch = {"name": name, "procs": [], "logs": [], "results": []}
  for i in range(processes):
    spec = {"process_id": i, "num_processes": processes, "coordinator": coordinator,
            "result": os.path.join(root, f"{name}.{i}.json"), "runs": runs}
    spec_path = os.path.join(root, f"{name}.{i}.spec.json")
    with open(spec_path, "w") as f:
      json.dump(spec, f)
    log_path = os.path.join(root, f"{name}.{i}.log")
    with open(log_path, "w") as log:  # A file, not a pipe: a full pipe would stall the worker.
      launch["procs"].append(subprocess.Popen(
          [sys.executable, WORKER, spec_path], cwd=REPO, env=env, stdout=log,
          stderr=subprocess.STDOUT, start_new_session=True))
    launch["logs"].append(log_path)
    launch["results"].append(spec["result"])
  launch["deadline"] = time.time() + LAUNCH_TIMEOUT
  return launch


def _kill(launch):
  for proc in launch["procs"]:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def finish(launch, *, exit_code=0):
  """Waits for every process of `launch`. As `srun --kill-on-bad-exit=1` (launch/
  slurm_gpu.sbatch) does, the first non-zero exit, or the timeout, kills the rest at once.

  Every process must exit with `exit_code` by itself, except, when that is not 0, those that
  the first one's exit killed. Returns the results of the processes that exited by themselves.
  """
  try:
    while any(p.poll() is None for p in launch["procs"]):
      failed = [p for p in launch["procs"] if p.poll() not in (None, 0)]
      if failed or time.time() > launch["deadline"]:
        break
      time.sleep(0.2)
  finally:
    _kill(launch)
  codes = [p.returncode for p in launch["procs"]]
  by_themselves = [c for c in codes if c != -signal.SIGKILL] if exit_code else codes
  if not by_themselves or any(c != exit_code for c in by_themselves):
    tails = "\n".join(f"--- process {i} (exit {c}):\n{open(path).read()[-3000:]}"
                      for i, (c, path) in enumerate(zip(codes, launch["logs"])))
    raise AssertionError(f"launch {launch['name']} failed or timed out (exit codes {codes}, "
                         f"expected {exit_code}):\n{tails}")
  results = []
  for code, path, log in zip(codes, launch["results"], launch["logs"]):
    if code == exit_code:
      with open(path) as f:
        results.append(dict(json.load(f), log=open(log).read()))
  return results


def summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


# Several processes of the trainer, about 2 minutes together, sharing one module fixture (so
# one pytest-xdist worker runs them all).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multiprocess")]


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("multiprocess"))
  wd = lambda *parts: os.path.join(root, "_".join(parts))
  run = lambda workdir, mode, **kw: dict(dict(workdir=workdir, parallelism=mode,
                                              num_train_steps=NUM_STEPS), **kw)
  started = time.time()
  first = finish(start(root, "two", processes=2, devices=2,
                       runs=[run(wd("two", m), m) for m in MODES]))
  for m in MODES:  # Only the step-5 checkpoint: the new runs must start from it.
    for target in (wd("resumed", m), wd("resumed_on_one", m)):
      shutil.copytree(os.path.join(wd("two", m), "checkpoints", str(RESUME_STEP)),
                      os.path.join(target, "checkpoints", str(RESUME_STEP)))
  snip = dict(mask_method="snip", num_train_steps=2)
  resumed = start(root, "resumed", processes=2, devices=2,
                  runs=[run(wd("resumed", m), m) for m in MODES]
                  + [run(wd("corrupt"), "jit", corrupt_masks_on=1), run(wd("snip_two"), "jit",
                                                                       **snip)]
                  + [run(wd("long_queue", m), m, **LONG_QUEUE) for m in MODES])
  one = start(root, "one", processes=1, devices=4,
              runs=[run(wd("one", m), m, global_batches_of=2) for m in MODES]
              + [run(wd("resumed_on_one", m), m, global_batches_of=2) for m in MODES]
              + [run(wd("snip_one"), "jit", global_batches_of=2, **snip)])
  try:
    one_results = finish(one)
  finally:
    resumed_results = finish(resumed)
  return {"wd": wd, "two": first, "resumed": resumed_results, "one": one_results,
          "seconds": time.time() - started}


def _assert_close(got, want, rtol, atol):
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_equal_one_process_on_the_same_global_batches(launches, mode):
  wd = launches["wd"]
  two = summary(wd("two", mode))
  assert (two["processes"], two["devices"], two["steps"]) == (2, 4, NUM_STEPS)
  assert summary(wd("one", mode))["processes"] == 1
  assert two["sign_flips_vs_init"]["total"] > 0.01  # Training moved the weights ...
  # ... identically, up to the order of the cross-device sums (gloo vs in-process).
  _assert_close(final_weights(wd("two", mode)), final_weights(wd("one", mode)), rtol=1e-5,
                atol=1e-6)
  assert two["test_examples"] == multiprocess_worker.NUM_EVAL  # Every test example once.
  assert two["test_accuracy"] == summary(wd("one", mode))["test_accuracy"]


@pytest.mark.parametrize("mode", MODES)
def test_processes_read_disjoint_shards_that_cover_the_epoch(launches, mode):
  index = MODES.index(mode)
  by_process = [{step: ids for step, ids in r["runs"][index]["batches"] if step <= NUM_STEPS}
                for r in launches["two"]]
  for batches in by_process:
    assert sorted(batches) == list(range(1, NUM_STEPS + 1))
    assert all(len(ids) == 4 for ids in batches.values())  # Half of each global batch.
  epoch = [sum((b[s] for s in range(1, STEPS_PER_EPOCH + 1)), []) for b in by_process]
  assert all(len(set(ids)) == len(ids) for ids in epoch)  # No example twice in an epoch ...
  assert not set(epoch[0]) & set(epoch[1])  # ... nor on both processes ...
  assert sorted(epoch[0] + epoch[1]) == list(range(multiprocess_worker.NUM_TRAIN))  # ... all.
  for shard, batches in zip(epoch, by_process):  # The next epoch reads the same shard again.
    later = sum((batches[s] for s in range(STEPS_PER_EPOCH + 1, NUM_STEPS + 1)), [])
    assert set(later) <= set(shard)
  # The single-process reference trained on exactly these global batches.
  reference = {s: ids for s, ids in launches["one"][0]["runs"][index]["batches"]}
  assert all(reference[s] == by_process[0][s] + by_process[1][s] for s in by_process[0])


@pytest.mark.parametrize("mode", MODES)
def test_checkpoint_of_two_processes_resumes_in_new_processes(launches, mode):
  wd = launches["wd"]
  index = MODES.index(mode)
  for r in launches["resumed"]:  # The new processes started at the checkpoint ...
    assert r["runs"][index]["batches"][0][0] == RESUME_STEP + 1
  # ... and ended exactly where the uninterrupted run did.
  _assert_close(final_weights(wd("resumed", mode)), final_weights(wd("two", mode)), rtol=0,
                atol=0)
  assert sorted(int(s) for s in os.listdir(os.path.join(wd("resumed", mode), "checkpoints"))) == [
      RESUME_STEP, 10, NUM_STEPS]


@pytest.mark.parametrize("mode", MODES)
def test_checkpoint_of_two_processes_resumes_on_one_process(launches, mode):
  wd = launches["wd"]
  run = launches["one"][0]["runs"][2 + MODES.index(mode)]
  assert run["batches"][0][0] == RESUME_STEP + 1
  assert "written by 2 process(es) on 4 device(s), with 1 process(es) on 4" in (
      launches["one"][0]["log"])
  # Same global batches (see the worker): the restored state continues exactly.
  _assert_close(final_weights(wd("resumed_on_one", mode)), final_weights(wd("two", mode)),
                rtol=1e-5,
                atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_only_process_0_writes_logs_summary_and_exports(launches, mode):
  wd = launches["wd"]
  index = MODES.index(mode)
  main, other = launches["two"]
  assert other["runs"][index]["writes"] == []  # Nothing outside checkpoints/.
  assert {"config.json", "metrics.jsonl", "summary.json", "final_weights.npz",
          "final_weights.sjx", "report.png", workdir_lock.LOCK_FILE} <= set(
      main["runs"][index]["writes"])
  events = glob.glob(os.path.join(wd("two", mode), "events.out.tfevents.*"))
  assert len(events) == 1 and f".{main['pid']}." in os.path.basename(events[0])
  assert sorted(os.listdir(wd("two", mode))) == sorted(  # The lock is gone with the run.
      ["checkpoints", "config.json", "metrics.jsonl", "summary.json", "final_weights.npz",
       "final_weights.sjx", "report.png", os.path.basename(events[0])])
  with open(os.path.join(wd("two", mode), "metrics.jsonl")) as f:
    records = [(r.get("step", -1), tuple(sorted(r))) for r in map(json.loads, f)]
  assert len(records) == len(set(records))  # Every record once (two writers would double it).
  assert max(step for step, _ in records) == NUM_STEPS
  assert "Done: test accuracy" in main["log"] and "Done: test accuracy" not in other["log"]
  assert f"step {NUM_STEPS}/{NUM_STEPS}" in main["log"]
  assert f"step {NUM_STEPS}/{NUM_STEPS}" not in other["log"]


def test_data_dependent_masks_score_the_global_batch_on_every_process(launches):
  # SNIP scores the first global batch (both processes' slices): the masks agree across the
  # processes (else the digest check would have stopped the run) and with one process.
  assert all(r["runs"][3]["error"] is None for r in launches["resumed"])
  two = final_weights(launches["wd"]("snip_two"))
  one = final_weights(launches["wd"]("snip_one"))
  for k in two:
    np.testing.assert_array_equal(two[k] == 0, one[k] == 0, err_msg=k)
  _assert_close(two, one, rtol=1e-5, atol=1e-6)


def test_a_process_with_other_masks_stops_the_run(launches):
  errors = [r["runs"][2]["error"] for r in launches["resumed"]]
  for error in errors:  # Both processes stop, with the same message naming process 1.
    assert error and "masks differ between processes: process(es) [1]" in error
  assert not os.path.exists(os.path.join(launches["wd"]("corrupt"), "checkpoints"))


@pytest.mark.parametrize("mode", MODES)
def test_a_long_queue_of_steps_and_evaluation_batches_completes(launches, mode):
  done = summary(launches["wd"]("long_queue", mode))  # Both processes exited 0 in time.
  assert done["steps"] == LONG_QUEUE["num_train_steps"]
  assert done["test_examples"] == LONG_QUEUE["num_eval"]


def _sigterm_after_the_first_step(launch):
  """SIGTERM to process 1 once it has taken its first step (a preemption notice to one host)."""
  try:
    deadline = time.time() + LAUNCH_TIMEOUT
    while "First step" not in open(launch["logs"][1]).read():
      assert launch["procs"][1].poll() is None and time.time() < deadline, (
          open(launch["logs"][1]).read()[-3000:])
      time.sleep(0.2)
    launch["procs"][1].send_signal(signal.SIGTERM)
  except BaseException:
    _kill(launch)
    raise


def test_sigterm_to_one_process_stops_both_at_one_checkpoint_that_resumes(tmp_path):
  """A preemption notice reaching one process (JAX's preemption service) stops every process at
  the same step, after a checkpoint of that step; they exit 143 (stopped, not finished), and
  the first exit kills the other at once (srun --kill-on-bad-exit=1), which must not cost the
  checkpoint: no process exits before every one has saved. New processes, started with the same
  config (a resume under another one is refused), continue from it; stopped the same way."""
  root = str(tmp_path)
  workdir = os.path.join(root, "preempted")
  endless = dict(workdir=workdir, parallelism="jit", num_train_steps=10**6)
  launch = start(root, "preempted", processes=2, devices=2, runs=[endless])
  _sigterm_after_the_first_step(launch)
  returned = [r["runs"][0]["returned"] for r in finish(launch, exit_code=143)]
  assert all(r == returned[0] for r in returned) and returned[0]["preempted"] is True, returned
  step = returned[0]["step"]
  assert 0 < step < endless["num_train_steps"]
  assert step in [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))]

  again = start(root, "after", processes=2, devices=2, runs=[endless])
  _sigterm_after_the_first_step(again)
  for r in finish(again, exit_code=143):
    assert r["runs"][0]["batches"][0][0] == step + 1
    assert r["runs"][0]["returned"]["preempted"] and r["runs"][0]["returned"]["step"] > step


# --- Single-process pieces of the above -------------------------------------------------------

def test_mask_digest_sees_every_bit_and_the_check_names_the_differing_processes():
  masks = {"a": np.arange(12).reshape(3, 4) % 3 == 0, "b": np.ones(5, bool)}
  flipped = {"a": masks["a"].copy(), "b": masks["b"]}
  flipped["a"][2, 3] = ~flipped["a"][2, 3]
  same, other = run_start.mask_digest(masks), run_start.mask_digest(flipped)
  assert np.array_equal(same, run_start.mask_digest(jax.tree.map(np.copy, masks)))
  assert not np.array_equal(same, other)
  assert not np.array_equal(same, run_start.mask_digest({"a": masks["a"].reshape(4, 3),
                                                     "b": masks["b"]}))  # Shapes count.
  run_start.check_same_masks(np.stack([same, same]), seed=0)
  with pytest.raises(run_start.MaskMismatchError, match=r"process\(es\) \[1, 3\] computed other"):
    run_start.check_same_masks(np.stack([same, other, same, other]), seed=0)


def test_resume_with_another_epoch_length_is_refused():
  meta = {"process_count": 2, "device_count": 4, "steps_per_epoch": 8}
  run_start.check_resumable(meta, step=5, steps_per_epoch=8, batch_size=8)  # Same layout: fine.
  with pytest.raises(ValueError, match=r"Cannot resume from the checkpoint at step 5 .* written "
                                       r"by 2 process\(es\) with 8 steps per epoch"):
    run_start.check_resumable(meta, step=5, steps_per_epoch=7, batch_size=8)
