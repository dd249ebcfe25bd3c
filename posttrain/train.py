"""``posttrain train``: parse a recipe, read the splits its method names, run the method's data step and trainer,
save one run directory (model or adapter, tokenizer, the prepared training set in ``train_data/``, ``run.json``).

The method's registry entry (``posttrain.trainers.METHODS``) says what to read and how to prepare it; nothing here
is specific to a method.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from accelerate import PartialState
from datasets import DatasetDict
from trl import get_peft_config

from posttrain import modeling
from posttrain.data import load_data, split
from posttrain.errors import ConfigError
from posttrain.recipe import Recipe, parse
from posttrain.runs import atomic_dir, check_output, run_info, write_json
from posttrain.trainers import ROLES, Method, get_method

TRAIN_DATA = "train_data"  # the prepared training set, inside the run directory


def split_names(recipe: Recipe, method: Method) -> dict[str, str]:
    """Role -> split name for the roles the method reads; a role it needs and the recipe leaves unnamed, or one the
    recipe names and it would ignore, is an error (``dataset_train_split`` has a default, so it is never the latter).
    """
    names = {role: getattr(recipe.data, f"dataset_{role}_split") for role in ROLES}
    for role in method.splits:
        if not names[role]:
            raise ConfigError(f"{recipe.method} reads a {role} split: set dataset_{role}_split")
    for role in ROLES[1:]:
        if names[role] and role not in (*method.splits, *method.optional):
            raise ConfigError(f"{recipe.method} reads no {role} split: drop dataset_{role}_split")
    return {role: names[role] for role in (*method.splits, *method.optional) if names[role]}


def build_model(recipe: Recipe, dd: DatasetDict):
    """Model, tokenizer and the LoRA config the trainer applies (None for full fine-tuning, and when the model
    already carries the trainable adapter named by ``init_adapter``)."""
    s, m, adapter = recipe.scratch, recipe.model, recipe.data.init_adapter
    if adapter and s.from_scratch:
        raise ConfigError("init_adapter needs a trained model (model_name_or_path), not from_scratch")
    if adapter:
        modeling.check_adapter(adapter, "init_adapter")
    if s.from_scratch:
        texts = (row[c] for d in dd.values() for c in ("prompt", "completion", "text") if c in d.column_names
                 for row in d.select_columns([c]))
        tok = modeling.build_word_tokenizer(texts)
        model = modeling.scratch_llama(tok, s.hidden_size, s.num_hidden_layers, s.num_attention_heads,
                                       s.intermediate_size, s.max_position_embeddings, seed=recipe.train.seed)
        return model, tok, get_peft_config(m)
    trust = recipe.train.trust_remote_code
    tok = modeling.load_tokenizer(m.model_name_or_path, trust_remote_code=trust, revision=m.model_revision)
    model = modeling.load_model(m.model_name_or_path, m.dtype, trust_remote_code=trust, revision=m.model_revision)
    if adapter:
        return modeling.load_adapter(model, adapter, trainable=True), tok, None
    return model, tok, get_peft_config(m)


@contextmanager
def rejections(method: str):
    """A method's own check (a ``ConfigError``) as one line that names the method; any other error is a bug and
    keeps its traceback."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(f"{method}: {str(e).strip().splitlines()[0]}") from None


def prepare(recipe: Recipe, method: Method, dd: DatasetDict, names: dict[str, str]):
    """The method's data step on its splits, with the registry's columns only. Several eval splits
    (``dataset_eval_split: valid,test``) are each prepared by the step, as the eval role, and reach the trainer as
    a dict (the Trainer evaluates each, its metrics named ``eval_<split>_...``)."""
    evals = names["eval"].split(",") if names.get("eval") else [None]
    model_name = "" if recipe.scratch.from_scratch else recipe.model.model_name_or_path

    def step(eval_name):
        roles = {**names, "eval": eval_name} if eval_name else names
        data = {role: split(dd, name, method.columns).select_columns(list(method.columns))
                for role, name in roles.items()}
        with rejections(recipe.method):
            return method.load(method.prepare)(data, recipe.train, model_name)

    if len(evals) == 1:
        return step(evals[0])
    parts = [step(name) for name in evals]
    return dataclasses.replace(parts[0], eval={name: part.eval for name, part in zip(evals, parts)})


def train(recipe_path: str, overrides: list[str] = (), command: list[str] | None = None,
          extra: dict | None = None) -> Path:
    """Run a recipe; ``extra`` goes into the run's ``run.json``."""
    start = time.time()
    recipe = parse(recipe_path, overrides)
    check_output(recipe.train.output_dir, recipe.train.overwrite_output_dir)
    _, trainer_cls, method = get_method(recipe.method)
    if method.before:
        with rejections(recipe.method):
            method.load(method.before)(recipe, train)
    names = split_names(recipe, method)
    dd = load_data(recipe.data.dataset_path)
    prepared = prepare(recipe, method, dd, names)
    train_ds, eval_ds = prepared.train, prepared.eval
    final = Path(recipe.train.output_dir)
    # one fixed temporary name, so that every process of a distributed launch writes to the same place
    with atomic_dir(final, tmp_name=f".{final.name}.partial", main=PartialState().is_main_process) as tmp:
        recipe.train.output_dir = str(tmp)
        if PartialState().is_main_process:
            DatasetDict(prepared.splits()).save_to_disk(str(tmp / TRAIN_DATA))
        model, tok, peft_config = build_model(recipe, dd)
        with rejections(recipe.method):
            trainer = trainer_cls(model=model, args=recipe.train, train_dataset=train_ds, eval_dataset=eval_ds,
                                  processing_class=tok, peft_config=peft_config)
        result = trainer.train()
        trainer.save_model(str(tmp))
        recipe.train.output_dir = str(final)
        if trainer.accelerator.is_main_process:
            tok.save_pretrained(str(tmp))
            config = {"method": recipe.method, "recipe": recipe.path,
                      **{k: v for part in (recipe.data, recipe.scratch, recipe.model)
                         for k, v in dataclasses.asdict(part).items()},
                      **recipe.train.to_dict()}
            info = run_info(command or sys.argv, config, recipe.train.seed, time.time() - start)
            info["train_data"] = {"path": TRAIN_DATA, "splits": names, "rows": len(train_ds), **prepared.stats}
            info["train_metrics"] = result.metrics
            info["log_history"] = trainer.state.log_history
            info.update(extra or {})
            write_json(tmp / "run.json", info)
        trainer.accelerator.wait_for_everyone()
    return final
