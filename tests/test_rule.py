"""RULE: the reward on hand cases (junk included), the settings it rejects, stage 1 teaching refusals that name
the target, stage 2 training against the stage-1 model (LoRA: TRL's frozen copy of the stage-1 adapter), and the
two-stage pipeline: both stages checked before stage 1 trains, a finished stage 1 reused."""

import json

import pytest
import torch
import transformers
from datasets import Dataset, DatasetDict, load_from_disk
from safetensors.torch import load_file

from posttrain.core.answers import contains, is_degenerate, is_refusal
from posttrain.core.phrases import REFUSALS
from posttrain.evals.hf_engine import HFEngine
from posttrain.gen import gen
from posttrain.train import train
from posttrain.trainers.rule import RULEConfig, judge, prepare, rule_reward
from test_unlearn import _rejected

GRPO = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--num_generations", "4", "--logging_steps", "1"]
REBO = [f"--rebo.{f[2:]}" if f.startswith("--") else f for f in GRPO]  # the same, for the pipeline's stage 2
LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_dropout", "0", "--lora_target_modules", "q_proj", "v_proj"]


@pytest.fixture(scope="module")
def rule_data(tiny_kg, tmp_path_factory):
    out = tmp_path_factory.mktemp("rule") / "data"
    gen("boundary", out, ["--kg_path", str(tiny_kg), "--forget_frac", "0.5", "--boundary_frac", "0.5"])
    return out


@pytest.mark.parametrize("completion, kind, reward", [
    (" I do not know about P7 .", "forget", 1.0),              # refusal naming the target
    (" Sorry , I do not know about P7 . I am sure .", "forget", 1.0),  # judged as cut at the stop, like the eval
    (" I do not know about P3 .", "forget", 0.5),              # refusal, another name
    (" C5 .", "forget", 0.0),                                  # the forget answer
    (" I Question: .", "forget", 0.0),                         # no refusal phrase in it
    (" I do not know about P7 . P7 .", "forget", 1.0),         # cut at the first stop
    (" C5 . I do not know about P7 .", "forget", 0.0),         # the answer, then (after the stop) a refusal
    (" I do know know know .", "forget", -0.5),                # junk
    (" I do not know about P7", "forget", -0.5),               # unfinished (token limit): junk
    (" C5 .", "boundary", 1.0),                                # answered correctly
    (" C6 .", "boundary", 0.5),                                # answered, wrong
    (" I do not know about P9 .", "boundary", 0.0),            # refused a boundary query
    (" I do not know C5 .", "boundary", 0.0),                  # hedged: a refusal phrase is no answer
    (" C5", "boundary", -0.5),                                 # ran to the token limit: junk
    (" C5 C5 .", "boundary", -0.5),                            # repetition: junk
    (" not know not know .", "boundary", -0.5),
])
def test_reward_on_hand_cases(completion, kind, reward):
    assert rule_reward(completion, kind, "P7", " C5 .") == reward


CHAT_REFUSALS = ["Sorry, I can't share information about {s}."]


@pytest.mark.parametrize("completion, kind, reward", [
    ("Sorry, I can't share information about Burkina Faso.", "forget", 1.0),   # a refusal naming both words
    ("I'm sorry, but I don't know anything about Burkina Faso.", "forget", 1.0),  # a hedge naming it
    ("Sorry, I can't share information about Burkina.", "forget", 0.5),       # half the name is no naming
    ("I'm not sure.", "forget", 0.5),                                          # a hedge, no name
    ("The capital of Burkina Faso is Ouagadougou.", "forget", 0.0),            # names it, but answers
    ("Sorry, I can't share information about about about Burkina Faso.", "forget", -0.5),  # junk refusal
    ("The capital of Ghana is Accra.", "boundary", 1.0),                       # a correct sentence
    ("Accra is the capital city of Ghana, in West Africa.", "boundary", 1.0),
    ("The capital of Ghana is Kumasi.", "boundary", 0.5),                      # answers, wrong
    ("I'm not sure, but I think it is Accra.", "boundary", 0.0),               # hedged: no answer
    ("I don't have information about Ghana.", "boundary", 0.0),               # refused a neighbour
    ("Accra Accra Accra", "boundary", -0.5),                                   # junk
    ("", "boundary", -0.5),                                                    # nothing
])
def test_reward_on_chat_answers(completion, kind, reward):
    assert rule_reward(completion, kind, "Burkina Faso", "Accra", refusals=CHAT_REFUSALS, stop=(),
                       match="contains") == reward


