"""MUSCLE (trainers/muscle.py): the per-token teacher choice, the distillation term, the new task model as a frozen
copy of its adapter, a toy update whose negative flips MUSCLE removes, saved runs and the rejections."""

import json

import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk

from conftest import cli
from posttrain.core.modeling import load_frozen, load_model, load_tokenizer
from posttrain.train import train
from posttrain.trainers.muscle import MuscleConfig, MuscleTrainer, kd_per_token, old_teacher_mask


def _logits(*rows):
    return torch.tensor(rows, dtype=torch.float)


def test_mask_sends_wrong_tokens_to_the_old_model_and_right_ones_to_the_new():
    student = _logits([3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0])
    old = _logits([0.0, 3.0, 0.0], [0.0, 3.0, 0.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0])
    gold = torch.tensor([0, 2, 2, 1])  # student right, wrong, right, wrong
    seq = torch.tensor([0, 0, 1, 1])
    assert old_teacher_mask("student_wrong", student, old, gold, seq).tolist() == [False, True, False, True]
    assert old_teacher_mask("old_correct", student, old, gold, seq).tolist() == [False, False, False, False]
    assert old_teacher_mask("old", student, old, gold, seq).tolist() == [True] * 4
    assert old_teacher_mask("new", student, old, gold, seq).tolist() == [False] * 4
    # p(gold) of the student: 0.91, 0.045, 0.91, 0.045; of ``old``: 0.045 everywhere (tokens 1 and 3 tie: not below)
    assert old_teacher_mask("token_likelihood", student, old, gold, seq).tolist() == [False, False, False, False]
    flat = _logits([0.0, 0.0, 0.0], [0.0, 0.0, 9.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])  # 1/3, ~1, 1/3, 1/3
    assert old_teacher_mask("token_likelihood", student, flat, gold, seq).tolist() == [False, True, False, True]
    # per sequence: the student's log p(y) is log .91 + log .045 = -3.2 in both; the old model's -6.2 in sequence 0
    # (not below it) and -2.2 in sequence 1 (below it), so every token of sequence 1 learns from the old model
    mixed = _logits([0.0, 3.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert old_teacher_mask("sequence_likelihood", student, mixed, gold, seq).tolist() == [False, False, True, True]


def test_distillation_term_is_zero_for_the_teacher_itself_and_the_kl_at_temperature_otherwise():
    z = torch.randn(5, 11)
    assert torch.allclose(kd_per_token(z, z.clone(), 2.0), torch.zeros(5), atol=1e-6)
    t = torch.randn(5, 11)
    p, q = torch.softmax(t / 2, -1), torch.softmax(z / 2, -1)
    assert torch.allclose(kd_per_token(z, t, 2.0), (p * (p.log() - q.log())).sum(-1), atol=1e-5)
    assert (kd_per_token(z, t, 2.0) > 0).all()


# --- a toy update: T1 answers every item right, T2 gets half of them wrong -----------------------------------------

@pytest.fixture(scope="module")
def toy(tiny_run, tiny_kg, tmp_path_factory):
    """Items: 8 seen questions. T1 (the tiny base fine-tuned) learned their gold answers; T2 (the same base
    fine-tuned) learned wrong objects for items 0-3: four negative flips. Data directory: ``gold`` and ``corrupt``
    splits. Full fine-tuning: on the barely trained 1-layer base, LoRA does not learn 8 answers in a few steps."""
    root = tmp_path_factory.mktemp("muscle")
    seen = load_from_disk(str(tiny_kg))["seen"].select(range(8))
    gold = seen.select_columns(["prompt", "completion"])
    answers = list(seen["answer"])
    wrong = [c.replace(a, next(b for b in answers[i + 1:] + answers if b != a)) if i < 4 else c
             for i, (c, a) in enumerate(zip(gold["completion"], answers))]
    data = root / "data"
    DatasetDict({"gold": gold, "corrupt": Dataset.from_dict({"prompt": gold["prompt"], "completion": wrong}),
                 "corpus": load_from_disk(str(tiny_kg))["corpus"]}).save_to_disk(str(data))
    common = ["--model_name_or_path", tiny_run, "--dataset_path", data, "--learning_rate", "1e-2",
              "--max_steps", "60", "--per_device_train_batch_size", "8", "--use_peft", "false"]
    t1 = train("muscle/task.yaml", [*map(str, common), "--dataset_train_split", "gold", "--output_dir",
                                    str(root / "t1")])
    t2 = train("muscle/task.yaml", [*map(str, common), "--dataset_train_split", "corrupt", "--output_dir",
                                    str(root / "t2")])
    return {"root": root, "data": data, "t1": t1, "t2": t2, "base": tiny_run, "gold": gold}


def _margins(run, items) -> list[float]:
    """Per item: the smallest margin, over its answer tokens (and EOS) under teacher forcing, of the gold token's
    log-probability over the best other token's — positive everywhere: greedy decoding gives the gold answer."""
    tok, model = load_tokenizer(str(run)), load_frozen(str(run))
    out = []
    for p, c in zip(items["prompt"], items["completion"]):
        n = len(tok(p)["input_ids"])
        ids = torch.tensor([tok(p + c + tok.eos_token)["input_ids"]])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, n - 1:-1].log_softmax(-1)
        gold = ids[0, n:, None]
        out.append(float((logp.gather(-1, gold) - logp.scatter(-1, gold, -torch.inf).max(-1, keepdim=True).values)
                         .min()))
    return out


def _muscle(toy, name, *flags):
    """MUSCLE from T2 (full fine-tuning: the model is T2, the new teacher a frozen copy of it)."""
    return train("muscle/muscle.yaml", [
        "--model_name_or_path", str(toy["t2"]), "--init_adapter", "", "--dataset_path", str(toy["data"]),
        "--dataset_train_split", "gold", "--old_model", str(toy["t1"]), "--output_dir", str(toy["root"] / name),
        "--learning_rate", "2e-3", "--max_steps", "40", "--per_device_train_batch_size", "8", "--logging_steps", "1",
        *flags])


def nfr(old: list[float], new: list[float]) -> float:
    return sum(o > 0 and n <= 0 for o, n in zip(old, new)) / len(old)


@pytest.mark.slow
def test_a_few_steps_of_muscle_undo_the_negative_flips_and_keep_the_new_models_right_answers(toy):
    """Where T2 is confidently wrong, the paper's loss pulls a wrong token toward T1 and a right one back toward T2:
    the flipped items climb from T2's margin to the decision boundary (some cross it), the others stay right, and
    with the new teacher alone (mask ``new``) nothing moves."""
    old, new = _margins(toy["t1"], toy["gold"]), _margins(toy["t2"], toy["gold"])
    assert min(old) > 1 and max(new[:4]) < -5 and min(new[4:]) > 1 and nfr(old, new) == 0.5, (old, new)
    muscle = _muscle(toy, "muscle")
    after = _margins(muscle, toy["gold"])
    assert min(after[:4]) > -3 and min(after[4:]) > 0 and nfr(old, after) <= 0.5, after
    control = _margins(_muscle(toy, "self_kd", "--mask", "new"), toy["gold"])
    assert max(control[:4]) < -5 and nfr(old, control) == 0.5, control
    log = [h for h in json.loads((muscle / "run.json").read_text())["log_history"] if "muscle/old_frac" in h]
    assert log[0]["muscle/old_frac"] > 0.1 and log[0]["muscle/kd"] > 0.1


@pytest.mark.slow
def test_lora_the_new_teacher_is_t2_at_every_step_and_the_run_holds_the_trained_adapter_only(
        toy, tiny_run, tiny_lora, tmp_path):
    """Started from T2's adapter (``init_adapter``), the new teacher is a frozen copy of that adapter on the same
    base weights — not the bare base with the adapter off — and the run saves the trained adapter alone."""
    from peft import PeftModel

    tok = load_tokenizer(str(tiny_run))
    t2 = PeftModel.from_pretrained(load_model(str(tiny_run)), str(tiny_lora)).eval()
    student = PeftModel.from_pretrained(load_model(str(tiny_run)), str(tiny_lora), is_trainable=True)
    args = MuscleConfig(output_dir=str(tmp_path), report_to="none", max_steps=3, learning_rate=2e-2,
                        per_device_train_batch_size=8, save_strategy="no", old_model=str(toy["t1"]))
    seen = []

    class Watch(MuscleTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            forward = {k: inputs[k] for k in ("input_ids", "attention_mask")}
            seen.append((forward, self.reference(**forward).logits))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = Watch(student, args, train_dataset=toy["gold"], processing_class=tok)
    trainer.train()
    assert len(seen) == 3
    for forward, ref in seen:
        with torch.no_grad():
            assert torch.allclose(ref, t2(**forward).logits, atol=1e-5)
    trained = [p for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all(".default." in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    with torch.no_grad(), t2.disable_adapter():
        assert not torch.allclose(t2(**seen[0][0]).logits, seen[0][1], atol=1e-3)  # the bare base differs
    assert not torch.allclose(trainer.model(**seen[-1][0]).logits, seen[-1][1], atol=1e-3)  # the student moved
    trainer.save_model(str(tmp_path / "run"))
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file() and not (tmp_path / "run" / "ref").exists()


@pytest.mark.slow
@pytest.mark.parametrize("flags,message", [
    (["--mask", "sometimes"], "mask must be one of"),
    (["--temperature", "0"], "temperature must be positive"),
    (["--distill_weight", "0"], "0 would be plain SFT"),
    (["--mask", "token_likelihood"], "needs the CE term"),
    (["--old_model", ""], "set old_model"),
    (["--old_model", "/nonexistent"], "neither a model nor a LoRA run"),
    (["--use_peft", "true"], "use_peft without init_adapter would add a fresh LoRA adapter"),
])
def test_settings_that_would_misapply_muscle_are_rejected_in_one_line(toy, capsys, tmp_path, flags, message):
    out = tmp_path / "out"
    proc = cli(capsys, "train", "muscle/muscle.yaml", "--model_name_or_path", toy["t2"], "--init_adapter", "",
               "--dataset_path", toy["data"], "--dataset_train_split", "gold", "--old_model", toy["t1"],
               "--output_dir", out, "--max_steps", "1", *flags)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("posttrain:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("posttrain: error:") and message in lines[0] and not out.exists()


@pytest.mark.slow
def test_an_old_model_with_another_tokenizer_is_rejected(toy, tmp_path):
    other = tmp_path / "other"
    tok = load_tokenizer(str(toy["base"]))
    tok.add_tokens(["brand-new-word"])
    model = load_model(str(toy["base"]))
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(str(other))
    tok.save_pretrained(str(other))
    args = MuscleConfig(output_dir=str(tmp_path / "o"), report_to="none", max_steps=1, old_model=str(other))
    from posttrain.core.errors import ConfigError

    with pytest.raises(ConfigError, match="different tokenizer"):
        MuscleTrainer(load_model(str(toy["base"])), args, train_dataset=toy["gold"],
                      processing_class=load_tokenizer(str(toy["base"])))


def test_a_fresh_lora_adapter_is_refused_its_new_teacher_would_be_the_bare_base(capsys, tiny_run, tiny_kg, tmp_path):
    """``use_peft`` without ``init_adapter``: the new teacher (the model before training, the fresh adapter off)
    and the starting point would be ``model_name_or_path`` itself, not T2's adapter on it."""
    from peft import LoraConfig

    from posttrain.core.errors import ConfigError

    args = MuscleConfig(output_dir=str(tmp_path / "o"), report_to="none", old_model=str(tiny_run))
    with pytest.raises(ConfigError, match="the bare base model instead of T2"):
        MuscleTrainer(load_model(str(tiny_run)), args, processing_class=load_tokenizer(str(tiny_run)),
                      peft_config=LoraConfig(r=4, task_type="CAUSAL_LM"))
    out = tmp_path / "run"
    proc = cli(capsys, "train", "muscle/muscle.yaml", "--model_name_or_path", tiny_run, "--init_adapter", "",
               "--use_peft", "true", "--dataset_path", tiny_kg, "--dataset_train_split", "seen", "--old_model",
               tiny_run, "--output_dir", out, "--max_steps", "1")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("posttrain:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines == ["posttrain: error: muscle: use_peft without init_adapter would add a fresh LoRA adapter: the "
                     "model would start from, and the new teacher would be, the bare base model instead of T2; start "
                     "from T2's adapter (init_adapter: T2_RUN), or for a full-model T2 use full fine-tuning"]
    assert not list(tmp_path.glob("*run*"))
