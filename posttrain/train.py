"""``posttrain train``: parse a recipe, read the splits its method names, run the method's data step and trainer,
save one run directory (model or adapter, tokenizer, the prepared training set in ``train_data/``, ``run.json``).
A pipeline recipe (``stages:``, ``posttrain.recipe``) makes one such run per stage, in order, each checked (settings,
output, splits, columns, data step) before the first one trains.

The method's registry entry (``posttrain.trainers.METHODS``) says what to read and how to prepare it; nothing here
is specific to a method.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
from accelerate import PartialState
from datasets import DatasetDict
from transformers.trainer import TRAINING_ARGS_NAME
from trl import get_peft_config, get_quantization_config

from posttrain.core import modeling
from posttrain.core.data import load_data, split
from posttrain.core.errors import ConfigError, UsageError
from posttrain.core.runs import (STATE, atomic_dir, check_output, complete_checkpoints, partial_dir, run_info,
                                 write_json)
from posttrain.recipe import Recipe, parse_stages
from posttrain.trainers import ROLES, get_method
from posttrain.trainers.base import Prepared, Reads

TRAIN_DATA = "train_data"  # the prepared training set, inside the run directory


def resume_point(value: str | None, final: Path) -> str | None:
    """The checkpoint ``resume_from_checkpoint`` names: ``true`` is the last complete one that the interrupted run
    of this ``output_dir`` left, a path is that checkpoint."""
    if value is None or str(value).lower() in ("", "false"):
        return None
    if str(value).lower() == "true":
        found = complete_checkpoints(partial_dir(final))
        if not found:
            raise UsageError(f"resume_from_checkpoint true: no interrupted run of {final} with a saved checkpoint "
                             f"(looked in {partial_dir(final)})")
        return str(found[-1])
    path = Path(value)
    if not (path / STATE).is_file():
        raise UsageError(f"resume_from_checkpoint {value} is not a complete checkpoint directory (no {STATE})")
    if not any(p.name.startswith(("optimizer", "global_step")) for p in path.iterdir()):  # HF/FSDP, DeepSpeed
        raise UsageError(f"resume_from_checkpoint {value} holds the model only (saved with save_only_model): "
                         "training would go on with a fresh optimizer")
    return str(value)


def check_launch(args) -> None:
    """The processes of a launch must train as one. ``accelerate launch`` with several processes on a machine without
    GPUs starts them (torchrun), but unless told to use the CPU each one trains alone: the same run N times, all of
    them writing the one output directory."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size != launched:
        raise UsageError(f"{launched} processes were launched, but each would train alone (no GPU found): on a "
                         "machine without GPUs set ACCELERATE_USE_CPU=true (or use_cpu: true)")


def split_names(recipe: Recipe, reads: Reads) -> dict[str, str]:
    """Role -> split name for the roles the method reads; a role it needs and the recipe leaves unnamed, or one the
    recipe names and it would ignore, is an error (``dataset_train_split`` has a default, so it is never the latter).
    """
    names = {role: getattr(recipe.data, f"dataset_{role}_split") for role in ROLES}
    for role in reads.splits:
        if not names[role]:
            raise ConfigError(f"{recipe.method} reads a {role} split: set dataset_{role}_split")
    for role in ROLES[1:]:
        if names[role] and role not in (*reads.splits, *reads.optional):
            raise ConfigError(f"{recipe.method} reads no {role} split: drop dataset_{role}_split")
    return {role: names[role] for role in (*reads.splits, *reads.optional) if names[role]}


# TRL's ModelConfig keys -> PEFT's LoraConfig names: what an ``init_adapter`` brings in its adapter_config.json
LORA_SETTINGS = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
                 "lora_target_modules": "target_modules", "lora_target_parameters": "target_parameters",
                 "lora_modules_to_save": "modules_to_save", "lora_task_type": "task_type", "use_rslora": "use_rslora",
                 "use_dora": "use_dora"}
SCRATCH_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings")


def explicit(settings, names) -> dict:
    """Those of ``names`` that the dataclass ``settings`` holds with a value other than its default: given by the
    recipe or a flag."""
    defaults = {f.name: f.default for f in dataclasses.fields(settings)}
    return {n: getattr(settings, n) for n in names if getattr(settings, n) != defaults[n]}