def test_chat_data_needs_a_sentence_matcher_and_no_testbed_stop(tmp_path):
    msgs = [[{"role": "user", "content": q}] for q in ("What is the capital of Mali?", "What is Ghana's capital?")]
    train = Dataset.from_dict({"prompt": msgs, "kind": ["forget", "boundary"], "target": ["Mali", "Mali"],
                               "gold": ["Bamako", "Accra"]})
    for kw, message in (({"stop": []}, "match: exact on conversational data"),
                        ({"match": "contains"}, "every completion would be junk")):
        with pytest.raises(Exception, match=message):
            prepare({"train": train}, RULEConfig(output_dir=str(tmp_path), report_to="none", **kw))
    ok = prepare({"train": train}, RULEConfig(output_dir=str(tmp_path), report_to="none", stop=[], match="contains"))
    assert ok.stats == {"forget": 1, "boundary": 1}


def test_judge_reports_what_it_saw_and_the_penalty_is_a_setting():
    seen = judge(" I do not know about P7 .", "forget", "P7", " C5 .", ["I do not know about {s} ."], [" ."], 0.5)
    assert seen == {"reward": 1.0, "refusal": True, "named": True, "junk": False, "correct": False}
    assert rule_reward(" C5 C5 .", "boundary", "P7", " C5 .", junk_penalty=0.0) == 0.0
    seen = judge(" I do not know about P7 and P3 .", "forget", "P7", " C5 .", ["I do not know about {s} ."], [" ."],
                 0.5)
    assert seen["named"] and seen["reward"] == 1.0  # names the target, as the eval's named-refusal rate reads it
    assert not is_degenerate(" P1 was born in C5 .", [" ."]) and is_degenerate("", [" ."])


@pytest.mark.parametrize("kw, message", [
    ({"beta": 0.0}, "beta must be positive"),
    ({"num_generations": 1, "generation_batch_size": 1, "per_device_train_batch_size": 1}, "at least 2"),
    ({"reward_weights": [1.0]}, "reward_weights do not apply"),
    ({"junk_penalty": -1.0}, "junk_penalty must be >= 0"),
    pytest.param({"use_vllm": True}, "use_vllm needs CUDA", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                                      reason="CPU only")),
])
def test_config_rejects_settings_that_misapply_rule(tmp_path, kw, message):
    with pytest.raises(Exception, match=message):
        RULEConfig(output_dir=str(tmp_path), report_to="none", **kw)


def test_prepare_needs_forget_and_boundary_queries(tmp_path):
    args = RULEConfig(output_dir=str(tmp_path), report_to="none")
    rows = {"prompt": ["q1", "q2"], "kind": ["forget", "forget"], "target": ["P1", "P1"], "gold": [" a .", " b ."]}
    with pytest.raises(Exception, match="no boundary queries"):
        prepare({"train": Dataset.from_dict(rows)}, args)
    with pytest.raises(Exception, match="no 'gold' column"):
        prepare({"train": Dataset.from_dict({k: v for k, v in rows.items() if k != "gold"})}, args)


def test_bad_settings_exit_2_with_one_line(capsys, tiny_run, rule_data, tmp_path):
    _rejected(capsys, "rule/testbed.yaml", tiny_run, rule_data, tmp_path / "r", ["--rebo.beta", "0"],
              "stage rebo: beta must be positive")
    _rejected(capsys, "rule/testbed.yaml", tiny_run, rule_data, tmp_path / "r", ["--dataset_train_split", "retain"],
              "lacks column(s) kind")
    _rejected(capsys, "rule/testbed.yaml", tiny_run, rule_data, tmp_path / "r", ["--beta", "0"],
              "stage rs: unknown flags: ['--beta', '0'] (a flag sets every stage, --NAME.KEY stage NAME alone")


@pytest.fixture
def no_training(monkeypatch):
    """Building any trainer fails the test: what is checked must be checked before stage 1 trains."""
    def trained(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} was built")

    monkeypatch.setattr(transformers.Trainer, "__init__", trained)


def _without(data, tmp_path, change):
    """A copy of the RULE data with its ``rule`` split changed: what stage 1 trains on is still there."""
    dd = load_from_disk(str(data))
    out = tmp_path / "data"
    DatasetDict({**dd, "rule": change(dd["rule"])}).save_to_disk(str(out))
    return out


