"""Config files and --config.KEY=VALUE overrides."""

import pytest

from jmtl.config import ConfigError, balancer_hparams, load_config

CONFIGS = ["configs/default.py", "configs/ud_tr.py", "configs/en_mix_single.py",
           "configs/ud_tr_single.py"]


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_load(path):
  config = load_config(path)
  assert config.train.steps > 0 and config.data.suite in ("en_mix", "ud_tr")


def test_overrides_keep_types_and_open_the_balancer_section():
  config = load_config("configs/default.py", [
      "train.steps=7", "optimizer.learning_rate=1", "balancer.name=gradnorm",
      "balancer.alpha=1.5", "data.buckets=(16, 32)", "data.tasks=ner"])
  assert config.train.steps == 7
  assert config.optimizer.learning_rate == 1.0 and isinstance(config.optimizer.learning_rate, float)
  assert balancer_hparams(config) == {"alpha": 1.5}
  assert config.data.buckets == (16, 32) and config.data.tasks == ("ner",)


@pytest.mark.parametrize("override,message", [
    ("train.stepz=5", "unknown config key 'train.stepz'; valid keys under 'train': .*steps"),
    ("nosuch.key=1", "unknown config key 'nosuch.key'"),
    ("train.steps=abc", "config key 'train.steps' expects int, got str 'abc'"),
    ("train.steps", "is not KEY=VALUE"),
])
def test_bad_overrides_name_the_problem(override, message):
  with pytest.raises(ConfigError, match=message):
    load_config("configs/default.py", [override])


def test_bad_config_files(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    load_config(str(tmp_path / "missing.py"))
  (tmp_path / "noget.py").write_text("x = 1\n")
  with pytest.raises(ConfigError, match="no get_config"):
    load_config(str(tmp_path / "noget.py"))
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  with pytest.raises(ConfigError, match="failed to load: SyntaxError"):
    load_config(str(tmp_path / "broken.py"))


def test_saved_config_round_trips_through_json():
  import json
  from jmtl.config import config_from_dict, to_json
  config = load_config("configs/default.py", ["data.buckets=(16, 32)", "data.tasks=ner",
                                              "data.batch_size={'ner': 4}", "balancer.alpha=1.5"])
  again = config_from_dict(json.loads(to_json(config)))
  assert to_json(again) == to_json(config)
  assert again.data.buckets == (16, 32) and again.data.batch_size == {"ner": 4}


def test_a_config_saved_by_an_older_jmtl_gets_the_new_keys_defaults():
  import json
  from jmtl.config import config_from_dict, to_json
  saved = json.loads(to_json(load_config("configs/default.py", ["train.steps=7",
                                                                "balancer.name=pcgrad"])))
  del saved["data"]["prefetch"], saved["model"]["architecture"], saved["train"]["log_cosines"]
  again = config_from_dict(saved)
  assert (again.data.prefetch, again.model.architecture, again.train.log_cosines) == (
      2, "hard", True)
  assert again.train.steps == 7 and again.balancer.name == "pcgrad"


def test_identity_mismatches_name_every_identity_key_and_skip_mutable_ones():
  import json
  from jmtl.config import identity_mismatches, to_json
  saved = json.loads(to_json(load_config("configs/default.py", ["balancer.name=gradnorm",
                                                                "balancer.alpha=1.5"])))
  current = json.loads(to_json(load_config("configs/default.py", [
      "balancer.name=gradnorm", "train.steps=5", "train.eval_every=7", "data.data_dir=/x",
      "model.depth=3", "optimizer.learning_rate=0.5", "seed=1"])))
  problems = identity_mismatches(saved, current)
  assert [p.split(":")[0] for p in problems] == [
      "balancer.alpha", "model.depth", "optimizer.learning_rate", "seed"]
  assert problems[0] == "balancer.alpha: the run has 1.5, this config has '(not set)'"
  assert identity_mismatches(saved, saved) == []
