"""The run report (signin_jax/report.py) and the TensorBoard event files a run writes."""

import importlib
import json
import os
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from signin_jax import report
from signin_jax import train
from tests import tfds_mock

pytestmark = pytest.mark.xdist_group("report")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("classifier/kernel", "dense1/kernel", "dense2/kernel")
EPOCH_ENDS = [8, 16, 24]


def _write_lines(path, lines):
  with open(path, "w") as f:
    f.write("".join(line + "\n" for line in lines))


# --- Reading metrics.jsonl ---------------------------------------------------------------------

def test_a_step_written_again_keeps_the_later_value_of_each_key(tmp_path, caplog):
  # As a resumed run leaves it: hparams first, a progress and an epoch record at step 4, the
  # run killed mid-line after step 6 (a partial line), the resumed run rewriting steps 4 and 6
  # from its checkpoint at step 2, its first record appended to the partial line.
  path = tmp_path / "metrics.jsonl"
  _write_lines(path, [
      json.dumps({"hparams": {"model": "lenet300_100"}}),
      json.dumps({"step": 2, "time": 1.0, "train_loss": 2.0}),
      json.dumps({"step": 4, "time": 2.0, "train_loss": 1.5}),
      json.dumps({"step": 4, "time": 2.1, "test_accuracy": 0.25}),
      json.dumps({"step": 6, "time": 3.0, "train_loss": 1.2}),
      '{"step": 8, "time": 4.0, "train_lo' + json.dumps({"step": 4, "time": 9.0,
                                                         "train_loss": 1.4}),
      json.dumps({"step": 4, "time": 9.1, "test_accuracy": 0.5}),
      json.dumps({"step": 6, "time": 9.2, "train_loss": 1.1}),
      "",
  ])
  assert report.read_metrics(str(path)) == {
      2: {"train_loss": 2.0},
      4: {"train_loss": 1.4, "test_accuracy": 0.5},
      6: {"train_loss": 1.1},
  }
  assert "in 1 line(s) (lines 6)" in caplog.text  # The partial record is named, not hidden.


