"""``posttrain eval RUN --relearn N``: a relearning attack on an unlearned model, after Hu et al., "Jogging the
memory of unlearned LLMs through targeted relearning attacks" (arXiv 2406.13356) and Lynch et al., "Eight methods
to evaluate robust unlearning in LLMs" (arXiv 2402.16835): the attacker fine-tunes the model for ``N`` optimizer
steps on some forget facts with their true answers, then asks the other forget questions. Knowledge that was only
hidden comes back; knowledge that was removed has to be learned anew from the few rows given.

Rows, all from the data given to ``posttrain eval`` (the forget split is ``--forget_split``, default ``forget``):

* evaluated: the forget split's ``heldout`` rows (phrasings never trained); a forget split without that column is
  evaluated whole when the attacker relearns on another split, else a seeded half of its facts (``fact_id``, else
  the prompt; ``--seed``) is evaluated and the other half relearned;
* relearned: the rows of the relearn split (``--relearn_split``; default ``<forget split>_train`` when the data has
  it, as ``posttrain gen world`` writes ``forget_train``, else the forget split itself) that share no question
  (``fact_id``, else the prompt) with an evaluated row. The two sets are disjoint: no evaluated row is trained on.
  On ``posttrain gen world`` data a heldout row is another phrasing of a relearned fact (its ``fact_id`` names the
  phrasing), so the recovery there is the facts relearned and asked anew; on the testbed's graph, split in half by
  fact, it is facts never relearned coming back (Hu et al.'s setting).

The model is fine-tuned with posttrain's SFT trainer (TRL's prompt/completion formatting, loss on the completion,
as ``posttrain train`` trains) at a constant learning rate, no warm-up or weight decay, its seed (data order,
dropout) ``--seed``, so the same seed gives the same result. A LoRA run goes on training its own adapter (the
attacker has the released adapter; no new LoRA settings to choose); a full model is fully fine-tuned. The relearned
model lives in a temporary directory beside the eval output, deleted when the eval ends, failed or not.

Both models answer the evaluated rows through the forgetting suite (its options: ``--match``, ``--stop``,
``--max_tokens``, ``--refusal``; ``--limit`` does not cap them). ``results.json`` gets a ``relearn`` section (and
``report.md`` its table): the settings, ``n_relearn`` and ``n_evaluated``, ``accuracy_before`` / ``accuracy_after``
(exact match) and ``relearn_recovery`` = after - before (each with ``_stderr``; the recovery's is paired, over the
per-row differences), the training loss, and the suite's full results ``before`` and ``after``; ``samples.jsonl``
the answers of both (suite ``relearn``, ``phase`` before / after).
"""

from __future__ import annotations

import gc
import random
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from transformers import PrinterCallback

from posttrain.core import modeling
from posttrain.core.data import split
from posttrain.core.errors import UsageError
from posttrain.evals import forgetting, metrics, report
from posttrain.evals.targets import Target
from posttrain.trainers import sft


@dataclass(frozen=True)
class Attack:
    """The attack's settings: optimizer steps, learning rate, batch size and the split relearned on (None: the
    default, see the module docstring)."""

    steps: int
    lr: float = 1e-5  # at 1e-4, ten Adam steps on six true answers wreck SmolLM2's answers to the others
    batch_size: int = 8
    split: str | None = None


def attack(given: dict | None) -> Attack | None:
    """The attack that ``--relearn N`` and its options (``given``: steps, split, lr, batch_size; None where not
    given) ask for; None without steps. A bad value, or an option without ``--relearn``, is a ``UsageError``."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if "steps" not in given:
        if given:
            raise UsageError(f"--relearn_{next(iter(given))} applies only with --relearn N (the relearning attack)")
        return None
    if given["steps"] < 1:
        raise UsageError("--relearn must be at least 1 (optimizer steps of the relearning attack)")
    if given.get("lr", 1) <= 0:
        raise UsageError("--relearn_lr must be positive")
    if given.get("batch_size", 1) < 1:
        raise UsageError("--relearn_batch_size must be at least 1")
    return Attack(**given)


@dataclass
class Rows:
    """Which rows the attack relearns on (of ``split``) and which it evaluates (of ``forget_split``)."""

    forget_split: str
    split: str
    relearned: list[int]
    evaluated: list[int]
    chosen_by: str  # "heldout", "all" (the relearn split is another one) or "seeded half"


def choose(dd: DatasetDict, forget_split: str, relearn_split: str | None, seed: int) -> Rows:
    """The attack's rows (module docstring); a one-line ``UsageError`` for a missing split or column, or no rows
    to relearn on or to evaluate."""
    if forget_split not in dd:
        raise UsageError(f"--relearn asks the forget split's questions, but the data has no split {forget_split!r} "
                         f"(name it with --forget_split; the data has: {', '.join(dd)})")
    forget = split(dd, forget_split, forgetting.COLUMNS)
    name = relearn_split or next(s for s in (f"{forget_split}_train", forget_split) if s in dd)
    source = split(dd, name, ("prompt", "completion"))
    if "heldout" in forget.column_names:
        evaluated, chosen_by = [i for i, held in enumerate(forget["heldout"]) if held], "heldout"
    elif name != forget_split:
        evaluated, chosen_by = list(range(len(forget))), "all"
    else:
        facts = list(dict.fromkeys(map(forgetting.question_key, forget)))
        random.Random(seed).shuffle(facts)
        asked = set(facts[: len(facts) // 2])
        evaluated = [i for i, row in enumerate(forget) if forgetting.question_key(row) in asked]
        chosen_by = "seeded half"
    if not evaluated:
        why = "no heldout rows" if chosen_by == "heldout" else "fewer than two facts to split in half"
        raise UsageError(f"--relearn: the forget split {forget_split!r} has {why}: no questions to ask after "
                         "relearning")
    asked = {forgetting.question_key(forget[i]) for i in evaluated}
    relearned = [i for i, row in enumerate(source) if forgetting.question_key(row) not in asked]
    if not relearned:
        raise UsageError(f"--relearn: split {name!r} has no rows to relearn on that are not among the evaluated "
                         f"questions of {forget_split!r} (give another with --relearn_split)")
    rows = Rows(forget_split, name, relearned, evaluated, chosen_by)
    forgetting.check(asked_rows(dd, rows), [forget_split])
    return rows


def asked_rows(dd: DatasetDict, rows: Rows) -> DatasetDict:
    """The evaluated rows, as the forgetting suite's data (one split, named as the forget split)."""
    return DatasetDict({rows.forget_split: dd[rows.forget_split].select(rows.evaluated)})


