"""``posttrain train``: parse a recipe, build model and data, run the method's trainer, save one run directory."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from accelerate import PartialState
from datasets import DatasetDict, load_from_disk
from trl import get_peft_config

from posttrain import modeling
from posttrain.errors import ConfigError, UsageError
from posttrain.recipe import Recipe, parse
from posttrain.runs import atomic_dir, check_output, run_info, write_json
from posttrain.trainers import get_method


def load_data(path: str | None) -> DatasetDict:
    if not path:
        raise UsageError("no dataset: set dataset_path (a directory written by `posttrain gen`)")
    if not (Path(path) / "dataset_dict.json").is_file():
        raise UsageError(f"dataset directory not found or not a saved DatasetDict: {path}")
    return load_from_disk(path)


def split(dd: DatasetDict, name: str, columns: tuple[str, ...] = ()):
    if name not in dd:
        raise UsageError(f"unknown split {name!r}; the dataset has: {', '.join(dd)}")
    missing = [c for c in columns if c not in dd[name].column_names]
    if missing:
        raise UsageError(f"split {name!r} lacks column(s) {', '.join(missing)}")
    return dd[name]


def build_model(recipe: Recipe, dd: DatasetDict):
    s, m = recipe.scratch, recipe.model
    if s.from_scratch:
        texts = (row[c] for d in dd.values() for c in ("prompt", "completion", "text") if c in d.column_names
                 for row in d.select_columns([c]))
        tok = modeling.build_word_tokenizer(texts)
        model = modeling.scratch_llama(tok, s.hidden_size, s.num_hidden_layers, s.num_attention_heads,
                                       s.intermediate_size, s.max_position_embeddings, seed=recipe.train.seed)
        return model, tok
    trust = recipe.train.trust_remote_code
    tok = modeling.load_tokenizer(m.model_name_or_path, trust_remote_code=trust, revision=m.model_revision)
    model = modeling.load_model(m.model_name_or_path, m.dtype, trust_remote_code=trust, revision=m.model_revision)
    return model, tok


def train(recipe_path: str, overrides: list[str] = (), command: list[str] | None = None) -> Path:
    start = time.time()
    recipe = parse(recipe_path, overrides)
    check_output(recipe.train.output_dir, recipe.train.overwrite_output_dir)
    _, trainer_cls, columns = get_method(recipe.method)
    dd = load_data(recipe.data.dataset_path)
    train_ds = split(dd, recipe.data.dataset_train_split, columns).select_columns(list(columns))
    eval_ds = None
    if recipe.data.dataset_eval_split:
        eval_ds = split(dd, recipe.data.dataset_eval_split, columns).select_columns(list(columns))
    final = Path(recipe.train.output_dir)
    # one fixed temporary name, so that every process of a distributed launch writes to the same place
    with atomic_dir(final, tmp_name=f".{final.name}.partial", main=PartialState().is_main_process) as tmp:
        recipe.train.output_dir = str(tmp)
        model, tok = build_model(recipe, dd)
        try:
            trainer = trainer_cls(model=model, args=recipe.train, train_dataset=train_ds, eval_dataset=eval_ds,
                                  processing_class=tok, peft_config=get_peft_config(recipe.model))
        except ConfigError as e:  # the trainer's own check; any other error is a bug and keeps its traceback
            raise ConfigError(f"{recipe.method}: {str(e).strip().splitlines()[0]}") from None
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
            info["train_metrics"] = result.metrics
            info["log_history"] = trainer.state.log_history
            write_json(tmp / "run.json", info)
        trainer.accelerator.wait_for_everyone()
    return final
