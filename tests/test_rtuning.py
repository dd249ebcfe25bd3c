"""R-Tuning end to end on the testbed: probe labels (on a model with known answers and on a tiny trained model),
the refusal-aware data, training through the recipe and its rejections, and the AP confidences from the HF and
vLLM engines against a direct HF computation."""

import contextlib
import io
import json
import math
import os
import subprocess

import numpy as np
import pytest
import torch
from datasets import Dataset, load_from_disk
from scipy.stats import entropy

from conftest import posttrain, tiny_dataset
from posttrain import cli
from posttrain.core.answers import cut_at_stop
from posttrain.core.data import probed_model
from posttrain.core.phrases import SURE, SURE_QUESTION, UNSURE
from posttrain.evals import hallucination, metrics
from posttrain.evals.hf_engine import HFEngine
from posttrain.probe import PROBE_COLUMNS, label
from posttrain.trainers.rtuning import RTuningConfig, RTuningTrainer, build, certain, prepare

REFUSALS = ["I do not know the answer .", "Sorry , I do not know the answer ."]


# --- fixtures: R-Tuning testbed data, the session's tiny base model, its probe through the CLI ------------------------

@pytest.fixture(scope="module")
def rt_data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory, "rtuning")


@pytest.fixture(scope="module")
def rt_base(tiny_run):
    """The session's tiny base model: `gen rtuning` keeps `gen kg`'s corpus (tested below), so it is the one to probe."""
    return tiny_run


@pytest.fixture(scope="module")
def probed(rt_base, rt_data):
    """`posttrain probe` (the CLI, in this process), the model given relative to the working directory."""
    out = rt_base.parent / "probed"
    args = ["probe", rt_base.name, "--data", str(rt_data), "--out", str(out), "--engine", "hf", "--max_tokens", "8"]
    cwd, stdout = os.getcwd(), io.StringIO()
    try:
        os.chdir(rt_base.parent)
        with contextlib.redirect_stdout(stdout):
            assert cli.main(args) == 0
    finally:
        os.chdir(cwd)
    return out, subprocess.CompletedProcess(["posttrain", *args], 0, stdout.getvalue(), "")


@pytest.fixture(scope="module")
def other_model(rt_base):
    """Another model with the base model's tokenizer (an untrained one, seed 1)."""
    from posttrain.core import modeling

    out = rt_base.parent / "other"
    tok = modeling.load_tokenizer(str(rt_base))
    modeling.scratch_llama(tok, 128, 1, 2, 256, seed=1).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _cli(capsys, *args):
    """``posttrain ARGS`` in-process: exit code and the error lines of stderr."""
    rc = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, [line for line in err.splitlines() if line.startswith("posttrain:")]


# --- 0. the generator --------------------------------------------------------------------------------------------

def test_rtuning_data_adds_disjoint_train_test_and_ood_questions_to_the_unchanged_kg(rt_data, tiny_kg):
    rt, kg = load_from_disk(str(rt_data)), load_from_disk(str(tiny_kg))
    for name in kg:  # the knowledge graph of the same config and seed, untouched
        assert rt[name].to_dict() == kg[name].to_dict(), name
    ids = {s: set(rt[s]["fact_id"]) for s in ("train", "test", "ood")}
    assert not ids["train"] & ids["test"] and not ids["ood"] & (ids["train"] | ids["test"])
    assert ids["train"] | ids["test"] | ids["ood"] == set(kg["seen"]["fact_id"]) | set(kg["unseen"]["fact_id"])
    ood = {"birth_year", "headquartered_in"}
    assert set(rt["ood"]["relation"]) == ood and not ood & {*rt["train"]["relation"], *rt["test"]["relation"]}
    assert set(rt["train"]["split"]) == set(rt["test"]["split"]) == {"seen", "unseen"}
    assert abs(len(rt["train"]) - len(rt["test"])) <= 1  # test_frac 0.5