def training_rows(raw: DatasetDict, rows: Rows) -> Dataset:
    """The relearned rows' prompt and completion as the data has them (plain text or chat messages: SFT formats
    them as ``posttrain train`` does), in memory, so that tokenising them writes no cache file beside the data."""
    ds = raw[rows.split].select(rows.relearned)
    return Dataset.from_dict({c: ds[c] for c in ("prompt", "completion")})


@contextmanager
def scratch(out: Path):
    """A temporary directory beside the eval output ``out`` for the relearned model, removed on exit."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.relearn-") as tmp:
        yield Path(tmp)


def fine_tune(target: Target, data: Dataset, out: Path, settings: Attack, seed: int) -> tuple[Target, float]:
    """Train ``target`` (its adapter, for a LoRA run) on ``data`` for ``settings.steps`` optimizer steps and save
    it in ``out``; returns the relearned target and the mean training loss."""
    tok = modeling.load_tokenizer(target.model)
    model = modeling.load_model(target.model)
    if target.adapter:
        model = modeling.load_adapter(model, target.adapter, trainable=True)
    args = sft.SFTConfig(output_dir=str(out), max_steps=settings.steps, learning_rate=settings.lr,
                         per_device_train_batch_size=settings.batch_size, lr_scheduler_type="constant", seed=seed,
                         save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True)
    trainer = sft.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    trainer.remove_callback(PrinterCallback)  # the training metrics go into results.json, not onto stdout
    loss = trainer.train().training_loss
    trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the eval engines start next, on the same device
    return (Target(target.model, str(out)) if target.adapter else Target(str(out))), loss


def compare(before_engine, after_engine, asked: DatasetDict, options: dict) -> tuple[dict, list[dict]]:
    """The forgetting suite's results on the evaluated rows for both models (``options``: its settings) and the
    section's accuracies and recovery; returns (section without the settings, samples of both phases)."""
    name = next(iter(asked))
    kwargs = {**options, "forget_split": name}
    before, before_samples = forgetting.evaluate(before_engine, asked, [name], **kwargs)
    after, after_samples = forgetting.evaluate(after_engine, asked, [name], **kwargs)
    right = {phase: [float(s["exact_match"]) for s in rows] for phase, rows in (("before", before_samples),
                                                                                ("after", after_samples))}
    section = {"n_evaluated": len(asked[name]),
               **metrics.mean_with_stderr("accuracy_before", right["before"]),
               **metrics.mean_with_stderr("accuracy_after", right["after"]),
               **metrics.mean_with_stderr("relearn_recovery", [a - b for a, b in zip(right["after"],
                                                                                       right["before"])]),
               "before": before[name], "after": after[name]}
    samples = [{**s, "phase": phase} for phase, rows in (("before", before_samples), ("after", after_samples))
               for s in rows]
    return section, samples


def section(settings: Attack, rows: Rows, seed: int, adapter: bool, loss: float, compared: dict) -> dict:
    """The ``relearn`` section of ``results.json``."""
    return {**asdict(settings), "split": rows.split, "forget_split": rows.forget_split, "seed": seed,
            "evaluated_rows": rows.chosen_by, "trained": "its LoRA adapter" if adapter else "the full model",
            "n_relearn": len(rows.relearned), "train_loss": loss, **compared}


def summary(relearn: dict) -> str:
    """One line of settings and a table of the accuracies before and after relearning and the recovery."""
    head = (f"relearn: {relearn['steps']} steps on {relearn['n_relearn']} rows of {relearn['split']!r} (lr "
            f"{relearn['lr']:g}, batch {relearn['batch_size']}, seed {relearn['seed']}, {relearn['trained']}), "
            f"{relearn['n_evaluated']} {relearn['evaluated_rows']} rows of {relearn['forget_split']!r} asked")
    keys = ("accuracy_before", "accuracy_after", "relearn_recovery")
    return head + "\n" + report.table(["n", *keys], [[relearn["n_evaluated"], *(report.cell(relearn, k)
                                                                                 for k in keys)]])
