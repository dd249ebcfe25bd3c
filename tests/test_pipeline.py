"""Pipeline recipes (``stages:``): each stage's keys (its file, the shared keys, its own, the flags), its directory and
starting point (the previous stage's model, or its adapter with LoRA), ``--stage NAME``, the settings refused in one
line, and the checks ``posttrain train`` makes of every stage before the first one trains: a finished stage of the
same settings reused, ``resume_from_checkpoint: true`` resuming the stage that was interrupted. Parsing and checking
only: RULE's two stages train in ``test_rule.py`` and ``test_resume.py``."""

import json
from pathlib import Path

import pytest
import transformers
import yaml
from datasets import Dataset, DatasetDict

from posttrain.core.errors import UsageError
from posttrain.recipe import parse, parse_stages
from posttrain.train import plan, settings_digest, train


@pytest.fixture
def data(tmp_path):
    rows = {"prompt": ["Q1", "Q2"], "completion": [" A1 .", " A2 ."]}
    out = tmp_path / "data"
    DatasetDict({"corpus": Dataset.from_dict(rows), "valid": Dataset.from_dict(rows)}).save_to_disk(str(out))
    return out


def _pipeline(tmp_path, data, stages=None, **keys):
    """A pipeline of two SFT stages, ``a`` from a recipe file and ``b`` inline, on a model path that need not
    exist (nothing is trained)."""
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({"method": "sft", "learning_rate": 0.1, "num_train_epochs": 3, "seed": 5,
                                     "model_name_or_path": "elsewhere", "output_dir": str(tmp_path / "ignored")}))
    two = [{"a": str(first)}, {"b": {"method": "sft", "learning_rate": 0.2}}]
    recipe = {"stages": two if stages is None else stages,
              "model_name_or_path": "base", "dataset_path": str(data), "output_dir": str(tmp_path / "run"),
              "seed": 1, "report_to": "none", **keys}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if v is not None}))
    return str(path)


def test_a_stage_has_its_files_keys_then_the_shared_ones_then_its_own_then_the_flags(tmp_path, data):
    path = _pipeline(tmp_path, data)
    a, b = parse_stages(path, ["--a.learning_rate", "0.3", "--logging_steps", "7", "--b.max_steps=4"])
    assert (a.stage, a.stages, a.pipeline, a.path) == ("a", ("a", "b"), path, str(tmp_path / "first.yaml"))
    assert (b.stage, b.path) == ("b", path)
    assert (a.train.learning_rate, a.train.num_train_epochs, a.train.seed) == (0.3, 3, 1)  # flag, file, shared
    assert (b.train.learning_rate, b.train.max_steps, b.train.seed) == (0.2, 4, 1)  # own, own flag, shared
    assert a.train.logging_steps == b.train.logging_steps == 7
    # each stage in its own directory; the second starts from the first's model
    assert a.train.output_dir == str(tmp_path / "run-a") and b.train.output_dir == str(tmp_path / "run")
    assert a.model.model_name_or_path == "base" and b.model.model_name_or_path == str(tmp_path / "run-a")
    assert parse_stages(path, ["--output_dir", str(tmp_path / "x")])[0].train.output_dir == str(tmp_path / "x-a")


def test_with_lora_a_stage_trains_the_previous_stages_adapter_on_the_same_base(tmp_path, data):
    a, b = parse_stages(_pipeline(tmp_path, data, use_peft=True, lora_r=4))
    assert a.data.init_adapter is None and b.data.init_adapter == a.train.output_dir
    assert a.model.model_name_or_path == b.model.model_name_or_path == "base" and b.model.lora_r == 4
    # the adapter's settings come with it, wherever the first stage had them from
    one = [{"a": {"method": "sft", "use_peft": True, "lora_r": 4, "lora_target_modules": ["q_proj"]}},
           {"b": {"method": "sft", "lora_r": 4}}]
    a, b = parse_stages(_pipeline(tmp_path, data, stages=one))
    assert b.model.use_peft and (b.model.lora_r, b.model.lora_target_modules) == (4, a.model.lora_target_modules)


def test_stage_name_runs_that_stage_alone_on_the_shared_model(tmp_path, data):
    [b] = parse_stages(_pipeline(tmp_path, data), ["--stage", "b", "--model_name_or_path", "other"])
    assert (b.stage, b.stages, b.train.output_dir) == ("b", ("b",), str(tmp_path / "run"))
    assert b.model.model_name_or_path == "other"


