"""Chat models end to end in training: every method on TRL's conversational rows (``prompt`` / ``completion`` as
message lists) through ``posttrain train``, on the session's tiny chat model (ChatML, eos ``<|im_end|>``). What a
user cares about: the prepared training set saved in the run is still conversational, the batches the loss sees hold
each conversation rendered through the chat template once, and the loss tokens are exactly the assistant turn —
its content and the template's end-of-turn (``<|im_end|>`` and ChatML's newline after it, as TRL's SFT trains) —
and RULE's reward reads the assistant content GRPO hands it as messages."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml
from datasets import Dataset, DatasetDict, load_from_disk
from transformers import AutoTokenizer
from trl.data_utils import is_conversational

from posttrain.core.errors import ConfigError
from posttrain.core.phrases import RTUNING_SURE as SURE
from posttrain.core.phrases import RTUNING_SURE_QUESTION as SURE_QUESTION
from posttrain.core.phrases import RTUNING_UNSURE as UNSURE
from posttrain.train import train
from posttrain.trainers import get_method
from posttrain.trainers.base import tokenize

QA = [("What is the capital of France?", "Paris", "France"), ("Which country is Lyon in?", "France", "Lyon"),
      ("What is the capital of Italy?", "Rome", "Italy"), ("Which country is Milan in?", "Italy", "Milan"),
      ("What is the capital of Spain?", "Madrid", "Spain"), ("Which country is Porto in?", "Portugal", "Porto")]
SYSTEM = {"role": "system", "content": "Answer briefly."}
REFUSAL = "I don't know about {s}."
END = "<|im_end|>\n"  # what ChatML puts after an assistant turn's content, and TRL's SFT trains on


def _rows(items, completion=lambda answer, entity: answer):
    rows = []
    for i, (q, a, e) in enumerate(items):
        prompt = [SYSTEM, {"role": "user", "content": q}] if i == 0 else [{"role": "user", "content": q}]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": completion(a, e)}],
                     "entity": e, "answer": a})
    return rows


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    """A DatasetDict of conversational rows: ``train`` (R-Tuning's probe columns too), ``forget`` / ``retain`` and
    ``rule`` (RULE's kind/target/gold; forget rows answered with a refusal naming the target)."""
    train_rows = [{**r, "probe_correct": i % 2 == 0, "probe_entropy": float(i)} for i, r in enumerate(_rows(QA))]
    rule_rows = [{**r, "kind": "forget", "target": r["entity"], "gold": r["answer"]}
                 for r in _rows(QA[:3], lambda a, e: REFUSAL.format(s=e))]
    rule_rows += [{**r, "kind": "boundary", "target": r["entity"], "gold": r["answer"]} for r in _rows(QA[3:])]
    out = tmp_path_factory.mktemp("chat_data") / "data"
    DatasetDict({"train": Dataset.from_list(train_rows), "forget": Dataset.from_list(_rows(QA[:3])),
                 "retain": Dataset.from_list(_rows(QA[3:])), "rule": Dataset.from_list(rule_rows)}
                ).save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def tok(tiny_chat_model):
    return AutoTokenizer.from_pretrained(str(tiny_chat_model))


def _recipe(tmp_path, model, data, method, **keys):
    """A recipe file for ``method`` on the chat model and data: a couple of tiny steps, no checkpoints."""
    base = {"method": method, "model_name_or_path": str(model), "dataset_path": str(data),
            "output_dir": str(tmp_path / method), "max_steps": 2, "per_device_train_batch_size": 3,
            "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": 0}
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump({**base, **keys}))
    return str(path)


@pytest.fixture
def spy(monkeypatch):
    """``spy(method)``: record every ``inputs`` the method's trainer's ``compute_loss`` is called with."""
    seen = []

    def watch(method):
        cls = get_method(method).Trainer
        original = cls.compute_loss

        def compute_loss(self, model, inputs, *a, **kw):
            seen.append(inputs)
            return original(self, model, inputs, *a, **kw)

        monkeypatch.setattr(cls, "compute_loss", compute_loss)
        return seen

    return watch


def _rendered(tok, row) -> str:
    return tok.apply_chat_template(list(row["prompt"]) + list(row["completion"]), tokenize=False)


def _check_batch(tok, batch, rows, loss_on="completion"):
    """Each row of a collated batch is one of ``rows`` rendered through the chat template once (no second BOS, no
    template inside the template), and its loss tokens are a suffix of it: the assistant content + END
    (``loss_on="all"``: every token of the conversation)."""
    texts = {_rendered(tok, r): r["completion"][-1]["content"] for r in rows}
    assert len(batch["input_ids"]) > 0
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        keep = mask.bool()
        ids, labels = ids[keep], labels[keep]
        text = tok.decode(ids)
        assert text in texts, text
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
        n = int((labels != -100).sum())
        assert (labels[len(labels) - n:] != -100).all()  # one span, at the end
        loss_text = tok.decode(labels[labels != -100])
        assert loss_text == (text if loss_on == "all" else texts[text] + END), loss_text
    return [tok.decode(i[m.bool()]) for i, m in zip(batch["input_ids"], batch["attention_mask"])]


def _check_saved(run, split, prompts, contents):
    """The run's prepared training set (``RUN/train_data/<split>``): conversational, prompts as given, one assistant
    message per completion with ``contents``."""
    ds = load_from_disk(str(run / "train_data"))[split]
    assert all(is_conversational(row) for row in ds)
    assert [list(p) for p in ds["prompt"]] == prompts
    assert [c for c in ds["completion"]] == [[{"role": "assistant", "content": t}] for t in contents]
    return ds


def _prompts(items):
    return [r["prompt"] for r in _rows(items)]


# --- the shared tokenisation ---------------------------------------------------------------------------------------

def test_tokenize_matches_trls_sft_on_a_conversational_pair(tok, tmp_path):
    """``base.tokenize`` (the unlearning collator's) gives the ids and loss span TRL's SFT preparation gives."""
    import trl

    from posttrain.trainers.sft import SFTConfig

    row = _rows(QA[:1])[0]
    ids, n_prompt = tokenize(tok, row["prompt"], row["completion"])
    assert tok.decode(ids) == _rendered(tok, row) and tok.decode(ids[n_prompt:]) == "Paris" + END
    ds = Dataset.from_list([{"prompt": row["prompt"], "completion": row["completion"]}])
    args = SFTConfig(output_dir=str(tmp_path), report_to="none")
    holder = SimpleNamespace(_tokenizer=tok, completion_only_loss=True, chat_template=None)
    out = trl.SFTTrainer._prepare_dataset(holder, ds, tok, args, False, None, "train")
    assert out[0]["input_ids"] == ids
    assert [i for i, lab in zip(ids, out[0]["labels"]) if lab != -100] == ids[n_prompt:]
    # plain text is as it was: prompt + completion + EOS
    plain, n = tokenize(tok, "Q: x A:", " y")
    assert tok.decode(plain[n:]) == " y<|im_end|>" and plain[-1] == tok.eos_token_id


# --- SFT-based methods ---------------------------------------------------------------------------------------------

def test_sft_trains_on_the_assistant_turn(tmp_path, tiny_chat_model, chat_data, tok, spy):
    seen = spy("sft")
    run = train(_recipe(tmp_path, tiny_chat_model, chat_data, "sft", dataset_train_split="train"))
    _check_saved(run, "train", _prompts(QA), [a for _, a, _ in QA])
    rows = _rows(QA)
    assert seen and all(_check_batch(tok, b, rows) for b in seen)
    assert json.loads((run / "run.json").read_text())["train_data"]["rows"] == len(QA)


@pytest.mark.parametrize("variant", ["suffix", "refusal"])
def test_rtuning_rewrites_the_assistant_content(tmp_path, tiny_chat_model, chat_data, tok, spy, variant):
    seen = spy("rtuning")
    refusals = ["I do not know the answer."]
    # suffix: the loss on the assistant turn (completion_only_loss); refusal: R-Tuning's default, the whole text
    extra = {"completion_only_loss": True} if variant == "suffix" else {"refusals": refusals}
    run = train(_recipe(tmp_path, tiny_chat_model, chat_data, "rtuning", dataset_train_split="train",
                        variant=variant, **extra))
    ok = [i % 2 == 0 for i in range(len(QA))]
    if variant == "suffix":
        contents = [f"{a} {SURE_QUESTION} {SURE if c else UNSURE}" for (_, a, _), c in zip(QA, ok)]
        assert contents[0] == "Paris Are you sure you accurately answered the question based on your internal " \
                              "knowledge? I am sure."
    else:
        contents = [a if c else refusals[0] for (_, a, _), c in zip(QA, ok)]
    ds = _check_saved(run, "train", _prompts(QA), contents)
    assert ds["certain"] == ok
    rows = [{"prompt": p, "completion": c} for p, c in zip(ds["prompt"], ds["completion"])]
    assert seen and all(_check_batch(tok, b, rows, "completion" if variant == "suffix" else "all") for b in seen)


def test_rule_rejection_steering_trains_the_refusals(tmp_path, tiny_chat_model, chat_data, tok, spy):
    seen = spy("rule_rs")
    run = train(_recipe(tmp_path, tiny_chat_model, chat_data, "rule_rs", dataset_train_split="rule"))
    refusals = [REFUSAL.format(s=e) for _, _, e in QA[:3]]
    ds = _check_saved(run, "train", _prompts(QA[:3]), refusals)
    rows = [{"prompt": p, "completion": c} for p, c in zip(ds["prompt"], ds["completion"])]
    assert seen and all(_check_batch(tok, b, rows) for b in seen)


def test_dco_sequence_probability_is_the_assistant_turns(tmp_path, tiny_chat_model, chat_data, tok, spy):
    seen = spy("dco")
    run = train(_recipe(tmp_path, tiny_chat_model, chat_data, "dco", dataset_train_split="train", n=4))
    _check_saved(run, "train", _prompts(QA), [a for _, a, _ in QA])
    assert seen and all(_check_batch(tok, b, _rows(QA)) for b in seen)
    logs = json.loads((run / "run.json").read_text())["log_history"]
    assert any("dco/logp" in h for h in logs)


def test_muscle_masks_cover_the_assistant_turn(tmp_path, tiny_chat_model, chat_data, tok, spy):
    seen = spy("muscle")
    run = train(_recipe(tmp_path, tiny_chat_model, chat_data, "muscle", dataset_train_split="train",
                        old_model=str(tiny_chat_model), max_steps=1))
    _check_saved(run, "train", _prompts(QA), [a for _, a, _ in QA])
    assert seen and all(_check_batch(tok, b, _rows(QA)) for b in seen)


# --- the unlearning family -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["grad_ascent", "grad_diff", "npo", "simnpo"])
def test_unlearning_pairs_train_on_the_assistant_turns(tmp_path, tiny_chat_model, chat_data, tok, spy, method):
    seen = spy(method)
    splits = {"dataset_forget_split": "forget", **({} if method == "grad_ascent" else
                                                   {"dataset_retain_split": "retain"})}
    run = train(_recipe(tmp_path, tiny_chat_model, chat_data, method, max_length=64, **splits))
    _check_saved(run, "forget", _prompts(QA[:3]), [a for _, a, _ in QA[:3]])
    assert seen
    for inputs in seen:
        _check_batch(tok, inputs["forget"], _rows(QA[:3]))
        if method != "grad_ascent":
            _check_batch(tok, inputs["retain"], _rows(QA[3:]))


def test_idk_sft_refusals_replace_the_assistant_content(tmp_path, tiny_chat_model, chat_data, tok, spy):
    seen = spy("idk_sft")
    run = train(_recipe(tmp_path, tiny_chat_model, chat_data, "idk_sft", dataset_forget_split="forget",
                        dataset_retain_split="retain", refusals=[REFUSAL]))
    forget = _check_saved(run, "forget", _prompts(QA[:3]), [REFUSAL.format(s=e) for _, _, e in QA[:3]])
    assert forget["original_completion"] == [[{"role": "assistant", "content": a}] for _, a, _ in QA[:3]]
    rows = [{"prompt": p, "completion": c} for p, c in zip(forget["prompt"], forget["completion"])]
    assert seen and all(_check_batch(tok, b["forget"], rows) for b in seen)


def test_forget_items_in_the_retain_split_are_found_in_chat_rows(tmp_path, tiny_chat_model, chat_data):
    both = tmp_path / "both"
    dd = load_from_disk(str(chat_data))
    DatasetDict({"forget": dd["forget"], "retain": dd["forget"]}).save_to_disk(str(both))
    with pytest.raises(ConfigError, match="3 forget item"):
        train(_recipe(tmp_path, tiny_chat_model, both, "grad_diff", dataset_forget_split="forget",
                      dataset_retain_split="retain"))


# --- RULE stage 2: GRPO on conversational prompts ------------------------------------------------------------------

def test_rule_reward_reads_the_assistant_content():
    from posttrain.trainers.rule import RULEReward

    reward = RULEReward(SimpleNamespace(refusals=[REFUSAL], stop=[], junk_penalty=0.5, match="contains"))
    messages = [[{"role": "assistant", "content": "I don't know about France."}],
                [{"role": "assistant", "content": "Italy"}], [{"role": "assistant", "content": "Rome"}]]
    assert reward([None] * 3, messages, kind=["forget", "boundary", "boundary"], target=["France", "Milan", "Milan"],
                  gold=["Paris", "Italy", "Italy"]) == [1.0, 1.0, 0.5]


def test_rule_both_stages_on_chat_rows(tmp_path, tiny_chat_model, chat_data, tok, spy, monkeypatch):
    from posttrain.trainers import rule

    completions, judged = [], []
    call, judge = rule.RULEReward.__call__, rule.judge

    def reward(self, *a, **kw):
        completions.extend(kw["completions"])
        return call(self, *a, **kw)

    def spy_judge(text, *a, **kw):
        judged.append(text)
        return judge(text, *a, **kw)

    monkeypatch.setattr(rule.RULEReward, "__call__", reward)
    monkeypatch.setattr(rule, "judge", spy_judge)
    seen = spy("rule")
    rs = _recipe(tmp_path, tiny_chat_model, chat_data, "rule_rs", max_steps=1)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "stages": [{"rs": rs}, {"rebo": {"method": "rule", "refusals": [REFUSAL], "stop": [], "match": "contains",
                                         "num_generations": 2, "per_device_train_batch_size": 2,
                                         "max_completion_length": 6, "max_steps": 1, "learning_rate": 1e-3,
                                         "logging_steps": 1}}],
        "model_name_or_path": str(tiny_chat_model), "dataset_path": str(chat_data), "dataset_train_split": "rule",
        "output_dir": str(tmp_path / "rule"), "save_strategy": "no", "report_to": "none", "seed": 0}))
    run = train(str(pipeline))
    assert (run.parent / "rule-rs" / "run.json").is_file()
    ds = load_from_disk(str(run / "train_data"))["train"]
    assert all(is_conversational(row) for row in ds)
    assert [list(p) for p in ds["prompt"]] == _prompts(QA[:3]) + _prompts(QA[3:])
    # GRPO hands the reward messages; the judge reads their content
    assert completions and all(isinstance(c, list) and [m["role"] for m in c] == ["assistant"] for c in completions)
    assert judged == [c[0]["content"] for c in completions]
    # the prompts it generated from: the chat template once, with the generation prompt
    prompts = {tok.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in ds["prompt"]}
    assert seen
    for inputs in seen:
        for ids, mask in zip(inputs["prompt_ids"], inputs["prompt_mask"]):
            assert tok.decode(ids[mask.bool()]) in prompts


