"""``posttrain eval``: one engine for the whole run, each suite over the chosen splits, reports on disk.

A target is a model directory, or a LoRA run directory (adapter only; its base model is read from the adapter's
config), or a model plus ``--adapter``. Bad input (a missing or incompatible model, adapter or reference, an empty
split or prompt, a missing column, an option that would be ignored) stops the run before any engine starts.
``--relearn N`` adds a relearning attack (``posttrain.relearn``): the model fine-tuned for N steps on some forget
facts, the other forget questions asked before and after.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from posttrain import relearn as relearning
from posttrain.core import modeling
from posttrain.core.data import load_eval_data, split
from posttrain.core.errors import UsageError
from posttrain.core.progress import bar
from posttrain.core.registry import Registry
from posttrain.core.runs import atomic_dir, check_output
from posttrain.evals import flips, forgetting, metrics, report
from posttrain.evals.chat import chat_format, render
from posttrain.evals.common import check_match, first_rows
from posttrain.evals.engines import Served
from posttrain.evals.targets import Target, check_reference, engines_for, resolve

SUITES = Registry("suite", {
    "qa": "posttrain.evals.qa", "hallucination": "posttrain.evals.hallucination",
    "forgetting": "posttrain.evals.forgetting", "flips": "posttrain.evals.flips",
    "reasoning": "posttrain.evals.reasoning",
}, contract=("evaluate", "VERSION", "COLUMNS", "GENERATION", "HIGHER_IS_BETTER"))
DEFAULT_SPLITS = {"reasoning": ("test",)}
QA_SPLITS = ("seen", "unseen", "forget", "boundary", "retain")


def trained_settings(target: Target) -> dict:
    """What the evaluated run was trained with, from its ``run.json`` (the adapter's run when there is one): the
    ``eval_settings`` its method's config wrote (``trainers.base.DeviceDefaults.eval_settings``: the refusals it
    learned, added to the default phrases; R-Tuning's certainty question, sure / unsure answers and whether its
    model asks it itself; DCO's verifier), and ``certainty_suffix`` false otherwise. Empty for a model without a
    run.json."""
    path = Path(target.adapter or target.model) / "run.json"
    if not path.is_file():
        return {}
    out = {"certainty_suffix": False, **json.loads(path.read_text()).get("eval_settings", {})}
    if out.get("refusals"):
        out["refusals"] = tuple(dict.fromkeys([*metrics.DEFAULT_REFUSALS, *out["refusals"]]))
    return out


FLAGS = {"refusals": "--refusal", "sure_question": "--sure_question", "certainty_suffix": "--certainty_suffix",
         "sure": "--sure", "unsure": "--unsure", "match": "--match", "verifier": "--verifier",
         "retain_logs": "--retain_logs", "forget_split": "--forget_split", "holdout_split": "--holdout_split",
         "n": "--n", "temperature": "--temperature", "max_tokens": "--max_tokens",
         "stop": "--stop", "reference": "--reference"}
NOT_OPTIONS = ("engine", "dd", "splits", "limit")


def suite_options(suite: str) -> dict[str, inspect.Parameter]:
    return {k: p for k, p in inspect.signature(SUITES.load(suite).evaluate).parameters.items() if k not in NOT_OPTIONS}


def check_options(suites: list[str], given: dict) -> None:
    """Every option given must be one some chosen suite takes, with a valid value."""
    for key in given:
        if not any(key in suite_options(s) for s in suites):
            users = [s for s in SUITES if key in suite_options(s)] or ["none"]
            raise UsageError(f"{FLAGS.get(key, key)} is not an option of suite(s) {', '.join(suites)} (suites that "
                             f"take it: {', '.join(users)})")
    for key, low in (("n", 1), ("max_tokens", 1), ("temperature", 0)):
        if key in given and given[key] < low:
            raise UsageError(f"{FLAGS[key]} must be at least {low}")


def suite_config(suite: str, kwargs: dict, splits: list[str], chat: dict) -> dict:
    """The suite's version, splits, how prompts were rendered (``chat``) and every setting it ran with (its
    defaults, then what was passed)."""
    module, params = SUITES.load(suite), suite_options(suite)
    resolved = {k: kwargs.get(k, p.default) for k, p in params.items() if k != "reference"}
    generation = {**module.GENERATION, **{k: resolved.pop(k) for k in ("max_tokens", "stop", "n", "temperature")
                                          if k in resolved}}
    return {"version": module.VERSION, "splits": splits, "generation": generation, **chat, "options": resolved}


def higher_is_better(suite: str, result: dict) -> dict[str, bool | None]:
    """Per scalar metric of a split's result: True / False, or None where it depends on the split."""
    table = SUITES.load(suite).HIGHER_IS_BETTER
    names = {k: "pass@k" if k.startswith("pass@") else k for k in result if not k.endswith("_stderr")}
    return {k: table[name] for k, name in names.items() if name in table}


