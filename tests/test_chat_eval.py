"""Chat models in evaluation: the chat template (lm-eval's --apply_chat_template / --system_instruction), answers
ending at the end-of-turn token, the match rule, empty answers counted apart, and the run's settings reaching the
suites."""

import json

import pytest
from conftest import cli
from datasets import Dataset, DatasetDict

from posttrain.core.modeling import load_tokenizer
from posttrain.core.phrases import SURE_QUESTION
from posttrain.evals import chat, forgetting, hallucination, metrics, qa

QUESTIONS = [("What is the capital of France?", "Paris", ["Paris"]),
             ("What is the capital of the United States?", "Washington, D.C.", ["Washington, D.C.", "Washington"]),
             ("Which country is Lyon in?", "France", ["France"])]


def conversational() -> Dataset:
    return Dataset.from_list([{"prompt": [{"role": "user", "content": q}],
                               "completion": [{"role": "assistant", "content": a}], "answer": a, "aliases": al}
                              for q, a, al in QUESTIONS])


def test_render_applies_the_template_and_answers_continue_the_turn(tiny_chat_model):
    tok = load_tokenizer(str(tiny_chat_model))
    fmt = chat.chat_format(tok)
    assert fmt.apply  # a tokenizer with a template gets it by default
    row = chat.render(DatasetDict({"test": conversational()}), fmt)["test"][0]
    assert row["prompt"] == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert row["completion"] == "Paris"  # the turn starts on a new line: no leading space
    system = chat.render(DatasetDict({"test": conversational()}), chat.chat_format(tok, None, "Answer briefly."))
    assert system["test"][0]["prompt"].startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user")
    plain = chat.render(DatasetDict({"test": conversational()}), chat.chat_format(tok, False))["test"][0]
    assert (plain["prompt"], plain["completion"]) == ("What is the capital of France?", " Paris")
    # a plain-text row under a template becomes the user's turn
    text = Dataset.from_list([{"prompt": "Question: Where is Lyon? Answer:", "completion": " France"}])
    row = chat.render(DatasetDict({"t": text}), fmt)["t"][0]
    assert "<|im_start|>user\nQuestion: Where is Lyon? Answer:<|im_end|>" in row["prompt"]
    assert row["completion"] == "France"


def test_eval_of_a_chat_model_records_template_stop_and_match(capsys, tiny_chat_model, tmp_path):
    conversational().to_json(tmp_path / "capitals.jsonl")
    out = tmp_path / "eval"
    proc = cli(capsys, "eval", tiny_chat_model, "--data", tmp_path / "capitals.jsonl", "--suite", "qa,hallucination",
               "--max_tokens", "4", "--bootstrap_iters", "0", "--output", out)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    for suite in ("qa", "hallucination"):
        c = res["configs"][suite]
        assert c["apply_chat_template"] is True and c["system_instruction"] is None
        assert c["generation"]["stop"] == []  # the end-of-turn token ends answers, not the testbed's " ."
        assert c["options"]["match"] == "contains"
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].startswith("<|im_start|>user\n") and sample["prompt"].endswith("assistant\n")
    off = tmp_path / "off"
    proc = cli(capsys, "eval", tiny_chat_model, "--data", tmp_path / "capitals.jsonl", "--apply_chat_template",
               "false", "--match", "exact", "--max_tokens", "4", "--output", off)
    assert proc.returncode == 0, proc.stderr
    c = json.loads((off / "results.json").read_text())["configs"]["qa"]
    assert c["apply_chat_template"] is False and c["generation"]["stop"] == [" ."]
    assert c["options"]["match"] == "exact"


def test_chat_settings_bad_input_is_one_line(capsys, tiny_run, tiny_kg, tiny_chat_model, tmp_path):
    proc = cli(capsys, "eval", tiny_run, "--data", tiny_kg, "--apply_chat_template", "--output", tmp_path / "e")
    assert proc.returncode == 2 and "has no chat template" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "e").exists()
    proc = cli(capsys, "eval", tiny_run, "--data", tiny_kg, "--match", "fuzzy", "--output", tmp_path / "e")
    assert proc.returncode == 2 and "fuzzy" in proc.stderr
    proc = cli(capsys, "eval", tiny_run, "--data", tiny_kg, "--suite", "reasoning", "--match", "contains",
               "--output", tmp_path / "e")
    assert proc.returncode == 2 and "--match is not an option of suite(s) reasoning" in proc.stderr


class Canned:
    """An engine that answers each prompt from a table and scores every token at log-prob -0.1."""

    name = "canned"

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=32, seed=0, stop=()):
        return [[self.answers[p]] * n for p in prompts]

    def score(self, prompts, continuations):
        return [[-0.1] * max(1, len(c.split())) for c in continuations]

    def token_stats(self, prompts, continuations):
        return [{"logprobs": lp, "argmax": [True] * len(lp), "mean": [-1.0] * len(lp), "std": [1.0] * len(lp)}
                for lp in self.score(prompts, continuations)]


def rendered(tiny_chat_model) -> DatasetDict:
    fmt = chat.chat_format(load_tokenizer(str(tiny_chat_model)))
    return chat.render(DatasetDict({"test": conversational()}), fmt)


