"""launch/slurm_gpu.sbatch under SIGTERM, with a stand-in for srun (there is no SLURM here).

A preemption notice, a time limit or `scancel --signal=TERM --full` sends SIGTERM to the batch
script too. The script must not die then: SLURM would end the job and kill the training
processes while they save. It passes the signal on to srun (so `--signal=B:TERM@<s>` reaches
the processes too), waits for srun and exits with its code (143: stopped with a checkpoint).
"""

import os
import signal
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH = os.path.join(REPO, "launch", "slurm_gpu.sbatch")

_FAKE_SRUN = """#!/usr/bin/env bash
# Stands in for srun: records its arguments, then {behaviour}.
echo $$ > "$MARKS/pid"
echo "$@" > "$MARKS/args"
{body}
"""
_UNTIL_SIGTERM = dict(
    behaviour="runs until SIGTERM, saves for a second and exits 143",
    body="trap 'sleep 1; echo saved > \"$MARKS/saved\"; exit 143' TERM\n"
         "while :; do sleep 0.1; done")


def _start(tmp_path, fake):
  bin_dir, marks = tmp_path / "bin", tmp_path / "marks"
  bin_dir.mkdir()
  marks.mkdir()
  srun = bin_dir / "srun"
  srun.write_text(_FAKE_SRUN.format(**fake))
  srun.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", MARKS=str(marks),
             WORKDIR=str(tmp_path / "run"), DATA_DIR=str(tmp_path / "data"),
             SLURM_SUBMIT_DIR=REPO)
  env.pop("SLURM_NTASKS_PER_NODE", None)
  return subprocess.Popen(["bash", SBATCH], env=env, cwd=REPO), marks


def _wait_for(path, proc, timeout=30):
  deadline = time.time() + timeout
  while not path.exists():
    assert proc.poll() is None and time.time() < deadline, f"no {path}"
    time.sleep(0.05)


def test_sigterm_to_the_batch_script_is_passed_on_and_the_save_awaited(tmp_path):
  proc, marks = _start(tmp_path, _UNTIL_SIGTERM)
  try:
    _wait_for(marks / "args", proc)
    proc.send_signal(signal.SIGTERM)  # Only the batch shell: as --signal=B:TERM would.
    assert proc.wait(timeout=30) == 143  # srun's code, after srun ended ...
    assert (marks / "saved").exists()  # ... having got the signal and saved.
  finally:
    if proc.poll() is None:
      proc.kill()
    if (marks / "pid").exists():
      try:
        os.kill(int((marks / "pid").read_text()), signal.SIGKILL)
      except ProcessLookupError:
        pass
  args = (marks / "args").read_text()
  assert "--kill-on-bad-exit=1" in args and "main.py" in args


@pytest.mark.parametrize("code", [0, 1, 143])
def test_the_batch_script_exits_with_sruns_code(tmp_path, code):
  proc, _ = _start(tmp_path, dict(behaviour=f"exits {code}", body=f"exit {code}"))
  assert proc.wait(timeout=30) == code