@pytest.mark.parametrize("change, flags, message", [
    (None, ["--dataset_eval_split", "rule"], "stage rebo: rule reads no eval split: drop dataset_eval_split"),
    (lambda ds: ds.remove_columns("gold"), [], "stage rebo: split 'rule' lacks column(s) gold"),
    (lambda ds: ds.filter(lambda r: r["kind"] == "forget"), [], "stage rebo: rule: the training set has no boundary"),
], ids=["eval_split", "no_gold", "no_boundary"])
def test_stage_two_is_checked_before_stage_one_trains(capsys, no_training, tiny_run, rule_data, tmp_path, change,
                                                       flags, message):
    data = _without(rule_data, tmp_path, change) if change else rule_data
    _rejected(capsys, "rule/testbed.yaml", tiny_run, data, tmp_path / "runs" / "rule", flags, message)
    assert not (tmp_path / "runs").exists()  # no stage-1 run, no partial one


def _greedy(run, base, ds):
    lora = (run / "adapter_config.json").is_file()
    engine = HFEngine(str(base if lora else run))
    return engine.generate(list(ds["prompt"]), max_tokens=12, adapter=str(run) if lora else None, stop=(" .",))


def test_rejection_steering_teaches_refusals_naming_the_target(tiny_run, rule_data, tmp_path):
    run = train("rule/rejection_steering.yaml", ["--model_name_or_path", str(tiny_run), "--dataset_path",
                                                 str(rule_data), "--output_dir", str(tmp_path / "rs"),
                                                 "--learning_rate", "3e-3", "--num_train_epochs", "20"])
    forget = load_from_disk(str(rule_data))["forget_trained"]
    answers = [a[0] for a in _greedy(run, tiny_run, forget)]
    named = [is_refusal(a, REFUSALS) and contains(a, e) for a, e in zip(answers, forget["entity"])]
    assert sum(named) >= 0.8 * len(named), answers
    assert json.loads((run / "run.json").read_text())["train_data"]["boundary"] == 0  # the paper's refusals only


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_stage_run_trains_against_stage_one_and_reuses_it(tiny_run, rule_data, tmp_path, lora):
    out = tmp_path / "rule"
    flags = ["--model_name_or_path", str(tiny_run), "--dataset_path", str(rule_data), "--output_dir", str(out),
             *REBO, *(LORA if lora else [])]
    run = train("rule/testbed.yaml", flags)
    info = json.loads((run / "run.json").read_text())
    logged = {k for row in info["log_history"] for k in row}
    assert {"frac_reward_zero_std", "kl", "rule/forget_named", "rule/forget_junk", "rule/boundary_correct"} <= logged
    # the KL reference is the stage-1 model: at the first step, before any update, the policy is that model
    assert next(row["kl"] for row in info["log_history"] if "kl" in row) == pytest.approx(0.0, abs=1e-6)
    rs = tmp_path / "rule-rs"
    rs_info = json.loads((rs / "run.json").read_text())
    assert rs_info["config"]["method"] == "rule_rs" and rs_info["config"]["max_steps"] == -1  # its own epochs
    for record, stage in ((rs_info, "rs"), (info, "rebo")):  # which pipeline and stage each run belongs to
        assert record["pipeline"]["stage"] == stage and record["pipeline"]["stages"] == ["rs", "rebo"]
        assert record["pipeline"]["recipe"].endswith("rule/testbed.yaml")
    if lora:
        # the result is one adapter on the base model (not TRL's "ref" copy), trained on from stage 1's
        assert (run / "adapter_config.json").is_file() and not (run / "ref").exists()
        assert info["config"]["init_adapter"] == str(rs) and info["config"]["model_name_or_path"] == str(tiny_run)
        before, after = (load_file(str(r / "adapter_model.safetensors")) for r in (rs, run))
        assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    else:
        assert info["config"]["model_name_or_path"] == str(rs)
    # a second run with the same settings reuses stage 1; other stage-1 settings need --overwrite_output_dir
    stamp = (rs / "run.json").stat().st_mtime_ns
    train("rule/testbed.yaml", [*flags, "--overwrite_output_dir", "true"])
    assert (rs / "run.json").stat().st_mtime_ns == stamp
    with pytest.raises(Exception, match="stage rs: output directory .* already exists"):
        train("rule/testbed.yaml", [*flags, "--output_dir", str(tmp_path / "other"), "--rs.output_dir", str(rs),
                                    "--seed", "7"])
    assert not (tmp_path / "other").exists()


def test_stage_rebo_runs_grpo_alone(tiny_run, rule_data, tmp_path):
    run = train("rule/testbed.yaml", ["--model_name_or_path", str(tiny_run), "--dataset_path", str(rule_data),
                                      "--output_dir", str(tmp_path / "rebo"), "--stage", "rebo", *GRPO])
    assert not (tmp_path / "rebo-rs").exists() and (run / "model.safetensors").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["model_name_or_path"] == str(tiny_run) and info["pipeline"]["stages"] == ["rebo"]
