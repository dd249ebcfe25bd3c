"""``posttrain probe``: what a model knows of a fine-tuning set, the first step of R-Tuning (arXiv 2311.09677).

Each question of the chosen splits goes to the model (through the engine, vLLM when available) twice: one greedy
answer, and k sampled answers (temperature T). Prompts go through the model's chat template when its tokenizer has
one (``apply_chat_template``, ``system_instruction``: lm-eval's names, as in ``posttrain eval``); answers then end at
the end-of-turn token, else at the first stop string (the testbed's " ."; as the reference code's cut after the
first '.', max_tokens 15). New columns:

* ``probe_answer``, ``probe_correct``: the greedy answer, and whether it contains the gold answer or one of its
  ``aliases`` (whole words; the gold is the ``answer`` column when present, else the completion up to its first
  stop string) — R-Tuning's split;
* ``probe_samples``, ``probe_entropy``: the k sampled answers and the entropy of their distribution (answers compared
  by their words: case and punctuation ignored) — R-Tuning-U's.

The labelled splits are saved as a dataset (reusable by every R-Tuning variant) whose split info records the probed
model (``posttrain.core.data.probed_model`` reads it), so that R-Tuning can refuse labels probed on another model.
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.core import modeling
from posttrain.core.answers import answer_text, cut_at_stop, words
from posttrain.core.data import load_data, split
from posttrain.core.errors import UsageError
from posttrain.core.phrases import ANSWER_STOP
from posttrain.core.progress import bar
from posttrain.core.runs import atomic_dir, check_output, write_json
from posttrain.evals import metrics
from posttrain.evals.chat import chat_format, render

COLUMNS = ("prompt", "completion")
PROBE_COLUMNS = ("probe_answer", "probe_correct", "probe_samples", "probe_entropy")


def gold_answers(ds, stop=ANSWER_STOP) -> list[list[str]]:
    """Per row, the answers that count: ``answer`` and its ``aliases`` when present, else the completion up to its
    first stop string."""
    if "answer" not in ds.column_names:
        return [[cut_at_stop(answer_text(c), stop)] for c in ds["completion"]]
    aliases = ds["aliases"] if "aliases" in ds.column_names else [[]] * len(ds)
    return [[str(a), *map(str, more or [])] for a, more in zip(ds["answer"], aliases)]


def label(engine, ds, k: int = 5, temperature: float = 0.7, max_tokens: int = 15, seed: int = 0,
          stop=ANSWER_STOP, prompts: list[str] | None = None):
    """``ds`` with the four probe columns (one greedy and one sampling engine call); ``prompts``: what the model
    reads for each row (default: its ``prompt``)."""
    prompts = list(ds["prompt"]) if prompts is None else prompts
    greedy = [a[0] for a in engine.generate(prompts, n=1, temperature=0.0, max_tokens=max_tokens, stop=stop)]
    samples = engine.generate(prompts, n=k, temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop)
    correct = [metrics.is_correct(a, g, "contains") for a, g in zip(greedy, gold_answers(ds, stop))]
    entropy = [metrics.answer_entropy([" ".join(words(s)) for s in row]) for row in samples]
    ds = ds.remove_columns([c for c in PROBE_COLUMNS if c in ds.column_names])
    for name, values in zip(PROBE_COLUMNS, (greedy, correct, samples, entropy)):
        ds = ds.add_column(name, values)
    return ds


def probe(model: str, data: str, out: str, splits: list[str] = ("train",), k: int = 5, temperature: float = 0.7,
          max_tokens: int = 15, engine: str = "auto", seed: int = 0, batch_size: int = 128, stop=None,
          engine_settings: dict | None = None, progress: bool = True, overwrite: bool = False,
          apply_chat_template: bool | None = None, system_instruction: str | None = None) -> Path:
    """Label ``splits`` of ``data`` by what ``model`` answers (see the module docstring); ``stop`` None: the
    end-of-turn token with a chat template, else the testbed's " .". The labelled rows keep their own prompts
    (a conversational row stays one), so R-Tuning trains on them as they were."""
    from datasets import DatasetDict

    from posttrain.evals.targets import engines_for, resolve

    check_output(out, overwrite)
    if k < 2:
        raise UsageError("--k must be at least 2 (the entropy of one sample is always 0)")
    if temperature <= 0:
        raise UsageError("--temperature must be positive (the samples measure the model's uncertainty)")
    target = resolve(model)
    if target.adapter is not None:
        raise UsageError(f"{model} is a LoRA run; R-Tuning probes the model it will fine-tune: give a model "
                         "directory")
    dd = load_data(data)
    chosen = {s: split(dd, s, COLUMNS) for s in splits}
    fmt = chat_format(modeling.load_tokenizer(target.model), apply_chat_template, system_instruction)
    stop = (() if fmt.apply else ANSWER_STOP) if stop is None else tuple(stop)
    for s, ds in chosen.items():
        if len(ds) == 0:
            raise UsageError(f"split {s!r} is empty")
    eng = engines_for(engine, [target], batch_size, seed, progress, engine_settings)[target.model]
    settings = {"model": str(Path(target.model).resolve()), "data": data, "k": k, "temperature": temperature,
                "max_tokens": max_tokens, "stop": list(stop), "seed": seed, "engine": eng.name, **fmt.settings()}
    labelled = DatasetDict()
    for s, ds in bar(chosen.items(), progress, desc="probe", unit="split"):
        rendered = render(DatasetDict({s: ds}), fmt)[s]
        ds = label(eng, ds, k, temperature, max_tokens, seed, stop, prompts=list(rendered["prompt"]))
        ds.info.description = json.dumps({"probe": settings})
        labelled[s] = ds
    with atomic_dir(out) as tmp:
        labelled.save_to_disk(str(tmp))
        write_json(tmp / "manifest.json", {
            "probe": settings,
            "splits": {s: {"n": len(ds), "correct": metrics.mean(list(ds["probe_correct"])),
                           "mean_entropy": metrics.mean(list(ds["probe_entropy"]))} for s, ds in labelled.items()}})
    return Path(out)