@pytest.mark.parametrize("bad", [["--ood_relations", "born_in,nope"], ["--test_frac", "1.0"]])
def test_rtuning_generator_rejects_bad_settings(capsys, tmp_path, bad):
    out = tmp_path / "data"
    rc, lines = _cli(capsys, "gen", "rtuning", "--out", out, *bad)
    assert rc == 2 and len(lines) == 1 and bad[0].lstrip("-") in lines[0] and not out.exists()


# --- 1. probe labels ----------------------------------------------------------------------------------------------

class FakeEngine:
    """Canned answers: ``greedy[prompt]`` at temperature 0, ``samples[prompt]`` (n of them) when sampling."""

    name = "fake"

    def __init__(self, greedy, samples):
        self.greedy, self.samples, self.calls = greedy, samples, []

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=32, seed=0, adapter=None, stop=()):
        self.calls.append({"n": n, "temperature": temperature, "max_tokens": max_tokens, "seed": seed,
                           "stop": stop})
        if temperature == 0:
            return [[cut_at_stop(self.greedy[p], stop)] * n for p in prompts]
        assert all(len(self.samples[p]) == n for p in prompts)
        return [[cut_at_stop(s, stop) for s in self.samples[p]] for p in prompts]

    def score(self, prompts, continuations, adapter=None):
        raise AssertionError("probing needs no scores")


# (gold answer, completion, greedy output, k=4 samples, counts of the distinct normalised samples, correct)
KNOWN = [
    ("C1", " C1 .", "C15 .", ["C1 .", "C1 .", "C1 .", "C1 ."], [4], False),  # C1 is not in C15
    ("C1", " P2 was born in C1 .", "P2 was born in C1 . Are you sure", ["C1 .", "c1  .", "C2 . I am sure .", "C3 ."],
     [2, 1, 1], True),
    ("K2", " K2 .", "K3 .", ["K1 .", "K2 .", "K3 .", "K4 ."], [1, 1, 1, 1], False),
    ("1941", " 1941 .", "1941 . 1942 .", ["1941 .", "1941 .", "1942 .", "1942 ."], [2, 2], True),
    ("C1", " C1 .", "I do not know . C1 .", ["I do not know .", "I do not know .", "I do not know .", "C1 ."],
     [3, 1], False),  # the gold comes after the answer's first '.'
    ("N0", " N0 .", "n0 .", ["N0 .", "n0 .", "N0 . extra", "N0  ."], [4], True),  # case and spacing ignored
    ("C2", " P3 was born in C2 .", "C2 .", ["C2 .", "C4 .", "C2 .", "C2 ."], [3, 1], True),
]


def _known():
    prompts = [f"Question: q{i} ? Answer:" for i in range(len(KNOWN))]
    ds = Dataset.from_dict({"prompt": prompts, "completion": [r[1] for r in KNOWN], "answer": [r[0] for r in KNOWN]})
    eng = FakeEngine({p: r[2] for p, r in zip(prompts, KNOWN)}, {p: r[3] for p, r in zip(prompts, KNOWN)})
    return ds, eng


def test_probe_labels_a_model_with_known_answers():
    ds, eng = _known()
    out = label(eng, ds, k=4, temperature=0.9, max_tokens=10, seed=7)
    assert out["probe_correct"] == [r[5] for r in KNOWN]
    assert out["probe_answer"] == ["C15 .", "P2 was born in C1 .", "K3 .", "1941 .", "I do not know .", "n0 .", "C2 ."]
    assert out["probe_samples"][1] == ["C1 .", "c1  .", "C2 .", "C3 ."]  # each cut after its first '.'
    for got, (*_, counts, _) in zip(out["probe_entropy"], KNOWN):
        assert got == pytest.approx(entropy(counts), abs=1e-12)
    assert out["probe_entropy"][1] == pytest.approx(1.5 * math.log(2))
    assert out["probe_entropy"][2] == pytest.approx(math.log(4))
    # one greedy call and one sampling call with the probe's settings
    assert [(c["n"], c["temperature"], c["max_tokens"]) for c in eng.calls] == [(1, 0.0, 10), (4, 0.9, 10)]
    assert eng.calls[1]["seed"] == 7
    # the other columns are untouched, and probing again (another model) replaces the labels
    assert out.select_columns(["prompt", "completion", "answer"]).to_dict() == ds.to_dict()
    again = label(FakeEngine({p: "C1 ." for p in ds["prompt"]}, eng.samples), out, k=4)
    assert again["probe_correct"] == [True, True, False, False, True, False, False]
    assert again.column_names == out.column_names


