"""One process of the multi-process tests (tests/test_multiprocess.py starts it; not a test).

    python tests/multiprocess_worker.py SPEC.json

SPEC: ``{"process_id", "num_processes", "coordinator" (None: single process), "result",
"runs": [{"workdir", "parallelism", "num_train_steps", "global_batches_of": null | 2,
"corrupt_masks_on": null | process id, optional "mask_method", "log_every_steps",
"checkpoint_every_steps", "num_train", "num_eval"}]}``. Every run calls ``train.train_and_evaluate`` on
the id-carrying TFDS mock of tests/test_input_pipeline.py and records, for the test to check:

* ``batches``: the example ids of every training batch the trainer's pipeline handed it, by
  step (a pass-through wrapper around ``input_pipeline.train_iterator``);
* ``writes``: every file this process opened for writing, renamed or created under the workdir
  outside ``checkpoints/`` (Python's audit hooks; TensorBoard's C++ writer is identified by the
  pid in its file name instead);
* ``error``: the message of an exception the run raised (e.g. different masks);
* ``returned``: what ``train_and_evaluate`` returned (the summary, or the preemption record).

The worker exits as main.py does: 0, or ``parallel.EXIT_CODE_PREEMPTED`` after a run was
stopped by SIGTERM (it writes its result first).

``global_batches_of: 2`` (single-process reference runs only) feeds the trainer, at every step,
the global batch a 2-process run reads: process 0's slice then process 1's, each from the same
pipeline call with ``process_index=i, process_count=2``, so one process on 4 devices trains on
exactly the batches that two processes on 2 devices each do. ``corrupt_masks_on: i`` flips one
mask entry on process i, as a host with different code or numerics would.
"""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NUM_TRAIN, NUM_EVAL = 64, 16  # 8 steps per epoch at the global batch of 8.


def main(spec_path):
  with open(spec_path) as f:
    spec = json.load(f)

  from absl import logging
  import jax
  import numpy as np
  from signin_jax import input_pipeline, masks as masks_lib, parallel, run_start, train
  from tests.test_checkpoint_resume import tiny_config
  from tests.test_input_pipeline import _ids, indexed_mock

  real_train_iterator = input_pipeline.train_iterator
  real_create_masks = masks_lib.create_masks
  current = {}
  writes_hook_active = []

  def recorded_train_iterator(name, *, global_batch_size, start_step=0, process_index=None,
                              process_count=None, **kwargs):
    n = spec_run().get("global_batches_of")
    if n:  # The reference: concatenate the n processes' slices of each global batch.
      assert process_count == 1
      parts = [real_train_iterator(name, global_batch_size=global_batch_size,
                                   start_step=start_step, process_index=i, process_count=n,
                                   **kwargs) for i in range(n)]
      stream = ({k: np.concatenate([p[k] for p in slices]) for k in slices[0]}
                for slices in zip(*parts))
    else:
      stream = real_train_iterator(name, global_batch_size=global_batch_size,
                                   start_step=start_step, process_index=process_index,
                                   process_count=process_count, **kwargs)
    for step, batch in enumerate(stream, start=start_step + 1):
      current["record"]["batches"].append([step, _ids("fashion_mnist", batch["image"]).tolist()])
      yield batch

  def corrupted_create_masks(*args, **kwargs):
    masks = real_create_masks(*args, **kwargs)
    leaves, treedef = jax.tree.flatten(masks)
    first = (0,) * leaves[0].ndim
    leaves[0] = leaves[0].at[first].set(~leaves[0][first])
    return jax.tree.unflatten(treedef, leaves)

  def audit(event, args):
    if not writes_hook_active or event not in ("open", "os.rename", "os.mkdir", "os.remove"):
      return
    if event == "open":
      path, mode, flags = args
      writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                 else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
      if not writing:
        return
      paths = [path]
    else:
      paths = list(args[:2]) if event == "os.rename" else [args[0]]
    workdir = current["workdir"]
    for path in paths:
      if not isinstance(path, (str, bytes, os.PathLike)):
        continue
      path = os.path.abspath(os.fsdecode(path))
      inside = path == workdir or path.startswith(workdir + os.sep)
      if inside and not path.startswith(os.path.join(workdir, "checkpoints")):
        current["record"]["writes"].append(os.path.relpath(path, workdir))

  def spec_run():
    return current["spec"]

  logging.set_verbosity(logging.INFO)  # As main.py: progress lines (process 0 only).
  sys.addaudithook(audit)
  input_pipeline.train_iterator = recorded_train_iterator
  results = {"pid": os.getpid(), "runs": []}
  for run in spec["runs"]:
    config = tiny_config()
    config.num_train_steps = run["num_train_steps"]
    config.parallelism = run["parallelism"]
    config.mask.method = run.get("mask_method", config.mask.method)
    config.checkpoint_every_steps = run.get("checkpoint_every_steps", 5)
    config.log_every_steps = run.get("log_every_steps", 4)
    if spec["coordinator"]:
      config.distributed = True
      config.distributed_coordinator = spec["coordinator"]
      config.num_processes = spec["num_processes"]
      config.process_id = spec["process_id"]
    corrupt = run.get("corrupt_masks_on") == spec["process_id"]
    masks_lib.create_masks = corrupted_create_masks if corrupt else real_create_masks
    record = {"workdir": run["workdir"], "batches": [], "writes": [], "error": None,
              "returned": None}
    current.update(spec=run, record=record, workdir=os.path.abspath(run["workdir"]))
    writes_hook_active.append(True)
    try:
      with indexed_mock(num_train=run.get("num_train", NUM_TRAIN),
                        num_eval=run.get("num_eval", NUM_EVAL)):
        record["returned"] = train.train_and_evaluate(config, run["workdir"])
    except run_start.MaskMismatchError as e:
      record["error"] = str(e)
    finally:
      writes_hook_active.clear()
    results["runs"].append(record)
  with open(spec["result"], "w") as f:
    json.dump(results, f)
  if any((r["returned"] or {}).get("preempted") for r in results["runs"]):
    sys.exit(parallel.EXIT_CODE_PREEMPTED)  # As main.py does.


if __name__ == "__main__":
  main(sys.argv[1])
