"""IdkSFT on the seam: the seeded rewrite of the forget answers to refusals naming their subject, the trainer taking
only that rewrite, the model answering forget questions with a refusal after training while the retain answers
stay (full fine-tuning and LoRA), and the settings it rejects."""

import json

import pytest
from datasets import Dataset, load_from_disk

from posttrain.core.modeling import load_model, load_tokenizer
from posttrain.core.phrases import REFUSALS
from posttrain.evals.hf_engine import HFEngine
from posttrain.evals.metrics import is_refusal
from posttrain.trainers.idk_sft import IdkSFTConfig, IdkSFTTrainer, prepare
from posttrain.trainers.unlearn import prepare as unlearn_prepare
from test_unlearn import LORA, _nll, _rejected, _unlearn


def _data(kg):
    kg = load_from_disk(str(kg))
    return {part: kg[part].select_columns(["prompt", "completion", "entity"]) for part in ("forget", "retain")}


def test_prepare_rewrites_each_forget_answer_to_a_seeded_refusal_naming_its_subject(tiny_kg, tmp_path):
    data = _data(tiny_kg)

    def forget(seed):
        return prepare(data, IdkSFTConfig(output_dir=str(tmp_path), report_to="none", seed=seed)).train.parts["forget"]

    out = forget(0)
    assert out["prompt"] == data["forget"]["prompt"] and out["original_completion"] == data["forget"]["completion"]
    for c, e in zip(out["completion"], data["forget"]["entity"]):
        assert c in {" " + r.format(s=e) for r in REFUSALS}
    assert forget(0)["completion"] == out["completion"]
    assert any(forget(s)["completion"] != out["completion"] for s in range(1, 4))
    prepared = prepare(data, IdkSFTConfig(output_dir=str(tmp_path), report_to="none"))
    assert prepared.train.parts["retain"]["completion"] == data["retain"]["completion"]  # the retain set untouched
    one = IdkSFTConfig(output_dir=str(tmp_path), report_to="none", refusals=["No idea ."])
    assert set(prepare(data, one).train.parts["forget"]["completion"]) == {" No idea ."}


@pytest.mark.parametrize("kw, message", [
    ({"refusals": []}, "refusals is empty"),
    ({"refusals": ["  "]}, "refusals is empty"),
    ({"refusals": ["I do not know {x} ."]}, "placeholder(s) x"),
    ({"retain_weight": 0.0}, "retain_weight must be positive"),
])
def test_config_rejects_settings_that_would_misapply_it(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        IdkSFTConfig(output_dir=str(tmp_path), report_to="none", **kw)


def test_a_refusal_naming_the_subject_needs_an_entity(tmp_path):
    forget = Dataset.from_list([{"prompt": "Question: Where was P1 born ? Answer:", "completion": " C1 .",
                                 "entity": ""}])
    retain = Dataset.from_list([{"prompt": "Question: Where was P2 born ? Answer:", "completion": " C2 .",
                                 "entity": "P2"}])
    with pytest.raises(ValueError, match="forget item 0 has no entity"):
        prepare({"forget": forget, "retain": retain}, IdkSFTConfig(output_dir=str(tmp_path), report_to="none"))


def test_the_trainer_takes_only_the_rewrite(tiny_run, tiny_kg, tmp_path):
    args = IdkSFTConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(ValueError, match="not IdkSFT's rewrite"):  # plain SFT on the forget answers would teach them
        IdkSFTTrainer(load_model(str(tiny_run)), args, train_dataset=unlearn_prepare(_data(tiny_kg), args).train,
                      processing_class=load_tokenizer(str(tiny_run)))


def _answers(run, base, kg, split):
    prompts = list(load_from_disk(str(kg))[split]["prompt"])
    lora = (run / "adapter_config.json").is_file()
    out = HFEngine(str(base if lora else run)).generate(prompts, max_tokens=16, adapter=str(run) if lora else None)
    return [a[0] for a in out]


def _refusal_rate(answers):
    return sum(is_refusal(a) for a in answers) / len(answers)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_after_training_the_model_answers_forget_questions_with_a_refusal(tiny_run, tiny_kg, tmp_path, lora):
    flags = [*LORA, "--learning_rate", "1e-2"] if lora else ["--learning_rate", "2e-3"]
    before = {s: _refusal_rate(_answers(tiny_run, tiny_run, tiny_kg, s)) for s in ("forget", "retain")}
    nll_before = _nll(tiny_run, tiny_run, tiny_kg, "retain")
    run = _unlearn("idk_sft", tiny_run, tiny_kg, tmp_path / "idk", *flags, "--max_steps", "10")
    answers = _answers(run, tiny_run, tiny_kg, "forget")
    entities = load_from_disk(str(tiny_kg))["forget"]["entity"]
    assert before["forget"] < 0.5 and _refusal_rate(answers) == 1.0, answers
    if not lora:  # rank-4 LoRA on q/v of this one-layer model says the refusal but cannot copy the name into it
        assert sum(a.startswith("I do not know about " + e) for a, e in zip(answers, entities)) >= len(answers) // 2
    retain = _refusal_rate(_answers(run, tiny_run, tiny_kg, "retain"))
    assert retain - before["retain"] < 0.5, (before, retain)  # most retain questions are still answered
    assert _nll(run, tiny_run, tiny_kg, "retain") < nll_before + 0.5
    saved = load_from_disk(str(run / "train_data"))["forget"]
    assert saved.column_names == ["prompt", "completion", "original_completion"]
    assert json.loads((run / "run.json").read_text())["train_data"]["refusals"] >= 1


@pytest.mark.parametrize("flags, message", [
    (["--refusals", ""], "refusals is empty"),
    (["--retain_weight", "0"], "retain_weight must be positive"),
    (["--dataset_retain_split", ""], "idk_sft reads a retain split"),
])
def test_settings_that_would_misapply_idk_sft_exit_2_with_one_line(capsys, tiny_run, tiny_kg, tmp_path, flags,
                                                                    message):
    _rejected(capsys, "idk_sft", tiny_run, tiny_kg, tmp_path / "run", flags, message)