def test_probe_gold_is_the_completion_answer_span_without_an_answer_column():
    ds, eng = _known()
    out = label(eng, ds.remove_columns("answer"), k=4)
    # the whole span " P3 was born in C2 ." is the gold now: "C2 ." does not contain it
    assert out["probe_correct"] == [False, True, False, True, False, True, False]


def test_probe_cli_writes_a_labelled_dataset_of_the_resolved_model(probed, rt_base, rt_data):
    out, proc = probed
    assert proc.stdout.strip().endswith(str(out.name))
    dd = load_from_disk(str(out))
    assert list(dd) == ["train"]
    ds, source = dd["train"], load_from_disk(str(rt_data))["train"]
    assert len(ds) == len(source) and ds["prompt"] == source["prompt"] and ds["answer"] == source["answer"]
    assert set(PROBE_COLUMNS) <= set(ds.column_names)
    assert probed_model(ds) == str(rt_base.resolve())
    assert all(len(s) == 5 for s in ds["probe_samples"])
    assert all(0.0 <= h <= math.log(5) + 1e-9 for h in ds["probe_entropy"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["probe"]["model"] == str(rt_base.resolve()) and manifest["probe"]["engine"] == "hf"
    assert manifest["splits"]["train"]["n"] == len(ds)
    assert manifest["splits"]["train"]["correct"] == pytest.approx(np.mean(ds["probe_correct"]))
    # the labels are the model's: its greedy answers, judged against the gold
    eng = HFEngine(str(rt_base))
    greedy = [a[0] for a in eng.generate(list(ds["prompt"]), max_tokens=8, stop=(" .",))]
    assert ds["probe_answer"] == greedy
    assert ds["probe_correct"] == [metrics.contains(a, g) for a, g in zip(greedy, ds["answer"])]
    assert 0 < sum(ds["probe_correct"]) < len(ds)  # the tiny model knows some facts, not all


@pytest.mark.parametrize("case", ["k1", "missing_split", "zero_temperature"])
def test_probe_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, rt_base, rt_data, tmp_path, case):
    out = tmp_path / "probe"
    extra = {"k1": ["--k", "1"], "missing_split": ["--splits", "train,nope"],
             "zero_temperature": ["--temperature", "0"]}[case]
    rc, lines = _cli(capsys, "probe", rt_base, "--data", rt_data, "--out", out, "--engine", "hf", *extra)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("posttrain: error:")
    assert {"k1": "--k", "missing_split": "'nope'", "zero_temperature": "--temperature"}[case] in lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())


# --- 2. the refusal-aware data ------------------------------------------------------------------------------------

def _config(tmp_path, **kw):
    return RTuningConfig(output_dir=str(tmp_path), report_to="none", sure_question=SURE_QUESTION, sure=SURE,
                         unsure=UNSURE, refusals=REFUSALS, **kw)


def _probed(correct, entropies=None):
    n = len(correct)
    return Dataset.from_dict({"prompt": [f"Question: Where was P{i} born ? Answer:" for i in range(n)],
                              "completion": [f" C{i} ." for i in range(n)], "probe_correct": correct,
                              "probe_entropy": entropies if entropies is not None else [0.0] * n})


