import pytest

from posttrain.core.errors import UsageError
from posttrain.recipe import parse
from posttrain.trainers.rtuning import RTuningConfig
from posttrain.trainers.sft import SFTConfig


def test_base_recipe_parses_into_the_method_config(tmp_path):
    r = parse("recipes/testbed/base.yaml")
    assert r.method == "sft" and isinstance(r.train, SFTConfig)
    assert r.scratch.from_scratch and r.scratch.hidden_size % r.scratch.num_attention_heads == 0
    assert r.train.weight_decay == 0.0 and r.data.dataset_train_split == "corpus"


def test_flags_override_yaml_keys():
    r = parse("recipes/testbed/base.yaml", ["--learning_rate", "1e-4", "--hidden_size", "64", "--lora_r", "4"])
    assert r.train.learning_rate == 1e-4 and r.scratch.hidden_size == 64 and r.model.lora_r == 4


def test_packaged_recipes_resolve_by_relative_name(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert parse("testbed/base.yaml").method == "sft"


@pytest.mark.parametrize("yaml_text, message", [
    ("method: sft\nfrom_scratch: true\nlerning_rate: 0.1\n", "unknown keys.*lerning_rate"),
    ("method: nope\n", "unknown method 'nope'"),
    ("- a\n- b\n", "YAML mapping"),
    ("method: sft\n", "model_name_or_path"),
])
def test_bad_recipes_are_usage_errors(tmp_path, yaml_text, message):
    p = tmp_path / "r.yaml"
    p.write_text(yaml_text)
    with pytest.raises(UsageError, match=message):
        parse(str(p))


def test_unknown_flag_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown flags.*--no_such_flag"):
        parse("recipes/testbed/base.yaml", ["--no_such_flag", "1"])


@pytest.mark.parametrize("flags", [["--method", "rtuning"], ["--method=rtuning"], ["--method=sft", "--method", "rtuning"],
                                   ["--learning_rate", "1e-4", "--method=rtuning", "--split", "entropy"]])
def test_every_spelling_of_the_method_flag_selects_the_method_and_its_config(flags):
    r = parse("recipes/testbed/base.yaml", flags)
    assert r.method == r.data.method == "rtuning" and isinstance(r.train, RTuningConfig)


@pytest.mark.parametrize("flags, message", [
    (["--meth", "rtuning"], "unknown flags.*--meth"),  # no abbreviations: they would pick a method but not its config
    (["--learning_rat", "1e-4"], "unknown flags.*--learning_rat"),
    (["--method"], "--method: expected one argument"),
    (["--method=nope"], "unknown method 'nope'"),
])
def test_abbreviated_or_incomplete_flags_are_usage_errors(flags, message):
    with pytest.raises(UsageError, match=message):
        parse("recipes/testbed/base.yaml", flags)


def test_overwrite_output_dir_is_a_train_setting_off_by_default():
    assert parse("recipes/testbed/base.yaml").train.overwrite_output_dir is False
    assert parse("recipes/testbed/base.yaml", ["--overwrite_output_dir", "true"]).train.overwrite_output_dir is True
    assert parse("recipes/testbed/base.yaml", ["--overwrite_output_dir"]).train.overwrite_output_dir is True