def test_a_file_without_step_records_is_refused_with_its_path(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_lines(path, ['{"hparams": {}}', "not json at all"])
  with pytest.raises(report.ReportError, match="metrics.jsonl holds no step record"):
    report.read_metrics(str(path))
  path.write_bytes(b"\x89PNG\x00\xff\xfe")
  with pytest.raises(report.ReportError, match="not a text file"):
    report.read_metrics(str(path))


def test_layers_run_from_input_to_output():
  names = ["classifier/kernel", "stage2_block10/Conv_0/kernel", "stage1_block1/proj_conv/kernel",
           "stage2_block9/Conv_1/kernel", "stem_conv/kernel", "stage1_block1/Conv_0/kernel"]
  assert sorted(names, key=report._layer_order) == [
      "stem_conv/kernel", "stage1_block1/Conv_0/kernel", "stage1_block1/proj_conv/kernel",
      "stage2_block9/Conv_1/kernel", "stage2_block10/Conv_0/kernel", "classifier/kernel"]


# --- The command line --------------------------------------------------------------------------

def test_cli_names_the_missing_metrics_file(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "signin_jax.report", str(tmp_path / "nowhere")],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert f"{tmp_path / 'nowhere' / 'metrics.jsonl'} not found" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_cli_names_the_corrupt_metrics_file(tmp_path, capsys):
  (tmp_path / "metrics.jsonl").write_text("{\"step\": 1, \"train_lo\n")
  with pytest.raises(SystemExit) as exit_info:
    report.main([str(tmp_path)])
  assert exit_info.value.code == 2
  assert f"{tmp_path / 'metrics.jsonl'} holds no step record" in capsys.readouterr().err
  assert not (tmp_path / report.REPORT_FILE).exists()


# --- Real runs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rigl_signin_run(tmp_path_factory):
  """A LeNet trained 24 steps with RigL and Sign-In on mock data (8 steps per epoch), logging
  every step. Its compiled programs are those of test_train.py's RigL + Sign-In run (the same
  config but for the logging, which is host-side): the suite's compilation cache serves both."""
  config = importlib.import_module("configs.fashion_mnist_quickstart").get_config()
  config.model, config.width, config.batch_size = "lenet300_100", 8, 8
  config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps = 24, 1, 24
  config.data_dir = None
  config.schedule.method, config.schedule.update_every_steps = "rigl", 4
  config.schedule.phase = 0.125
  config.signin.enabled = True
  workdir = str(tmp_path_factory.mktemp("runs") / "rigl_signin")
  with tfds_mock.mock_data(num_examples=64):
    train.train_and_evaluate(config, workdir)
  return workdir


def _derived_run(source, workdir, *, drop_prefixes, config_changes, summary_sparsity=None):
  """A copy of ``source`` as another kind of run would have logged it: the same records
  without the keys that kind does not write (train.py: mask_* only for a schedule other than
  'static', beta/ only with Sign-In)."""
  os.makedirs(workdir)
  with open(os.path.join(source, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  _write_lines(os.path.join(workdir, "metrics.jsonl"), [
      json.dumps({k: v for k, v in r.items() if not k.startswith(drop_prefixes)})
      for r in records])
  for name in ("config.json", "summary.json"):
    with open(os.path.join(source, name)) as f:
      data = json.load(f)
    for dotted, value in config_changes.items():
      node = data if name == "config.json" else data["config"]
      *parents, leaf = dotted.split(".")
      for parent in parents:
        node = node[parent]
      node[leaf] = value
    if name == "summary.json" and summary_sparsity is not None:
      for row in data["sparsity"].values():
        row["sparsity"], row["nonzero"] = summary_sparsity, row["size"]
    with open(os.path.join(workdir, name), "w") as f:
      json.dump(data, f)
  return workdir


def _panels(workdir):
  return [name for row in report.layout([report.load_run(workdir)]) for name, _ in row.panels]


def _assert_png(path):
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] > 500 and image.shape[1] == 1500
  assert image[..., :3].std() > 0.05  # Drawn, not blank.


@pytest.mark.slow
def test_report_of_a_rigl_signin_run_draws_every_panel(rigl_signin_run):
  run = report.load_run(rigl_signin_run)
  # The trainer's keys as the report reads them: per-layer statistics at every epoch end.
  for prefix in ("mask_density", "mask_dropped", "mask_grown", "sign_flips_vs_init",
                 "sign_flips_vs_prev_epoch", "beta"):
    assert report.layers([run], prefix) == ["dense1/kernel", "dense2/kernel", "classifier/kernel"]
    steps, _ = report.series(run, f"{prefix}/total")
    assert set(EPOCH_ENDS) <= set(steps.tolist()), prefix
  for key in ("train_loss", "train_accuracy", "learning_rate"):
    assert report.series(run, key)[0].tolist() == list(range(1, 25)), key
  assert report.series(run, "test_accuracy")[0].tolist() == EPOCH_ENDS
  assert report.missing_notes(run) == []
  assert _panels(rigl_signin_run) == [
      "loss", "accuracy", "learning rate", "mask_density", "sign_flips_vs_init",
      "sign_flips_vs_prev_epoch", "beta", "mask_dropped", "mask_grown", "final density",
      "final sign_flips_vs_init"]
  # The final bars are the summary's numbers; the last epoch's record agrees on the flips.
  with open(os.path.join(rigl_signin_run, "summary.json")) as f:
    summary = json.load(f)
  flips, _ = report.final_per_layer(run, "sign_flips_vs_init")
  assert flips == summary["sign_flips_vs_init"]
  last = run.records[24]
  assert {k: last[f"sign_flips_vs_init/{k}"] for k in flips} == pytest.approx(flips)
  path = report.write_run_report(rigl_signin_run)
  assert path == os.path.join(rigl_signin_run, report.REPORT_FILE)
  _assert_png(path)


@pytest.mark.slow
def test_report_drawn_before_summary_json_is_written(rigl_signin_run, tmp_path):
  # Where the trainer draws it: metrics.jsonl and config.json written, summary.json not yet.
  workdir = str(tmp_path / "finishing")
  os.makedirs(workdir)
  for name in ("metrics.jsonl", "config.json"):
    shutil.copy(os.path.join(rigl_signin_run, name), workdir)
  with open(os.path.join(rigl_signin_run, "summary.json")) as f:
    summary = json.load(f)
  run = report.load_run(workdir, summary)
  density, source = report.final_per_layer(run, "density")
  assert source == "nonzero fraction of the final weights"
  assert density == {k: 1.0 - v["sparsity"] for k, v in summary["sparsity"].items()}
  _assert_png(report.write_run_report(workdir, summary))
  # Without a summary: the mask's density at the last epoch, and drop/grow counts in weights.
  run = report.load_run(workdir)
  density, source = report.final_per_layer(run, "density")
  assert source == "mask density at the last epoch"
  assert density == {k[len("mask_density/"):]: v for k, v in run.records[24].items()
                     if k.startswith("mask_density/")}
  assert report._unit([run], report.QUANTITIES[-1]) == "weights"
  assert sorted(os.listdir(workdir)) == ["config.json", "metrics.jsonl", "report.png"]


@pytest.mark.slow
def test_report_of_a_static_mask_signin_run_and_of_a_dense_run(rigl_signin_run, tmp_path):
  static = _derived_run(rigl_signin_run, str(tmp_path / "static"), drop_prefixes=("mask_",),
                        config_changes={"schedule.method": "static"})
  assert _panels(static) == [
      "loss", "accuracy", "learning rate", "sign_flips_vs_init", "sign_flips_vs_prev_epoch",
      "beta", "final density", "final sign_flips_vs_init"]
  assert report.missing_notes(report.load_run(static)) == [
      "static mask: density constant (final bars), nothing dropped or grown"]
  _assert_png(report.write_run_report(static))

  dense = _derived_run(rigl_signin_run, str(tmp_path / "dense"), drop_prefixes=("mask_", "beta/"),
                       config_changes={"sparsity": 0.0, "signin.enabled": False},
                       summary_sparsity=0.0)
  assert _panels(dense) == [
      "loss", "accuracy", "learning rate", "sign_flips_vs_init", "sign_flips_vs_prev_epoch",
      "final sign_flips_vs_init"]
  assert report.missing_notes(report.load_run(dense)) == [
      "dense run: no mask (no density, dropped or grown)", "Sign-In off: no beta"]
  _assert_png(report.write_run_report(dense))


@pytest.mark.slow
def test_overlay_legend_names_what_differs(rigl_signin_run, tmp_path):
  plain = _derived_run(rigl_signin_run, str(tmp_path / "plain"), drop_prefixes=("beta/",),
                       config_changes={"signin.enabled": False})
  runs = [report.load_run(rigl_signin_run), report.load_run(plain)]
  assert report.run_labels(runs) == ["signin.enabled=True", "signin.enabled=False"]
  other = _derived_run(rigl_signin_run, str(tmp_path / "other"), drop_prefixes=("beta/",),
                       config_changes={"signin.enabled": False, "seed": 3})
  assert report.run_labels(runs + [report.load_run(other)]) == [
      "signin.enabled=True, seed=0", "signin.enabled=False, seed=0",
      "signin.enabled=False, seed=3"]
  same = _derived_run(rigl_signin_run, str(tmp_path / "same"), drop_prefixes=(),
                      config_changes={})
  # Nothing differs: the workdirs' names.
  assert report.run_labels([runs[0], report.load_run(same)]) == ["rigl_signin", "same"]
  out = str(tmp_path / "figures" / "pair.png")
  assert report.main([rigl_signin_run, plain, "--out", out]) == 0
  _assert_png(out)


# --- TensorBoard -------------------------------------------------------------------------------

@pytest.mark.slow
def test_tensorboard_reads_back_every_logged_scalar(rigl_signin_run):
  from tensorboard.backend.event_processing import plugin_event_accumulator
  from tensorboard.util import tensor_util
  # What TensorBoard's server loads: scalars are float32 tensor summaries of the 'scalars'
  # plugin (the writer emits no legacy simple_value summaries).
  events = plugin_event_accumulator.EventAccumulator(
      rigl_signin_run, size_guidance={plugin_event_accumulator.TENSORS: 0})
  events.Reload()
  tags = set(events.PluginTagToContent("scalars"))
  run = report.load_run(rigl_signin_run)
  logged = {k for r in run.records.values() for k in r}
  assert tags == logged
  for tag in sorted(tags):
    got = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
    steps, values = report.series(run, tag)
    assert got == {int(s): float(np.float32(v)) for s, v in zip(steps, values)}, tag
  assert "hparams" in events.PluginTagToContent("text")