def test_suffix_variant_keeps_the_gold_answer_and_says_sure_or_unsure(tmp_path):
    ds = _probed([True, False, True])
    ds = ds.map(lambda r, i: {"completion": " P1 was born in C1 . " if i == 1 else r["completion"]},
                with_indices=True)
    out = build(ds, _config(tmp_path))
    assert out["prompt"] == ds["prompt"] and out["certain"] == [True, False, True]
    q = "Are you sure you accurately answered the question based on your internal knowledge ?"
    assert out["completion"] == [f" C0 . {q} I am sure .", f" P1 was born in C1 . {q} I am unsure .",
                                 f" C2 . {q} I am sure ."]


def test_entropy_split_labels_the_lowest_entropy_half_certain(tmp_path):
    entropies = [0.5, 0.0, 1.2, 0.5, 0.0, 0.9, 0.5]
    ds = _probed([False] * 7, entropies)  # correctness plays no part
    want = [True, True, False, False, True, False, False]  # floor(7/2) = 3: both zeros, then the first 0.5
    assert certain(ds, "entropy") == want
    out = build(ds, _config(tmp_path, split="entropy"))
    assert out["certain"] == want
    assert [c.endswith("I am sure .") for c in out["completion"]] == want
    assert certain(_probed([True] * 4, [1.0] * 4), "entropy") == [True, True, False, False]  # ties: data order
    assert certain(ds, "correctness") == [False] * 7


def test_refusal_variant_replaces_only_uncertain_answers_with_a_refusal(tmp_path):
    correct = [i % 3 == 0 for i in range(12)]
    ds = _probed(correct)
    out = build(ds, _config(tmp_path, variant="refusal", seed=3))
    assert out["certain"] == correct
    for c, gold, ok in zip(out["completion"], ds["completion"], correct):
        assert c == gold if ok else c in {" " + r for r in REFUSALS}
    assert {c for c, ok in zip(out["completion"], correct) if not ok} == {" " + r for r in REFUSALS}
    assert build(ds, _config(tmp_path, variant="refusal", seed=3))["completion"] == out["completion"]


def test_refusal_draw_is_seeded_by_data_seed_else_seed(tmp_path):
    """As the unlearning methods' retain draw: ``data_seed`` when given (the training seed then plays no part),
    else ``seed``."""
    ds = _probed([False] * 40)
    refusals = lambda **kw: build(ds, _config(tmp_path, variant="refusal", **kw))["completion"]  # noqa: E731
    by_seed = {s: refusals(seed=s) for s in (3, 4)}
    assert by_seed[3] != by_seed[4]
    assert refusals(seed=3, data_seed=4) == by_seed[4] == refusals(seed=5, data_seed=4)
    assert refusals(seed=4, data_seed=3) == by_seed[3]


@pytest.mark.parametrize("bad", [{"split": "bogus"}, {"variant": "bogus"}, {"variant": "refusal", "refusals": [" "]},
                                 {"sure": "I am sure .", "unsure": " I am sure . "}])
def test_invalid_settings_are_rejected(tmp_path, bad):
    kw = {"output_dir": str(tmp_path), "report_to": "none", **bad}
    with pytest.raises(ValueError):
        RTuningConfig(**kw)


def test_invalid_variant_in_the_recipe_exits_2(capsys, rt_base, tmp_path):
    out = tmp_path / "run"
    rc, lines = _cli(capsys, "train", "rtuning/testbed.yaml", "--model_name_or_path", rt_base, "--dataset_path",
                     tmp_path, "--output_dir", out, "--variant", "prefix")
    assert rc == 2 and len(lines) == 1 and "variant" in lines[0] and not out.exists()


