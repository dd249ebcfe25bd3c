"""Recipes: a flat YAML file read the TRL way.

``method:`` picks a trainer from the registry; the rest of the keys fill the method's TRL config, TRL's
``ModelConfig`` (model name, dtype, LoRA) and the two small dataclasses below. Flags given after the recipe
override its keys (``--learning_rate 1e-4``), as in TRL's own scripts. Unknown keys are errors.

A recipe with ``stages:`` is a pipeline: its stages run one after another, each a run of its own, and each stage
after the first starts from the previous one's run::

    stages:                                # in order, each NAME: a recipe file, or NAME: a mapping of keys
      - rs: rule/rejection_steering.yaml
      - rebo: {method: rule, max_steps: 200}
    output_dir: runs/rule/rule             # the last stage's run; stage NAME's (the others) is <output_dir>-NAME
    model_name_or_path: runs/testbed/base  # every other key is shared by all the stages
    dataset_path: runs/rule/data

A stage's keys are its recipe file's, then the shared keys over them, then its inline keys; a flag applies to every
stage (``--seed 1``) or, spelt ``--NAME.KEY``, to stage NAME alone (``--rebo.max_steps 40``); ``--output_dir`` is
the pipeline's. A stage after the first trains on from the previous stage's run: with full fine-tuning its
``model_name_or_path`` is that run, with LoRA its ``init_adapter`` is that run's adapter (on the same base model),
with that adapter's ``use_peft`` and LoRA settings; it cannot set those (nor the scratch model's keys) to anything
else. ``stage: NAME`` (``--stage NAME``) runs that stage alone, on the shared model, into ``output_dir``.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field, fields
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
    pipeline: str | None = None  # a stage's: the pipeline recipe, its stages (those this command runs), its name
    stages: tuple[str, ...] = ()
    stage: str | None = None


PIPELINE = ("stages", "stage", "output_dir")  # a pipeline's own keys; its other keys are shared by the stages
CHAINED = ("model_name_or_path", "init_adapter", *(f.name for f in fields(ScratchArguments)))  # set by the chain


def resolve(path: str) -> Path:
    """A recipe path as given, or relative to the recipes shipped with the package (``testbed/base.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    packaged = Path(str(files("posttrain.recipes"))) / path
    if packaged.is_file():
        return packaged
    raise UsageError(f"recipe not found: {path}")


def read(path: str) -> tuple[Path, dict]:
    """A recipe file's path and its keys."""
    p = resolve(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"recipe {path} must be a YAML mapping of keys to values")
    return p, raw


def parse(path: str, overrides: list[str] = ()) -> Recipe:
    """A recipe of one run (not a pipeline: ``parse_stages``)."""
    p, raw = read(path)
    if "stages" in raw:
        raise UsageError(f"recipe {path} is a pipeline of stages, not one run")
    return parse_keys(raw, overrides, p, f"recipe {path}")


def parse_keys(keys: dict, overrides: list[str], p: Path, where: str, hint: str = "") -> Recipe:
    """A recipe's keys and flags parsed into its dataclasses, as TRL's ``--config`` parses a file: the keys are the
    parser's defaults (``env:`` sets environment variables), the flags override them. ``hint``: added to the
    message about unknown flags."""
    keys, overrides = dict(keys), list(overrides)
    env = keys.pop("env", {})
    if not isinstance(env, dict):
        raise UsageError(f"{where}: env must be a mapping of variable names to values")
    os.environ.update({k: str(v) for k, v in env.items()})
    method = _method_flag(overrides) or keys.get("method", "sft")
    config_cls = get_method(method).Config
    # no abbreviated flags: `--meth x` would set the method without choosing its config (and a typo is an error)
    parser = TrlParser([config_cls, ModelConfig, DataArguments, ScratchArguments], allow_abbrev=False,
                       exit_on_error=False)
    unknown = parser.set_defaults_with_config(**keys)[::2]
    if unknown:
        raise UsageError(f"{where}: unknown keys: {', '.join(k[2:] for k in unknown)}")
    try:
        train, model, data, scratch, rest = parser.parse_args_into_dataclasses(overrides, return_remaining_strings=True)
    except (ValueError, argparse.ArgumentError) as e:
        raise UsageError(f"{where}: {_first_line(e)}") from None
    if rest:
        raise UsageError(f"{where}: unknown flags: {rest}{hint}")
    if data.method != method:  # the parser read the method some way _method_flag did not
        raise UsageError(f"{where}: method {data.method!r} was given in a form posttrain cannot read; "
                         "give it as --method NAME")
    if not model.model_name_or_path and not scratch.from_scratch:
        raise UsageError(f"{where}: set model_name_or_path, or from_scratch: true for the testbed model")
    return Recipe(method=method, train=train, model=model, data=data, scratch=scratch, path=str(p))


def parse_stages(path: str, overrides: list[str] = ()) -> list[Recipe]:
    """The runs a recipe makes, in order: a plain recipe one, a pipeline one per stage it runs (the module
    docstring), each with its keys, flags, directory and starting point resolved."""
    p, raw = read(path)
    where = f"recipe {path}"
    if "stages" not in raw:
        return [parse_keys(raw, overrides, p, where)]
    stages = _stage_list(raw["stages"], where)
    top, shared_flags, own_flags = _split_flags(overrides, list(stages), where)
    if "method" in raw or any(_key(g) == "method" for g in shared_flags):
        raise UsageError(f"{where}: each stage names its own method; drop method from the pipeline (--NAME.method)")
    top = {**{k: raw[k] for k in ("stage", "output_dir") if raw.get(k) is not None}, **top}
    if not top.get("output_dir"):
        raise UsageError(f"{where}: set output_dir (the last stage's run; stage NAME's is <output_dir>-NAME)")
    names = list(stages)
    if "stage" in top:
        if top["stage"] not in stages:
            raise UsageError(f"{where}: unknown stage {top['stage']!r}; the stages are: {', '.join(names)}")
        names = [top["stage"]]
        skipped = [n for n, flags in own_flags.items() if flags and n not in names]
        if skipped:
            raise UsageError(f"{where}: the --{skipped[0]}.* flags would be ignored: --stage {names[0]} runs "
                             "that stage alone")
    shared = {k: v for k, v in raw.items() if k not in PIPELINE}
    hint = f" (a flag sets every stage, --NAME.KEY stage NAME alone: stages {', '.join(stages)})"
    recipes = []
    for name in names:
        here = f"{where}, stage {name}"
        file, keys, own = _stage_keys(stages[name], p, here)
        keys = {**keys, **shared}
        flags, start = shared_flags, {}
        if recipes:  # it starts from the previous stage's run: that sets the CHAINED keys, and the start's
            prev, start = recipes[-1], _start(recipes[-1], here)
            given = [k for k in CHAINED if k in own or k in map(_key, own_flags[name])]
            if given:
                raise UsageError(f"{here}: it starts from stage {prev.stage}'s run; drop its {', '.join(given)}")
            keys = {k: v for k, v in keys.items() if k not in CHAINED} | start
            flags = [g for g in shared_flags if _key(g) not in (*CHAINED, *start)]
        keys |= own
        keys["output_dir"] = own.get("output_dir") or (
            top["output_dir"] if name == names[-1] else f"{str(top['output_dir']).rstrip('/')}-{name}")
        recipe = parse_keys(keys, [t for g in [*flags, *own_flags[name]] for t in g], file, here, hint)
        for k, v in start.items():  # the stage's own keys or flags may only repeat them
            if (given := _value(recipe, k)) != v:
                raise UsageError(f"{here}: {k} {given} would be ignored: it trains stage {recipes[-1].stage}'s "
                                 f"run on, made with {k} {v}")
        recipe.pipeline, recipe.stages, recipe.stage = str(p), tuple(names), name
        recipes.append(recipe)
    return recipes


def _stage_list(items, where: str) -> dict:
    """``stages:``, a list of one-key mappings (a YAML mapping's order is no order): name -> recipe file or keys."""
    if not (isinstance(items, list) and items and all(isinstance(i, dict) and len(i) == 1 for i in items)):
        raise UsageError(f"{where}: stages must be a list of NAME: RECIPE or NAME: {{KEY: VALUE, ...}}, in order")
    stages = dict(next(iter(i.items())) for i in items)
    if len(stages) < len(items):
        raise UsageError(f"{where}: two stages have the same name")
    for name in stages:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
            raise UsageError(f"{where}: stage name {name!r}: use letters, digits, '_' and '-'")
    return stages


def _stage_keys(spec, pipeline: Path, where: str) -> tuple[Path, dict, dict]:
    """A stage's recipe file (the pipeline's, for inline keys), that file's keys and the stage's inline keys."""
    if isinstance(spec, dict):
        return pipeline, {}, spec
    if not isinstance(spec, str):
        raise UsageError(f"{where}: give a recipe file or a mapping of keys, not {spec!r}")
    file, keys = read(spec)
    if "stages" in keys:
        raise UsageError(f"{where}: {spec} is itself a pipeline")
    return file, keys, {}


def _start(prev: Recipe, where: str) -> dict:
    """The keys of a stage that starts from stage ``prev``'s run: that run's model, or (LoRA) its adapter on the same
    base model, trained on with the LoRA settings it was made with."""
    if not prev.model.use_peft:
        return {"model_name_or_path": prev.train.output_dir, "use_peft": False}
    if prev.scratch.from_scratch:
        raise UsageError(f"{where}: stage {prev.stage} trains a LoRA on the scratch model, which its run does not "
                         "keep; train a LoRA pipeline from a saved model (model_name_or_path)")
    lora = {f.name: getattr(prev.model, f.name) for f in fields(ModelConfig)
            if f.name.startswith("lora_") or f.name in ("use_rslora", "use_dora")}
    return {"model_name_or_path": prev.model.model_name_or_path, "init_adapter": prev.train.output_dir,
            "use_peft": True, **lora}


def _value(recipe: Recipe, key: str):
    """A recipe's setting ``key``, in whichever of its dataclasses holds it."""
    return next(getattr(part, key) for part in (recipe.data, recipe.scratch, recipe.model, recipe.train)
                if hasattr(part, key))


def _key(group: list[str]) -> str:
    """The key of a flag and its values (``["--lora_r", "8"]``, ``["--lora_r=8"]``)."""
    return group[0][2:].partition("=")[0] if group[0].startswith("--") else ""


def _split_flags(flags: list[str], names: list[str], where: str) -> tuple[dict, list, dict]:
    """A pipeline's flags, each with its values: the pipeline's own (``--output_dir``, ``--stage``), those for
    every stage, and per stage those spelt ``--NAME.KEY``."""
    groups = []
    for token in flags:
        if token.startswith("--") or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    top, shared, own = {}, [], {name: [] for name in names}
    for g in groups:
        key = _key(g)
        if key in ("output_dir", "stage"):
            values = [g[0].partition("=")[2]] if "=" in g[0] else g[1:]
            if len(values) != 1:
                raise UsageError(f"{where}: --{key} takes one value")
            top[key] = values[0]
        elif "." in key:
            name, _, rest = key.partition(".")
            if name not in own:
                raise UsageError(f"{where}: --{key}: no stage {name!r}; the stages are: {', '.join(names)}")
            own[name].append([f"--{rest}{g[0][2 + len(key):]}", *g[1:]])
        else:
            shared.append(g)
    return top, shared, own


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
    return str(e).strip().splitlines()[0]