def check_ignored(recipe: Recipe) -> None:
    """Model settings given explicitly (``explicit``) that building the model would ignore: the scratch model's
    sizes without ``from_scratch``, and with ``init_adapter`` a ``lora_*`` setting other than that adapter's own
    (it is trained as it was made; the same settings again, as a continued run gives them, are fine)."""
    s, m, adapter = recipe.scratch, recipe.model, recipe.data.init_adapter
    if not s.from_scratch and (sizes := explicit(s, SCRATCH_SIZES)):
        raise ConfigError(f"{', '.join(f'{k} {v}' for k, v in sizes.items())}: the scratch model's sizes apply only "
                          f"with from_scratch: true, and {m.model_name_or_path} is loaded as it is; drop them")
    if not adapter or not (lora := explicit(m, LORA_SETTINGS)):
        return
    trust = recipe.train.trust_remote_code
    differs = modeling.adapter_differs(adapter, {LORA_SETTINGS[k]: v for k, v in lora.items()},
                                       lambda: modeling.linear_layers(m.model_name_or_path, trust, m.model_revision))
    if differs:
        given = ", ".join(f"{k} {v}" for k, v in lora.items() if LORA_SETTINGS[k] in differs)
        own = ", ".join(f"{k} {v}" for k, v in differs.items())
        raise ConfigError(f"{given} would be ignored: init_adapter {adapter} is trained with its own LoRA settings "
                          f"({own}); drop them")


def build_model(recipe: Recipe, dd: DatasetDict):
    """Model, tokenizer and the LoRA config the trainer applies (None for full fine-tuning, and when the model
    already carries the trainable adapter named by ``init_adapter``); settings it would ignore are refused first
    (``check_ignored``)."""
    s, m, adapter = recipe.scratch, recipe.model, recipe.data.init_adapter
    if m.load_in_4bit or m.load_in_8bit:
        check_quantization(recipe)
    if adapter and s.from_scratch:
        raise ConfigError("init_adapter needs a trained model (model_name_or_path), not from_scratch")
    if adapter:
        modeling.check_adapter(adapter, "init_adapter")
    check_ignored(recipe)
    if s.from_scratch:
        texts = (row[c] for d in dd.values() for c in ("prompt", "completion", "text") if c in d.column_names
                 for row in d.select_columns([c]))
        tok = modeling.build_word_tokenizer(texts)
        model = modeling.scratch_llama(tok, s.hidden_size, s.num_hidden_layers, s.num_attention_heads,
                                       s.intermediate_size, s.max_position_embeddings, seed=recipe.train.seed)
        return model, tok, get_peft_config(m)
    trust = recipe.train.trust_remote_code
    tok = modeling.load_tokenizer(m.model_name_or_path, trust_remote_code=trust, revision=m.model_revision)
    model = modeling.load_model(m.model_name_or_path, m.dtype, trust_remote_code=trust, revision=m.model_revision,
                                quantization=get_quantization_config(m))
    if adapter:
        return modeling.load_adapter(model, adapter, trainable=True), tok, None
    return model, tok, get_peft_config(m)


def check_quantization(recipe: Recipe) -> None:
    """QLoRA (``load_in_4bit``, or ``load_in_8bit``) loads the base model through bitsandbytes, which needs a CUDA
    GPU, and trains a LoRA on it."""
    what = "load_in_4bit (QLoRA)" if recipe.model.load_in_4bit else "load_in_8bit"
    if not torch.cuda.is_available():
        raise ConfigError(f"{what} needs a CUDA GPU (bitsandbytes); this machine has none: drop it, or train a LoRA "
                          "on the full-precision model (use_peft: true)")
    if recipe.scratch.from_scratch:
        raise ConfigError(f"{what} quantizes a trained model (model_name_or_path), not from_scratch")
    if not recipe.model.use_peft:
        raise ConfigError(f"{what} trains an adapter on the quantized model: set use_peft: true")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"{what} needs bitsandbytes: pip install 'posttrain[qlora]'") from None