# --- 3. training ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_rtuning_recipe_trains_a_few_steps(probed, rt_base, tmp_path):
    out = tmp_path / "run"
    posttrain("train", "rtuning/testbed.yaml", "--model_name_or_path", rt_base, "--dataset_path", probed[0],
              "--output_dir", out, "--max_steps", "3", check=True)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["method"] == "rtuning" and info["config"]["variant"] == "suffix"
    # the rewritten set and its certain fraction are in the run
    known = load_from_disk(str(probed[0]))["train"]["probe_correct"]
    saved = load_from_disk(str(out / "train_data"))["train"]
    assert saved["certain"] == known and len(saved) == info["train_data"]["rows"]
    assert all(c.endswith(" I am sure ." if k else " I am unsure .") for c, k in zip(saved["completion"], known))
    assert info["train_data"]["certain_fraction"] == pytest.approx(np.mean(known))
    assert info["train_data"]["certain"] == sum(known) and info["train_data"]["splits"] == {"train": "train"}
    assert info["train_metrics"]["train_loss"] > 0 and info["log_history"][-1]["step"] == 3
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("case", ["probed_on_another_model", "max_length_too_small"])
def test_rtuning_rejects_with_one_line_and_no_run_dir(capsys, probed, rt_base, other_model, tmp_path, case):
    out = tmp_path / "run"
    extra = {"probed_on_another_model": ["--model_name_or_path", other_model],
             "max_length_too_small": ["--model_name_or_path", rt_base, "--max_length", "20"]}[case]
    rc, lines = _cli(capsys, "train", "rtuning/testbed.yaml", "--dataset_path", probed[0], "--output_dir", out,
                     *extra)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("posttrain: error: rtuning:")
    assert {"probed_on_another_model": "probed on", "max_length_too_small": "max_length 20"}[case] in lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_labels_probed_on_an_embedded_model_by_path_fit_it_named(monkeypatch, tmp_path):
    """`posttrain probe smollm2-135m-instruct` records the model's directory; training it by name is the same model."""
    from posttrain.core import embedded

    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path))
    name = "smollm2-135m-instruct"
    model = embedded.model_dir(name)
    model.mkdir(parents=True)
    (model / embedded.INFO).write_text("{}")  # a fetched model: nothing is downloaded
    ds = _probed([True, False])
    ds.info.description = json.dumps({"probe": {"model": str(model)}})
    assert prepare({"train": ds}, _config(tmp_path), name).stats["certain"] == 1
    with pytest.raises(ValueError, match="probed on"):
        prepare({"train": ds}, _config(tmp_path), str(tmp_path))


def test_prepare_checks_the_columns_and_the_trainer_the_rewrite_and_max_length(probed, rt_base, tmp_path):
    from posttrain.core import modeling

    probed_ds = load_from_disk(str(probed[0]))["train"]
    model, tok = modeling.load_model(str(rt_base)), modeling.load_tokenizer(str(rt_base))

    def prepared(data, **kw):
        return prepare({"train": data}, _config(tmp_path, **kw), str(rt_base)).train

    def trainer(data, **kw):
        return RTuningTrainer(model, _config(tmp_path, **kw), train_dataset=data, processing_class=tok)

    with pytest.raises(ValueError, match="probe_correct"):
        prepared(probed_ds.remove_columns("probe_correct"))
    with pytest.raises(ValueError, match="probe_entropy"):
        prepared(probed_ds.remove_columns("probe_entropy"), split="entropy")
    with pytest.raises(ValueError, match="not R-Tuning's rewrite"):
        trainer(probed_ds, max_length=None)  # the data step skipped: it would be plain SFT
    ds = prepared(probed_ds)
    full = trainer(ds, max_length=None)
    lengths = [len(ids) for ids in full.train_dataset["input_ids"]]
    longest = max(lengths)
    # TRL's own tokenisation: an untruncated example ends with the certainty answer and </s>
    assert all(ids[-1] == tok.eos_token_id for ids in full.train_dataset["input_ids"])
    fits = trainer(ds, max_length=longest)
    assert [len(ids) for ids in fits.train_dataset["input_ids"]] == lengths
    with pytest.raises(ValueError, match=f"max_length {longest - 1}"):
        trainer(ds, max_length=longest - 1)


