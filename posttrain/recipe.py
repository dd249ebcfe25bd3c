"""Recipes: a flat YAML file read the TRL way.

``method:`` picks a trainer from the registry; the rest of the keys fill the method's TRL config, TRL's
``ModelConfig`` (model name, dtype, LoRA) and the two small dataclasses below. Flags given after the recipe
override its keys (``--learning_rate 1e-4``), as in TRL's own scripts. Unknown keys are errors.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import yaml
from trl import ModelConfig, TrlParser

from posttrain.core.errors import UsageError
from posttrain.trainers import METHODS, get_method


@dataclass
class DataArguments:
    method: str = field(default="sft", metadata={"help": f"Trainer to use: one of {', '.join(sorted(METHODS))}."})
    dataset_path: str | None = field(default=None, metadata={"help": "A `posttrain gen` directory, a data file or directory (TOFU's layout too), or NAME=PATH,..."})
    dataset_train_split: str = field(default="corpus", metadata={"help": "Split to train on."})
    dataset_eval_split: str | None = field(default=None, metadata={
        "help": "Split to evaluate on; several, comma-separated, are evaluated one by one (eval_<split>_ metrics)."})
    dataset_forget_split: str | None = field(default=None, metadata={"help": "Split to unlearn (unlearning methods)."})
    dataset_retain_split: str | None = field(default=None, metadata={
        "help": "Split whose knowledge an unlearning method keeps (paired with the forget split)."})
    init_adapter: str | None = field(default=None, metadata={
        "help": "A LoRA adapter directory to start from (trained further; no new LoRA is added)."})


@dataclass
class ScratchArguments:
    """The testbed's from-scratch model: a word-level tokenizer over the dataset and a tiny Llama."""

    from_scratch: bool = field(default=False, metadata={"help": "Build tokenizer and model instead of loading."})
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 128


@dataclass
class Recipe:
    method: str
    train: object  # the method's TRL config
    model: ModelConfig
    data: DataArguments
    scratch: ScratchArguments
    path: str


def resolve(path: str) -> Path:
    """A recipe path as given, or relative to the recipes shipped with the package (``testbed/base.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    packaged = Path(str(files("posttrain.recipes"))) / path
    if packaged.is_file():
        return packaged
    raise UsageError(f"recipe not found: {path}")


def parse(path: str, overrides: list[str] = ()) -> Recipe:
    p = resolve(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"recipe {path} must be a YAML mapping of keys to values")
    overrides = list(overrides)
    method = _method_flag(overrides) or raw.get("method", "sft")
    config_cls = get_method(method).Config
    # no abbreviated flags: `--meth x` would set the method without choosing its config (and a typo is an error)
    parser = TrlParser([config_cls, ModelConfig, DataArguments, ScratchArguments], allow_abbrev=False,
                       exit_on_error=False)
    try:
        train, model, data, scratch = parser.parse_args_and_config(["--config", str(p), *overrides])
    except (ValueError, argparse.ArgumentError) as e:
        raise UsageError(f"recipe {path}: {_first_line(e)}") from None
    if data.method != method:  # the parser read the method some way _method_flag did not
        raise UsageError(f"recipe {path}: method {data.method!r} was given in a form posttrain cannot read; "
                         "give it as --method NAME")
    if not model.model_name_or_path and not scratch.from_scratch:
        raise UsageError(f"recipe {path}: set model_name_or_path, or from_scratch: true for the testbed model")
    return Recipe(method=method, train=train, model=model, data=data, scratch=scratch, path=str(p))


def _method_flag(overrides: list[str]) -> str | None:
    """``--method`` among the flags, read as the full parser reads it (``--method x``, ``--method=x``; the last
    one wins), so that the config class it needs is chosen before that parser is built."""
    flag = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    flag.add_argument("--method")
    try:
        return flag.parse_known_args(overrides)[0].method
    except argparse.ArgumentError:  # `--method` without a value: the full parser reports it
        return None


def _first_line(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0]
    return msg.replace("Unknown arguments from config file", "unknown keys").replace(
        "Some specified arguments are not used by the HfArgumentParser", "unknown flags"
    )