@contextmanager
def rejections(method: str):
    """A method's own check (a ``ConfigError``) as one line that names the method; any other error is a bug and
    keeps its traceback."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(f"{method}: {str(e).strip().splitlines()[0]}") from None


def prepare(recipe: Recipe, method, dd: DatasetDict, names: dict[str, str]):
    """The method's data step on its splits, with the registry's columns only. Several eval splits
    (``dataset_eval_split: valid,test``) are each prepared by the step, as the eval role, and reach the trainer as
    a dict (the Trainer evaluates each, its metrics named ``eval_<split>_...``)."""
    evals = names["eval"].split(",") if names.get("eval") else [None]
    model_name = "" if recipe.scratch.from_scratch else recipe.model.model_name_or_path

    def step(eval_name):
        roles = {**names, "eval": eval_name} if eval_name else names
        columns = method.Trainer.reads.columns
        data = {role: split(dd, name, columns).select_columns(list(columns)) for role, name in roles.items()}
        with rejections(recipe.method):
            return method.prepare(data, recipe.train, model_name)

    if len(evals) == 1:
        return step(evals[0])
    parts = [step(name) for name in evals]
    return dataclasses.replace(parts[0], eval={name: part.eval for name, part in zip(evals, parts)})


def train(recipe_path: str, overrides: list[str] = (), command: list[str] | None = None) -> Path:
    """Run a recipe, or a pipeline's stages one after another; returns the (last) run directory.

    Every run is checked before the first one trains (``plan``). A run is written in ``.NAME.partial`` beside
    ``output_dir`` and renamed into place when complete. A run that stops (killed, interrupted, failed) after saving
    a checkpoint leaves that directory, and ``resume_from_checkpoint: true`` goes on from its last complete
    checkpoint (in a pipeline: the first stage that is not finished); one without a checkpoint leaves nothing.
    ``push_to_hub`` (with ``hub_model_id``) pushes the finished run as ``posttrain push`` does."""
    start = time.time()
    runs = plan(parse_stages(recipe_path, overrides))
    for run in runs:
        if run.reused:
            if PartialState().is_main_process:
                print(f"stage {run.recipe.stage}: using the finished run {run.recipe.train.output_dir} (same "
                      "settings)", file=sys.stderr)
            continue
        with in_stage(run.recipe.stage):
            fit(run, command or sys.argv, start)
        start = time.time()
    return Path(runs[-1].recipe.train.output_dir)


@dataclasses.dataclass
class Run:
    """One run of a recipe (a pipeline's stage), checked: what ``fit`` trains from."""

    recipe: Recipe
    method: ModuleType
    settings: str  # a digest of the resolved settings (``settings_digest``)
    reused: bool = False  # a pipeline's finished stage of the same settings: not trained again
    names: dict[str, str] = dataclasses.field(default_factory=dict)  # role -> split
    dd: DatasetDict | None = None
    prepared: Prepared | None = None
    resume: str | None = None
    hub: Hub | None = None


def plan(recipes: list[Recipe]) -> list[Run]:
    """Check every run before any trains: its settings (parsed already), output directory, tracker, hub target,
    resume point, splits and their columns, and the method's data step on them, whose result ``fit`` trains on. A
    pipeline's stage other than the last whose directory holds a finished run of the same settings is reused (a
    pipeline that failed in stage 2 goes on at stage 2). ``resume_from_checkpoint: true`` resumes the first stage
    that trains; the stages after it start afresh."""
    check_launch(recipes[0].train)
    runs, loaded, before = [], {}, None  # before: the stage that trains ahead of this one
    for i, recipe in enumerate(recipes):
        args, final = recipe.train, Path(recipe.train.output_dir)
        run = Run(recipe, get_method(recipe.method), settings_digest(recipe))
        runs.append(run)
        if i < len(recipes) - 1 and finished_settings(final) == run.settings:
            run.reused = True
            continue
        with in_stage(recipe.stage):
            check_output(final, args.overwrite_output_dir)
            check_report_to(args.report_to)
            run.hub = hub_target(args)
            if before is None or str(args.resume_from_checkpoint).lower() != "true":
                run.resume = resume_point(args.resume_from_checkpoint, final)
            if before is not None and run.resume is not None:
                raise UsageError(f"resume_from_checkpoint {run.resume}: stage {before} trains first, so this stage "
                                 f"starts afresh; resume it alone (--stage {recipe.stage})")
            run.names = split_names(recipe, run.method.Trainer.reads)
            path = recipe.data.dataset_path
            run.dd = loaded[path] = loaded[path] if path in loaded else load_data(path)
            run.prepared = prepare(recipe, run.method, run.dd, run.names)
        before = recipe.stage
    return runs


VOLATILE = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint", "local_rank")  # not what a run learns


def settings_digest(recipe: Recipe) -> str:
    """A digest of a run's resolved settings (method, data, model, training), but where it goes, whether it may
    replace or resume a run, and the process's rank."""
    settings = {"method": recipe.method, **{k: v for part in (recipe.data, recipe.scratch, recipe.model)
                                            for k, v in dataclasses.asdict(part).items()}, **recipe.train.to_dict()}
    text = json.dumps({k: v for k, v in settings.items() if k not in VOLATILE}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_settings(final: Path) -> str | None:
    """The settings digest of the finished pipeline stage at ``final``, if one is there."""
    try:
        return (json.loads((final / "run.json").read_text()).get("pipeline") or {}).get("settings")
    except (OSError, ValueError):
        return None


@contextmanager
def in_stage(stage: str | None):
    """Bad input in a pipeline's stage, as one line that names the stage."""
    try:
        yield
    except UsageError as e:
        if stage is None:
            raise
        raise type(e)(f"stage {stage}: {e}") from None


def fit(run: Run, command: list[str], start: float) -> Path:
    """Train one checked run into its directory."""
    recipe, method, resume, hub = run.recipe, run.method, run.resume, run.hub
    args = recipe.train
    final = Path(args.output_dir)
    partial = partial_dir(final)
    in_partial = resume is not None and Path(resume).resolve().parent == partial.resolve()
    with atomic_dir(final, tmp_name=partial.name, main=PartialState().is_main_process, resume=in_partial,
                    keep_if=complete_checkpoints) as tmp:
        args.output_dir = str(tmp)
        if PartialState().is_main_process:
            shutil.rmtree(tmp / TRAIN_DATA, ignore_errors=True)
            DatasetDict(run.prepared.splits()).save_to_disk(str(tmp / TRAIN_DATA))
        model, tok, peft_config = build_model(recipe, run.dd)
        with rejections(recipe.method):
            trainer = method.Trainer(model=model, args=args, train_dataset=run.prepared.train,
                                     eval_dataset=run.prepared.eval, processing_class=tok, peft_config=peft_config)
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(tmp))
        args.output_dir = str(final)
        if trainer.accelerator.is_main_process:
            # the Trainer pickles its arguments beside the weights; run.json has them resolved (checkpoints keep it)
            (tmp / TRAINING_ARGS_NAME).unlink(missing_ok=True)
            tok.save_pretrained(str(tmp))
            config = {"method": recipe.method, "recipe": recipe.path,
                      **{k: v for part in (recipe.data, recipe.scratch, recipe.model)
                         for k, v in dataclasses.asdict(part).items()},
                      **args.to_dict()}
            info = run_info(command, config, args.seed, time.time() - start)
            info["train_data"] = {"path": TRAIN_DATA, "splits": run.names, "rows": len(run.prepared.train),
                                  **run.prepared.stats}
            info["eval_settings"] = args.eval_settings()  # read back by `posttrain eval` (evaluate.trained_settings)
            info["train_metrics"] = result.metrics
            info["log_history"] = trainer.state.log_history
            info["resumed_from"] = resume
            info["hub"] = hub and {"repo_id": hub.repo_id, "private": hub.private, "revision": hub.revision}
            info["distributed"] = {"type": trainer.accelerator.distributed_type.value,
                                   "num_processes": trainer.accelerator.num_processes}
            info["pipeline"] = recipe.stage and {"recipe": recipe.pipeline, "stages": list(recipe.stages),
                                                 "stage": recipe.stage, "settings": run.settings}
            write_json(tmp / "run.json", info)
        trainer.accelerator.wait_for_everyone()
    if hub and PartialState().is_main_process:
        from posttrain.push import push

        push(final, hub.repo_id, private=hub.private, revision=hub.revision, token=hub.token)
    return final


def check_report_to(report_to: list[str]) -> None:
    """An experiment tracker named in ``report_to`` that is not installed: one line, before any work (HF raises
    at the trainer's construction)."""
    from transformers.integrations import get_available_reporting_integrations

    missing = [name for name in report_to if name not in ("all", "none", *get_available_reporting_integrations())]
    if missing:
        raise UsageError(f"report_to {missing[0]}: {missing[0]} is not installed (pip install {missing[0]})")


@dataclasses.dataclass
class Hub:
    repo_id: str
    private: bool
    revision: str | None
    token: str | None = dataclasses.field(default=None, repr=False)


def hub_target(args) -> Hub | None:
    """TRL's ``push_to_hub`` / ``hub_model_id`` / ``hub_private_repo`` / ``hub_revision``: posttrain pushes the
    finished run once, as ``posttrain push`` does, so the Trainer's own per-save pushing is switched off. The token
    is checked before training, so that a missing one does not cost a run."""
    if not args.push_to_hub:
        return None
    if not args.hub_model_id:
        raise UsageError("push_to_hub needs hub_model_id ORG/NAME")
    from huggingface_hub import get_token

    from posttrain.push import check_repo_id

    check_repo_id(args.hub_model_id, "hub_model_id")  # the check `posttrain push` makes, before training

    if not (args.hub_token or get_token()):
        raise UsageError("push_to_hub: no Hugging Face token (set HF_TOKEN, or run `hf auth login`)")
    target = Hub(args.hub_model_id, bool(args.hub_private_repo), args.hub_revision, args.hub_token)
    args.push_to_hub = False
    return target