def choose_splits(suite: str, dd, splits: list[str] | None, also: tuple[str, ...] = ()) -> list[str]:
    """The splits given, else the suite's usual ones present and those of ``also`` (the forget split the user
    named), else every split with the suite's columns."""
    columns = SUITES.load(suite).COLUMNS
    usual = dict.fromkeys([*DEFAULT_SPLITS.get(suite, QA_SPLITS), *also])
    names = splits or [s for s in usual if s in dd] or [s for s in dd if set(columns) <= set(dd[s].column_names)]
    if not names:
        raise UsageError(f"suite {suite!r}: no split of the dataset has its columns ({', '.join(columns)}); give "
                         "--splits (and --columns)")
    for s in names:
        if len(split(dd, s, columns)) == 0:
            raise UsageError(f"split {s!r} is empty")
    return names


def check_prompts(tok, dd, splits: list[str], limit: int | None = None) -> None:
    """Every prompt evaluated has a token to condition on: a blank one that the tokenizer turns into no tokens (one
    that adds no BOS token, as most chat models' outside their template) is a one-line error naming its split and
    row (vLLM refuses such a request; HF would answer from padding alone)."""
    for s, ds in first_rows(dd, splits, limit).items():
        for i, prompt in enumerate(ds["prompt"]):
            if isinstance(prompt, str) and not prompt.strip() and not tok(prompt)["input_ids"]:
                raise UsageError(f"split {s!r}, row {i}: an empty prompt (the model's tokenizer gives it no token to "
                                 "condition on: give every prompt some text)")


