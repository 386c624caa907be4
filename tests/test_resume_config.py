"""Which config changes a resumed run accepts (signin_jax/resume_config.py); end to end in
tests/test_checkpoint_resume.py."""

import logging

import pytest

from configs import default
from signin_jax import resume_config


def saved(**changes):
  """A checkpoint's record of the default config with ``changes`` (dotted names)."""
  config = default.get_config()
  for field, value in changes.items():
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return resume_config.record(config)


def test_the_same_config_and_the_cadence_fields_resume():
  config = default.get_config()
  assert resume_config.differences(saved(), config) == []
  changed = saved(log_every_steps=1, eval_every_epochs=3, checkpoint_every_steps=7,
                  keep_checkpoints=9, export_epochs=(1, 2), data_dir="/elsewhere",
                  distributed=True, num_processes=4, process_id=3,
                  distributed_coordinator="10.0.0.1:1234")
  assert resume_config.differences(changed, config) == []


def test_every_field_that_changes_the_training_is_named():
  config = default.get_config()
  record = saved(learning_rate=0.2, seed=3, **{"schedule.method": "set", "mask.method": "snip",
                                               "signin.beta": 2.0, "dataset": "cifar100"})
  assert [f for f, _, _ in resume_config.differences(record, config)] == [
      "dataset", "learning_rate", "mask.method", "schedule.method", "seed", "signin.beta"]
  assert ("seed", 3, 0) in resume_config.differences(record, config)


def test_init_from_may_move_but_not_appear_or_vanish():
  config = default.get_config()
  config.init_from.workdir = "/new/place/of/source"
  assert resume_config.differences(saved(**{"init_from.workdir": "/old/source"}), config) == []
  assert resume_config.differences(saved(), config) == [
      ("init_from.workdir", None, "/new/place/of/source")]
  config.init_from.workdir = None
  assert resume_config.differences(saved(**{"init_from.workdir": "/old/source"}), config) == [
      ("init_from.workdir", "/old/source", None)]


def test_fields_an_older_checkpoint_lacks_count_as_their_defaults():
  record = saved()
  del record["label_smoothing"], record["schedule"]  # Added to the config since.
  config = default.get_config()
  assert resume_config.differences(record, config, resume_config.default_record()) == []
  config.schedule.drop_fraction = 0.5
  assert resume_config.differences(record, config, resume_config.default_record()) == [
      ("schedule.drop_fraction", resume_config.ABSENT, 0.5)]
  # Without the defaults (configs/ not shipped) an absent field cannot be judged: it differs.
  assert len(resume_config.differences(record, default.get_config(), None)) > 1


def test_a_field_removed_from_the_config_is_not_compared():
  record = saved()
  record["an_old_field"], record["signin"]["an_old_option"] = 3, "x"
  assert resume_config.differences(record, default.get_config()) == []


def test_may_differ_names_real_fields():
  fields = set(resume_config._flat(resume_config.record(default.get_config())))
  assert set(resume_config.MAY_DIFFER) <= fields


def test_check_names_the_step_and_every_field_and_warns_for_unrecorded(caplog):
  config = default.get_config()
  with pytest.raises(ValueError, match=r"at step 20 in /w/checkpoints: .* differs in "
                                       r"config.seed: 1 in the checkpoint, 0 now\. .*Only these "
                                       r"may differ on resume: config.log_every_steps"):
    resume_config.check({10: saved(), 20: saved(seed=1)}, config, directory="/w/checkpoints")
  with caplog.at_level(logging.WARNING):
    resume_config.check({10: None, 20: saved()}, config, directory="/w/checkpoints")
  assert "[10]" in caplog.text and "before checkpoints stored their config" in caplog.text