def test_contains_with_aliases_and_empty_answers_apart(tiny_chat_model):
    dd = rendered(tiny_chat_model)
    prompts = dd["test"]["prompt"]
    engine = Canned(dict(zip(prompts, ["The capital of France is Paris.", "It is Washington.", ""])))
    res, samples = qa.evaluate(engine, dd, ["test"], stop=(), match="contains")
    assert res["test"]["exact_match"] == pytest.approx(2 / 3) and res["test"]["empty_rate"] == pytest.approx(1 / 3)
    exact, _ = qa.evaluate(engine, dd, ["test"], stop=(), match="exact")
    assert exact["test"]["exact_match"] == 0.0  # a sentence is never the bare gold
    h, _ = hallucination.evaluate(engine, dd, ["test"], stop=(), match="contains", bootstrap_iters=0)
    # the empty answer is neither right nor a hallucination
    assert h["test"]["hallucination_rate"] == 0.0 and h["test"]["empty_rate"] == pytest.approx(1 / 3)
    assert h["test"]["answer_rate"] == pytest.approx(2 / 3)


def test_free_form_refusals_and_multi_word_names(tiny_chat_model):
    rows = Dataset.from_list([
        {"prompt": "Capital of Burkina Faso?", "completion": " Ouagadougou", "entity": "Burkina Faso",
         "paraphrased_answer": " Ouagadougou", "perturbed_answers": [" Bamako"]},
        {"prompt": "Capital of Mali?", "completion": " Bamako", "entity": "Mali",
         "paraphrased_answer": " Bamako", "perturbed_answers": [" Niamey"]}])
    dd = DatasetDict({"forget": rows})
    engine = Canned({"Capital of Burkina Faso?": "I'm not certain about Burkina Faso.",
                     "Capital of Mali?": "Sorry, I don't know."})
    res, _ = forgetting.evaluate(engine, dd, ["forget"], stop=(), refusals=("I'm not certain about {s}.", *metrics.DEFAULT_REFUSALS),
                                 match="contains", bootstrap_iters=0)
    assert res["forget"]["refusal_rate"] == 1.0  # a {s} template and a free-form hedge
    assert res["forget"]["named_refusal_rate"] == 0.5  # "Burkina Faso" is named; Mali is not


def test_the_runs_refusals_and_certainty_words_reach_evaluation(tmp_path):
    from posttrain.evals.targets import Target
    from posttrain.evaluate import trained_settings

    from posttrain.trainers import get_method

    def run_of(method, **settings):
        """A run directory with the run.json's eval settings a run of ``method`` with ``settings`` writes."""
        run = tmp_path / f"{method}-{len(list(tmp_path.iterdir()))}"
        run.mkdir()
        config = get_method(method).Config(output_dir=str(run / "out"), report_to="none", **settings)
        (run / "run.json").write_text(json.dumps({"eval_settings": config.eval_settings()}))
        return Target(str(run))

    for method, extra in (("idk_sft", {}), ("rule", {}), ("rtuning", {"variant": "refusal"})):
        assert "No idea about {s}." in trained_settings(run_of(method, refusals=["No idea about {s}."], **extra))[
            "refusals"]
    for method in ("sft", "npo", "rule_rs", "muscle"):  # methods that learn no refusals of their own
        assert trained_settings(run_of(method)) == {"certainty_suffix": False}, method
    got = trained_settings(run_of("rtuning", variant="suffix", sure="Yes.", unsure="No.", refusals=["x"]))
    assert got["certainty_suffix"] and (got["sure"], got["unsure"]) == ("Yes.", "No.") and "refusals" not in got
    assert hallucination.certainty_words("I am sure.", "I am unsure.") == ("I am", "sure", "unsure")
    assert hallucination.certainty_words("Yes.", "No.") == ("", "Yes", "No")


def test_a_suffix_tuned_answer_is_judged_and_scored_without_the_certainty_question(tiny_chat_model):
    """A chat model tuned with the suffix goes on, in its turn, to ask and answer the certainty question: the answer
    is what comes before it, and p(sure) is asked after that answer once, not after the question twice."""
    dd = rendered(tiny_chat_model)
    prompts = dd["test"]["prompt"]
    tail = f" {SURE_QUESTION} I am unsure."
    engine = Canned(dict(zip(prompts, ["Paris" + tail, "Washington" + tail[:30], "Lyon"])))
    scored = []
    engine.score = lambda ps, cs: scored.extend(zip(ps, cs)) or [[-0.1]] * len(ps)
    res, samples = hallucination.evaluate(engine, dd, ["test"], stop=(), match="contains", certainty_suffix=True,
                                          bootstrap_iters=0)
    assert [s["response"] for s in samples] == ["Paris", "Washington", "Lyon"]
    assert [s["exact_match"] for s in samples] == [True, True, False]
    assert all(c.count(SURE_QUESTION) <= 1 and p.count(SURE_QUESTION) <= 1 for p, c in scored)
    assert {p for p, _ in scored[3:]} == {hallucination.after(p, a) + f" {SURE_QUESTION} I am"
                                          for p, a in zip(prompts, ["Paris", "Washington", "Lyon"])}
    without = hallucination.evaluate(engine, dd, ["test"], stop=(), match="contains", bootstrap_iters=0)[1]
    assert without[0]["response"] == "Paris" + tail  # only a suffix-tuned model's answer is cut