@pytest.mark.slow
def test_suffix_training_makes_p_sure_track_what_the_model_knew(probed, rt_base, tmp_path):
    """After R-Tuning (suffix) on the probed questions, p(sure) on them separates the items the base model
    answered right from the ones it did not; the base model itself does not separate them."""
    from posttrain.train import train

    ds = load_from_disk(str(probed[0]))["train"]
    prompts, gold, known = list(ds["prompt"]), list(ds["completion"]), np.array(ds["probe_correct"])
    out = train("rtuning/testbed.yaml", ["--model_name_or_path", str(rt_base), "--dataset_path", str(probed[0]),
                                         "--output_dir", str(tmp_path / "run"), "--max_steps", "150",
                                         "--learning_rate", "3e-3", "--logging_steps", "1000"])

    def sure(model):
        return np.array(hallucination.confidences(HFEngine(str(model)), prompts, gold)["sure"])

    before, after = sure(rt_base), sure(out)
    assert abs(before[known].mean() - before[~known].mean()) < 0.1
    assert after[known].mean() - after[~known].mean() > 0.5
    assert metrics.average_precision(known, after) > 0.9


# --- 4. AP confidences: engines against a direct HF computation ------------------------------------------------------

def _direct_confidences(model_dir, prompts, answers):
    """From ``transformers`` alone: greedy generation's per-step max probabilities over the answer span (geometric
    mean, and the smallest), and the next-token softmax after the certainty probe for the first token of " sure" / " unsure"."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    answer, lowest, sure = [], [], []
    with torch.inference_mode():
        for p, a in zip(prompts, answers):
            span = a.strip()
            enc = tok(p, return_tensors="pt")
            n = len(tok(f"{p} {span}")["input_ids"]) - enc["input_ids"].shape[1]
            gen = model.generate(**enc, max_new_tokens=n, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
            assert tok.decode(gen.sequences[0, enc["input_ids"].shape[1]:]).strip() == span
            max_probs = torch.stack([torch.softmax(s[0].double(), -1).max() for s in gen.logits])
            answer.append(max_probs.log().mean().exp().item())
            lowest.append(max_probs.min().item())
            text = f"{p} {span} {SURE_QUESTION} I am"
            ids = tok(text)["input_ids"]
            probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
            p_sure, p_unsure = (probs[tok(f"{text} {w}")["input_ids"][len(ids)]].item() for w in ("sure", "unsure"))
            sure.append(p_sure / (p_sure + p_unsure))
    return {"answer": answer, "answer_min": lowest, "sure": sure, "mean": [(x + y) / 2 for x, y in zip(answer, sure)]}


@pytest.mark.slow
def test_confidences_and_ap_from_hf_and_vllm_equal_a_direct_hf_computation(probed, rt_base, tmp_path_factory):
    """Runs last in this file: vLLM in-process seeds the global RNG and binds threads."""
    from posttrain.evals.vllm_engine import VLLMEngine

    ds = load_from_disk(str(probed[0]))["train"]
    known = [i for i, c in enumerate(ds["probe_correct"]) if c]
    unknown = [i for i, c in enumerate(ds["probe_correct"]) if not c]
    ds = ds.select(known[:5] + unknown[:7])
    prompts = list(ds["prompt"])
    hf = HFEngine(str(rt_base), batch_size=5)  # several padded batches
    answers = [a[0] for a in hf.generate(prompts, max_tokens=8, stop=(" .",))]
    correct = [metrics.contains(a, g) for a, g in zip(answers, ds["answer"])]
    assert 0 < sum(correct) < len(correct) and all(a.strip() for a in answers)
    want = _direct_confidences(rt_base, prompts, answers)
    assert len(set(np.round(want["sure"], 3))) > 1  # the probe distinguishes questions
    vllm = VLLMEngine(str(rt_base), cache_dir=str(tmp_path_factory.mktemp("vllm_cache")))
    assert vllm.generate(prompts, max_tokens=8, stop=(" .",)) == [[a] for a in answers]
    for engine in (hf, vllm):
        got = hallucination.confidences(engine, prompts, answers)
        for k in hallucination.CONFIDENCES:
            assert got[k] == pytest.approx(want[k], abs=1e-4), (engine.name, k)
            assert metrics.average_precision(correct, got[k]) == pytest.approx(
                metrics.average_precision(correct, want[k]), abs=1e-12), (engine.name, k)