@pytest.mark.parametrize("keys, flags, message", [
    ({}, ["--c.seed", "1"], "--c.seed: no stage 'c'; the stages are: a, b"),
    ({}, ["--b.model_name_or_path", "x"], "stage b: it starts from stage a's run; drop its model_name_or_path"),
    ({"stages": [{"a": {"method": "sft"}}, {"b": {"method": "sft", "init_adapter": "x"}}]}, [],
     "stage b: it starts from stage a's run; drop its init_adapter"),
    ({}, ["--b.use_peft", "true"], "stage b: use_peft True would be ignored: it trains stage a's run on, made with "
     "use_peft False"),
    ({"use_peft": True}, ["--b.lora_r", "32"], "stage b: lora_r 32 would be ignored: it trains stage a's run on, "
     "made with lora_r 16"),
    ({"stages": [{"a": {"method": "sft", "use_peft": True}}, {"b": {"method": "sft", "lora_alpha": 7}}]}, [],
     "stage b: lora_alpha 7 would be ignored"),
    ({}, ["--b.no_such_key", "1"], "stage b: unknown flags: ['--no_such_key', '1'] (a flag sets every stage"),
    ({"stages": [{"a": {"method": "sft", "lerning_rate": 1}}]}, [], "stage a: unknown keys: lerning_rate"),
    ({}, ["--stage", "c"], "unknown stage 'c'; the stages are: a, b"),
    ({}, ["--stage", "b", "--a.seed", "1"], "the --a.* flags would be ignored: --stage b runs that stage alone"),
    ({"method": "sft"}, [], "each stage names its own method"),
    ({"output_dir": None}, [], "set output_dir"),
    ({"stages": []}, [], "stages must be a list of NAME: RECIPE or NAME: {KEY: VALUE, ...}, in order"),
    ({"stages": {"a": {"method": "sft"}}}, [], "stages must be a list"),  # a mapping's order is no order in YAML
    ({"stages": [{"a": {}}, {"a": {}}]}, [], "two stages have the same name"),
    ({"stages": [{"a": 3}]}, [], "stage a: give a recipe file or a mapping of keys"),
    ({"stages": [{"a.b": {"method": "sft"}}]}, [], "stage name 'a.b'"),
])
def test_bad_pipelines_are_one_line_usage_errors(tmp_path, data, keys, flags, message):
    with pytest.raises(UsageError) as info:
        parse_stages(_pipeline(tmp_path, data, **keys), flags)
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1


def test_a_pipeline_is_no_stage_and_no_plain_recipe(tmp_path, data):
    path = _pipeline(tmp_path, data)
    (tmp_path / "outer").mkdir()
    with pytest.raises(UsageError, match="stage a: .* is itself a pipeline"):
        parse_stages(_pipeline(tmp_path / "outer", data, stages=[{"a": path}]))
    with pytest.raises(UsageError, match="is a pipeline of stages"):
        parse(path)


def test_every_stage_is_checked_before_the_first_trains(monkeypatch, tmp_path, data):
    def trained(self, *args, **kwargs):
        raise AssertionError("a trainer was built")

    monkeypatch.setattr(transformers.Trainer, "__init__", trained)
    with pytest.raises(UsageError, match="^stage b: unknown split 'nope'; the dataset has: corpus, valid$"):
        train(_pipeline(tmp_path, data), ["--b.dataset_eval_split", "nope"])
    assert not (tmp_path / "run-a").exists() and not (tmp_path / "run").exists()


def _finish(recipe, settings=None):
    """Pretend ``recipe``'s stage finished: its directory with a run.json recording its settings."""
    out = Path(recipe.train.output_dir)
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"pipeline": {"settings": settings or settings_digest(recipe)}}))


def test_a_finished_stage_of_the_same_settings_is_reused_and_one_of_others_is_refused(tmp_path, data):
    path = _pipeline(tmp_path, data)
    a, b = parse_stages(path)
    # where a run goes, whether it may replace or resume one: no part of its settings
    assert settings_digest(a) == settings_digest(parse_stages(path, ["--a.output_dir", str(tmp_path / "z"),
                                                                     "--overwrite_output_dir", "true"])[0])
    assert settings_digest(a) != settings_digest(parse_stages(path, ["--a.seed", "2"])[0])
    _finish(a)
    runs = plan(parse_stages(path))
    assert [r.reused for r in runs] == [True, False] and runs[1].prepared.train.num_rows == 2
    with pytest.raises(UsageError, match="^stage a: output directory .*run-a already exists"):
        plan(parse_stages(path, ["--a.seed", "2"]))
    assert not plan(parse_stages(path, ["--a.seed", "2", "--overwrite_output_dir", "true"]))[0].reused


def _checkpoint(path):
    """A complete checkpoint directory at ``path`` (as ``runs.complete_checkpoints`` sees one)."""
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    return path


def test_resume_true_resumes_the_first_stage_that_is_not_finished(tmp_path, data):
    path = _pipeline(tmp_path, data)
    a, b = parse_stages(path)
    with pytest.raises(UsageError, match="^stage a: resume_from_checkpoint true: no interrupted run of"):
        plan(parse_stages(path, ["--resume_from_checkpoint", "true"]))
    ckpt = _checkpoint(tmp_path / ".run-a.partial" / "checkpoint-2")
    runs = plan(parse_stages(path, ["--resume_from_checkpoint", "true"]))
    assert runs[0].resume == str(ckpt) and runs[1].resume is None  # stage b starts afresh after stage a
    _finish(a)
    with pytest.raises(UsageError, match="^stage b: resume_from_checkpoint true: no interrupted run of"):
        plan(parse_stages(path, ["--resume_from_checkpoint", "true"]))
    ckpt = _checkpoint(tmp_path / ".run.partial" / "checkpoint-4")
    runs = plan(parse_stages(path, ["--resume_from_checkpoint", "true"]))
    assert runs[0].reused and runs[1].resume == str(ckpt)


def test_a_checkpoint_path_resumes_one_stage_only(tmp_path, data):
    ckpt = _checkpoint(tmp_path / "checkpoint-2")
    (ckpt / "optimizer.pt").write_text("")
    with pytest.raises(UsageError, match="^stage b: resume_from_checkpoint .*: stage a trains first"):
        plan(parse_stages(_pipeline(tmp_path, data), ["--b.resume_from_checkpoint", str(ckpt)]))
    [b] = plan(parse_stages(_pipeline(tmp_path, data), ["--stage", "b", "--resume_from_checkpoint", str(ckpt)]))
    assert b.resume == str(ckpt)