def run_eval(model: str, data: str, suites: list[str] = ("qa",), splits: list[str] | None = None,
             limit: int | None = None, engine: str = "auto", output: str | None = None, batch_size: int = 128,
             adapter: str | None = None, reference: str | None = None, options: dict | None = None,
             columns: dict[str, str] | None = None, engine_settings: dict | None = None, seed: int = 0,
             bootstrap_iters: int = 1000, progress: bool = True, overwrite: bool = False,
             apply_chat_template: bool | None = None,
             system_instruction: str | None = None, relearn: dict | None = None) -> tuple[Path, dict, dict]:
    """Evaluate a model (or LoRA run) on ``suites`` x ``splits`` with one engine; returns the output directory and
    the results and samples per suite (as written there). ``options``: suite options (``FLAGS``), each of which
    some chosen suite must take; the run's ``run.json`` supplies refusals, the certainty question and whether it
    was tuned with a certainty suffix unless ``options`` give them. Prompts go through the model's chat template
    when its tokenizer has one (``apply_chat_template`` None; ``evals.chat``); answers then end at the end-of-turn
    token, not at the testbed's stop, and are judged by ``contains`` (the gold or an alias as whole words) unless
    ``options`` give ``stop`` or ``match``. An existing output is replaced only with ``overwrite``. ``relearn``: the
    relearning attack's ``steps``, ``split``, ``lr`` and ``batch_size`` (``posttrain.relearn.attack``; None where not
    given), its section written into ``results.json`` beside the suites' results; the attack takes ``forget_split``
    from ``options`` too, whatever the suites."""
    given = {k: v for k, v in (options or {}).items() if v is not None}
    for suite in suites:
        SUITES.load(suite)  # an unknown name: one line naming the known ones
    if reference is not None:
        given["reference"] = reference
    attack = relearning.attack(relearn)
    check_options(suites, {k: v for k, v in given.items() if not (attack and k == "forget_split")})
    if "match" in given:
        check_match(given["match"])
    if limit is not None and limit < 1:
        raise UsageError("--limit must be at least 1")
    if bootstrap_iters < 0:
        raise UsageError("--bootstrap_iters must be at least 0")
    target = resolve(model, adapter)
    ref = None
    if reference is not None:
        ref = resolve(reference, what="reference")
        check_reference(ref, target)
    elif "flips" in suites:
        raise UsageError("the flips suite needs --reference RUN")
    trained = trained_settings(target)
    tok = modeling.load_tokenizer(target.model)
    fmt = chat_format(tok, apply_chat_template, system_instruction)
    raw = load_eval_data(data, columns)
    dd = render(raw, fmt)
    roles = {k: given[k] for k in ("forget_split", "holdout_split") if k in given}
    named_forget = (roles["forget_split"],) if "forget_split" in roles else ()
    chosen = {suite: choose_splits(suite, dd, splits, named_forget if suite == "forgetting" else ())
              for suite in suites}
    # bad input: one line before any engine starts or bar is drawn
    if "flips" in chosen:
        flips.check_choices(dd, [s for s in chosen["flips"] if flips.is_multiple_choice(dd[s])])
    if "forgetting" in chosen:
        forgetting.check(dd, chosen["forgetting"], limit, retain_logs=given.get("retain_logs"), named=tuple(roles),
                         **roles)
    prompted = dict.fromkeys(s for names in chosen.values() for s in names)
    if "forgetting" in chosen:  # the holdout split's prompts are scored too
        prompted.update(dict.fromkeys({roles.get("holdout_split", forgetting.HOLDOUT)} & set(dd)))
    rows = attack and relearning.choose(dd, given.get("forget_split", forgetting.FORGET), attack.split, seed)
    if rows:  # the relearned and the asked rows are prompted too
        prompted.update(dict.fromkeys([rows.forget_split, rows.split]))
    check_prompts(tok, dd, list(prompted), limit)
    out = Path(output or Path(model) / "eval")
    check_output(out, overwrite)
    start = time.time()
    chat = {"stop": (), "match": "contains"} if fmt.apply else {}
    passed = {**chat, **trained, **given, "seed": seed, "bootstrap_iters": bootstrap_iters}
    results, samples, configs = {}, {}, {}
    with relearning.scratch(out) if attack else nullcontext() as scratch:
        targets, settings = [target, *([ref] if ref else [])], dict(engine_settings or {})
        if attack:
            relearned, loss = relearning.fine_tune(target, relearning.training_rows(raw, rows), scratch, attack,
                                                   seed)
            targets.append(relearned)
            if not relearned.adapter and settings.get("gpu_memory_utilization") is None:
                # the fully relearned model is an engine of its own: vLLM's engines share the GPU's default 0.9
                settings["gpu_memory_utilization"] = round(0.9 / len({t.model for t in targets}), 2)
        engines = engines_for(engine, targets, batch_size, seed, progress, settings)
        served = Served(engines[target.model], target.adapter)
        passed["reference"] = Served(engines[ref.model], ref.adapter) if ref else None
        for suite in bar(suites, progress, desc="eval", unit="suite"):
            kwargs = {k: v for k, v in passed.items() if k in suite_options(suite)}
            results[suite], samples[suite] = SUITES.load(suite).evaluate(served, dd, chosen[suite], limit=limit,
                                                                         **kwargs)
            configs[suite] = suite_config(suite, kwargs, chosen[suite], fmt.settings())
        if attack:
            options = {k: v for k, v in passed.items() if k in suite_options("forgetting")
                       and k not in ("retain_logs", "forget_split", "holdout_split")}
            compared, relearn_samples = relearning.compare(
                served, Served(engines[relearned.model], relearned.adapter), relearning.asked_rows(dd, rows), options)
            section = relearning.section(attack, rows, seed, bool(relearned.adapter), loss, compared)
    config = {"model": target.model, "adapter": target.adapter, "data": data, "columns": columns,
              "suites": list(suites), "splits": chosen, "limit": limit, "engine": served.name,
              "engine_settings": {k: v for k, v in settings.items() if v is not None},
              "batch_size": batch_size, "reference": reference, "seed": seed, "bootstrap_iters": bootstrap_iters,
              "options": {k: v for k, v in given.items() if k != "reference"}, "trained_with": trained,
              **fmt.settings(),
              "command": sys.argv, "wall_time_s": round(time.time() - start, 3)}
    better = {suite: higher_is_better(suite, {k: v for r in res.values() for k, v in r.items()})
              for suite, res in results.items()}
    with atomic_dir(out) as tmp:
        report.write(tmp, results, {**samples, **({"relearn": relearn_samples} if attack else {})}, config, configs,
                     better, {"relearn": (section, relearning.summary(section))} if attack else None)
    return out, results, samples