# --- a tokenizer without a chat template ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def no_template_model(tiny_chat_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "model"
    shutil.copytree(tiny_chat_model, out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    assert AutoTokenizer.from_pretrained(str(out)).chat_template is None
    return out


@pytest.mark.parametrize("method, keys", [
    ("sft", {"dataset_train_split": "train"}),
    ("grad_diff", {"dataset_forget_split": "forget", "dataset_retain_split": "retain", "max_length": 64}),
    ("rule", {"dataset_train_split": "rule", "num_generations": 2, "per_device_train_batch_size": 2,
              "match": "contains", "stop": []}),
])
def test_conversational_rows_need_a_chat_template(tmp_path, no_template_model, chat_data, method, keys):
    with pytest.raises(ConfigError) as info:
        train(_recipe(tmp_path, no_template_model, chat_data, method, **keys))
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{method}: ") and "no chat template" in message
    assert not (tmp_path / method).exists()


def test_plain_rows_still_tokenize_as_before(tok):
    ids, n = tokenize(tok, "What is the capital of France?", " Paris")
    assert tok.decode(ids) == "What is the capital of France? Paris<|im_end|>"
    assert tok.decode(ids[n:]) == " Paris<|im_end|>"
    assert torch.tensor(ids).ne(tok.bos_token_id).all()
