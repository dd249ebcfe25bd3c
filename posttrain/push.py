"""``posttrain push RUN --repo-id ORG/NAME``: stage a run for the Hugging Face Hub with a model card, and upload it.

Staged: the run's top-level files — the LoRA adapter (or, with ``--merge``, the adapter merged into its base model
with ``merge_and_unload`` and saved as safetensors) or the full model, the tokenizer, ``run.json`` — its ``eval/``
(as ``posttrain eval`` writes it) and a ``README.md`` model card in place of any README the run has. Not staged:
subdirectories (``train_data/``, checkpoints), hidden files and pickles (``training_args.bin``, ``*.bin``, ``*.pt``).
``--merge`` on a full model is an error: there is no adapter to merge.

The card (``huggingface_hub.ModelCard``) has in its metadata ``base_model`` (with ``base_model_relation``),
``library_name`` (``peft`` for an adapter, else ``transformers``), ``tags``, ``datasets`` and a ``model-index`` of
every finite scalar in ``eval/results.json``: one result per suite and split (task ``text-generation`` named after
the suite; dataset: the eval data, config: the suite, split: the split), each metric followed by its standard error
under lm-eval's name (``exact_match``, ``exact_match_stderr``). Its body: a usage snippet (PEFT for an adapter, a
transformers pipeline for a model), the evaluation tables (value ± standard error), the training data and recipe (as
YAML: the keys the recipe file and the command line set, with the values ``run.json`` records) and the versions.
``base_model`` and ``datasets`` name Hub repositories only: a local directory (the testbed's base model and data) is
described in the body instead, and ``--base_model ORG/NAME`` names the repository a local base was published to.
For a LoRA adapter ``--base_model`` is also written into the staged ``adapter_config.json`` as its
``base_model_name_or_path`` (the run's own keeps the local path it was trained from), so that PEFT finds the base on
the Hub; without it the staged adapter config names the local path, and the card says so. A run trained on a Hub
model refuses a ``--base_model`` naming another one.

Staging is atomic (a temporary sibling, then a rename) into ``--dry-run DIR``, which uploads nothing, or else
``RUN/hub``; an existing non-empty one is refused unless ``--overwrite_output_dir``. The upload goes through
``huggingface_hub`` at ``HF_ENDPOINT`` (``create_repo``: private with ``--private``, else the Hub's default
visibility; ``create_branch`` for a ``--revision`` other than main; ``upload_folder``) with the token
``huggingface_hub.get_token()`` finds (``HF_TOKEN``, else the login cache), never printed or written. No token,
offline mode, an unreachable endpoint and a 401 or 403 are one line (a ``UsageError``); the staged folder stays.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
from pathlib import Path

import yaml

from posttrain.core.errors import UsageError
from posttrain.core.progress import bar
from posttrain.core.runs import atomic_dir, check_output

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # never staged: safetensors only
DATA_FILES = (".json", ".jsonl", ".csv", ".parquet", ".arrow")
HIDDEN_SETTINGS = ("output_dir", "overwrite_output_dir")  # where the run was written, not how it was trained
STAGE = "hub"  # RUN/hub: the default staging directory


def hub_id(name: str | None, cwd: str | Path | None = None) -> str | None:
    """``name`` when it names a Hub repository (a valid ``ORG/NAME`` or ``NAME``) and not a local path (absolute,
    relative, existing here or under ``cwd``, the directory training ran in, or a data file name); else None."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not name or name.startswith((".", "~", "/")) or name.endswith(DATA_FILES):
        return None
    if Path(name).exists() or (cwd is not None and (Path(cwd) / name).exists()):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def check_repo_id(repo_id: str, flag: str = "--repo-id") -> None:
    """A Hub repository id ``ORG/NAME``; bad input otherwise."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UsageError(f"bad {flag} {repo_id!r}: {str(e).splitlines()[0]}") from None
    if repo_id.count("/") != 1:
        raise UsageError(f"bad {flag} {repo_id!r}: expected ORG/NAME (a user or organization, then the name)")


def run_kind(run: Path) -> str:
    """"adapter" (a LoRA run) or "model" (a full fine-tune); bad input otherwise."""
    if not run.is_dir():
        raise UsageError(f"run directory not found: {run}")
    if not (run / "run.json").is_file():
        raise UsageError(f"{run} is not a posttrain run directory (no run.json)")
    if (run / "adapter_config.json").is_file():
        if not (run / "adapter_model.safetensors").is_file():
            raise UsageError(f"LoRA run {run} has no adapter_model.safetensors (only safetensors are pushed)")
        return "adapter"
    if (run / "config.json").is_file():
        if not any(run.glob("*.safetensors")):
            raise UsageError(f"run {run} has no *.safetensors weights (only safetensors are pushed)")
        return "model"
    raise UsageError(f"{run} holds neither a LoRA adapter (adapter_config.json) nor a model (config.json)")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _data_name(spec: str) -> str:
    """A short name for eval data: a path's last component (a file's stem), or the split files' stems joined by +."""
    parts = [p.partition("=")[2] or p for p in spec.split(",")] if "=" in spec.split(",")[0] else [spec]
    return "+".join(Path(p.strip().rstrip("/")).stem or p for p in parts)


def eval_results(results: dict):
    """``huggingface_hub.EvalResult`` for every finite scalar metric of a ``posttrain eval`` results.json, each
    followed by its ``<metric>_stderr`` when that is finite."""
    from huggingface_hub import EvalResult

    name = _data_name(str(results.get("config", {}).get("data") or "eval"))
    out = []
    for key, result in results.get("results", {}).items():
        suite, _, split = key.partition("/")
        common = {"task_type": "text-generation", "task_name": suite, "dataset_type": name, "dataset_name": name,
                  "dataset_config": suite, "dataset_split": split or None}
        for metric, value in result.items():
            if metric == "n" or metric.endswith("_stderr") or not _finite(value):
                continue
            out.append(EvalResult(**common, metric_type=metric, metric_name=metric, metric_value=value))
            stderr = result.get(f"{metric}_stderr")
            if _finite(stderr):
                out.append(EvalResult(**common, metric_type=f"{metric}_stderr", metric_name=f"{metric} stderr",
                                      metric_value=stderr))
    return out


def recipe_settings(info: dict) -> dict:
    """The settings the run's recipe gave: the keys of its recipe file (``config.recipe``, relative to the
    directory training ran in) and the flags of its command, with the values ``run.json`` records (all resolved
    settings are in ``config``), then the model, adapter and step settings that shape the run whenever they are set
    (a run trained from Python records no flags); tokens and the output directory left out."""
    config, cwd = info.get("config", {}), Path(info.get("cwd") or ".")
    keys = ["method"]
    if config.get("recipe"):
        path = Path(config["recipe"])
        try:
            raw = yaml.safe_load((path if path.is_absolute() else cwd / path).read_text())
            keys += list(raw) if isinstance(raw, dict) else []
        except (OSError, yaml.YAMLError):
            pass
    keys += [arg[2:].partition("=")[0] for arg in info.get("command") or [] if str(arg).startswith("--")]
    keys += [k for k in ("model_name_or_path", "init_adapter") if config.get(k)]
    keys += ["use_peft", *(k for k, v in config.items() if k.startswith("lora_") and v is not None)] \
        if config.get("use_peft") else []
    keys += ["max_steps"] if (config.get("max_steps") or 0) > 0 else []
    return {k: config[k] for k in dict.fromkeys(keys)
            if k in config and k not in HIDDEN_SETTINGS and not k.endswith("token")}


def _table(results: dict) -> str:
    from posttrain.evals.report import split_table

    by_suite: dict[str, dict] = {}
    for key, result in results.get("results", {}).items():
        suite, _, split = key.partition("/")
        by_suite.setdefault(suite, {})[split or suite] = result
    return "\n\n".join(f"**{suite}**\n\n{split_table(res)}" for suite, res in by_suite.items())


def _first_prompt(eval_dir: Path) -> str:
    """The first prompt the run was evaluated on (an example in its own format), else "Hello"."""
    samples = eval_dir / "samples.jsonl"
    first = samples.open().readline().strip() if samples.is_file() else ""
    prompt = json.loads(first).get("prompt") if first else None
    return prompt if isinstance(prompt, str) else "Hello"


def _usage(repo_id: str, revision: str | None, adapter: bool, base: str, prompt: str) -> str:
    q = json.dumps  # a Python string literal in double quotes
    rev = f", revision={q(revision)}" if revision and revision != "main" else ""
    if adapter:
        return f"""```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained({q(base)})
model = PeftModel.from_pretrained(base, {q(repo_id)}{rev})
tokenizer = AutoTokenizer.from_pretrained({q(repo_id)}{rev})
inputs = tokenizer({q(prompt)}, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
print(tokenizer.decode(output[0], skip_special_tokens=True))
```"""
    return f"""```python
from transformers import pipeline

generator = pipeline("text-generation", model={q(repo_id)}{rev})
print(generator({q(prompt)}, max_new_tokens=16, do_sample=False)[0]["generated_text"])
```"""


def _manifest(path: str | None, cwd: Path) -> str:
    """ ", generated by `posttrain gen NAME` (seed S, fingerprint F)" when ``path`` is a `posttrain gen` directory."""
    for p in ([Path(path), cwd / path] if path else []):
        if (p / "manifest.json").is_file():
            m = json.loads((p / "manifest.json").read_text())
            return (f", generated by `posttrain gen {m.get('generator')}` (seed {m.get('seed')}, fingerprint "
                    f"`{str(m.get('fingerprint'))[:12]}`)")
    return ""


def model_card(run: Path, info: dict, repo_id: str, *, kind: str, merged: bool, base_model: str | None = None,
               revision: str | None = None):
    """The ``huggingface_hub.ModelCard`` of a run pushed as ``kind`` ("adapter" or "model"; ``merged``: a LoRA
    run merged into its base)."""
    from huggingface_hub import ModelCard, ModelCardData

    config, cwd = info.get("config", {}), Path(info.get("cwd") or ".")
    method = config.get("method", "sft")
    adapter = kind == "adapter" and not merged
    base = trained_on(run, info, kind)
    base_id = base_model or hub_id(base, cwd)
    data = config.get("dataset_path")
    data_paths = [p.partition("=")[2] or p for p in data.split(",")] if data else []
    datasets = [d for d in (hub_id(p.strip(), cwd) for p in data_paths) if d]
    results = json.loads((run / "eval" / "results.json").read_text()) if (run / "eval" / "results.json").is_file() \
        else None
    evals = eval_results(results) if results else []
    card_data = ModelCardData(
        base_model=base_id, library_name="peft" if adapter else "transformers", pipeline_tag="text-generation",
        tags=["posttrain", "trl", method, *(["lora"] if kind == "adapter" else [])], datasets=datasets or None,
        model_name=repo_id, eval_results=evals or None,
        base_model_relation=("adapter" if adapter else "finetune") if base_id else None)

    what = "A LoRA adapter" if adapter else "A model merged from a LoRA adapter and its base" if merged else "A model"
    if base is None:
        origin = "trained from scratch" if config.get("from_scratch") else "trained"
    elif base_id:
        origin = f"fine-tuned from [`{base_id}`](https://huggingface.co/{base_id})"
    else:
        origin = f"fine-tuned from the local model `{base}`"
    lines = [f"# {repo_id.split('/')[-1]}", "",
             f"{what}, {origin} with posttrain's `{method}` method (a TRL trainer).", ""]
    if base and not base_id:
        lines += [f"The base model `{base}` is a local directory, not a Hub repository: the metadata names no "
                  "`base_model`" + (", and `adapter_config.json` names that local path as its "
                                    "`base_model_name_or_path`, so PEFT cannot find the base from the Hub: load it "
                                    "yourself" if adapter else "") +
                  ". Publish it (`posttrain push BASE --repo-id ORG/NAME`) and push this run with "
                  "`--base_model ORG/NAME` to link it" + (" (written into the pushed adapter config), or push with "
                                                           "`--merge` for a standalone model." if adapter else "."), ""]
    elif adapter and base_model and base != base_model:
        lines += [f"Trained on `{base}`, published as `{base_model}`: `adapter_config.json` names `{base_model}` as "
                  "its `base_model_name_or_path`, so PEFT loads the base from the Hub.", ""]
    lines += ["## Usage", "", _usage(repo_id, revision, adapter, base_id or base or "", _first_prompt(run / "eval")),
              ""]
    lines += ["## Evaluation", ""]
    if results:
        ev = results.get("config", {})
        lines += [f"`posttrain eval` on `{ev.get('data')}` ({ev.get('engine')} engine; suites "
                  f"{', '.join(ev.get('suites') or [])}). Each mean is given as value ± standard error; the full "
                  "results, their settings and every sample are in `eval/` (`results.json`, `report.md`, "
                  "`samples.jsonl`).", "", _table(results), ""]
    else:
        lines += ["No evaluation was pushed: run `posttrain eval RUN --data DATA` before `posttrain push`.", ""]
    td = info.get("train_data") or {}
    lines += ["## Training", ""]
    if data:
        splits = ", ".join(f"`{name}` as {role}" for role, name in (td.get("splits") or {}).items())
        rows = f", {td['rows']} training rows" if "rows" in td else ""
        lines += [f"Data: `{data}`" + (f" ({splits}{rows})" if splits else "") + f"{_manifest(data, cwd)}.", ""]
    metrics = info.get("train_metrics") or {}
    if _finite(metrics.get("train_loss")):
        lines += [f"Final training loss {metrics['train_loss']:.4f}"
                  + (f" in {metrics['train_runtime']:.0f} s" if _finite(metrics.get("train_runtime")) else "")
                  + (f" (seed {info['seed']})" if info.get("seed") is not None else "") + ".", ""]
    command = info.get("command") or []
    if command[1:2] == ["train"]:
        lines += ["Command:", "", f"```bash\n{shlex.join(map(str, command))}\n```", ""]
    settings = recipe_settings(info)
    lines += [f"Recipe (`{config.get('recipe')}`: the settings it and the command line gave; every resolved setting "
              "is in `run.json`):", "", "```yaml", yaml.safe_dump(settings, sort_keys=False).rstrip(), "```", ""]
    versions = info.get("versions") or {}
    if versions:
        lines += ["## Framework versions", "", *(f"- {k}: {v}" for k, v in versions.items()), ""]
    if info.get("git_hash"):
        lines += [f"posttrain commit `{info['git_hash']}`.", ""]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


def trained_on(run: Path, info: dict, kind: str) -> str | None:
    """The base model the run was trained from, as it was given: the one its adapter config names (a LoRA run),
    else ``model_name_or_path`` (None for a model trained from scratch)."""
    from posttrain.core.modeling import adapter_base

    if kind == "adapter":
        return adapter_base(str(run))
    config = info.get("config", {})
    return None if config.get("from_scratch") else config.get("model_name_or_path")


def _name_base(staged: Path, base_model: str) -> None:
    """The staged adapter config with ``base_model`` (a Hub id) as its ``base_model_name_or_path``, every other key
    as it was."""
    path = staged / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_model
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _copy_run_files(run: Path, out: Path, skip: tuple[str, ...] = ()) -> None:
    """The run's top-level files (model or adapter, tokenizer, run.json) but pickles, hidden files, its README.md,
    ``skip`` and those ``out`` already has; no subdirectory (``train_data/``, checkpoints)."""
    for f in sorted(run.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.name != "README.md" and f.name not in skip \
                and not f.name.endswith(PICKLES) and not (out / f.name).exists():
            shutil.copy2(f, out / f.name)


def _merge_base(run: Path, info: dict) -> str:
    """The base model a LoRA run's adapter names: a Hub id, or a model directory (as given, or relative to the
    directory training ran in)."""
    from posttrain.core.modeling import adapter_base

    base = adapter_base(str(run))
    if not base:
        raise UsageError(f"--merge: the adapter config of {run} names no base model")
    if hub_id(base, info.get("cwd")):
        return base
    for path in (Path(base), Path(info.get("cwd") or ".") / base):
        if (path / "config.json").is_file():
            return str(path)
    raise UsageError(f"--merge: the base model {base} of {run} is not a model directory")


def _merge(run: Path, out: Path, base: str, trust_remote_code: bool) -> None:
    """Base model + the run's adapter, merged (``merge_and_unload``) and saved with safetensors into ``out``."""
    from posttrain.core import modeling

    try:
        model = modeling.load_model(base, "auto", trust_remote_code)
    except OSError as e:
        raise UsageError(f"--merge: cannot load the base model {base}: {str(e).strip().splitlines()[0]}") from None
    model = modeling.load_adapter(model, str(run), trainable=False).merge_and_unload()
    model.save_pretrained(str(out), safe_serialization=True)


def stage(run: str | Path, out: str | Path, repo_id: str, *, merge: bool = False, base_model: str | None = None,
          revision: str | None = None, overwrite: bool = False, progress: bool = True) -> Path:
    """Stage ``run`` for ``repo_id`` into ``out`` (atomically; an existing non-empty ``out`` only with
    ``overwrite``); returns ``out``."""
    run, out = Path(run), Path(out)
    kind = run_kind(run)
    check_repo_id(repo_id)
    if base_model is not None:
        check_repo_id(base_model, "--base_model")
    if merge and kind != "adapter":
        raise UsageError(f"--merge: {run} is a full model, not a LoRA adapter; there is nothing to merge (push it "
                         "without --merge)")
    resolved = out.resolve()
    if resolved == run.resolve() or run.resolve().is_relative_to(resolved):
        raise UsageError(f"the staging directory {out} would replace the run {run}; choose another one")
    info = json.loads((run / "run.json").read_text())
    hub_base = hub_id(trained_on(run, info, kind), info.get("cwd"))
    if base_model is not None and hub_base not in (None, base_model):
        raise UsageError(f"--base_model {base_model}: {run} was trained on the Hub model {hub_base}; drop "
                         "--base_model (it names where a local base model was published)")
    base = _merge_base(run, info) if merge else None
    check_output(out, overwrite)
    steps = [*(["merge"] if merge else []), "files", "eval", "model card"]
    with atomic_dir(out) as tmp:
        for step in bar(steps, progress, desc="stage", unit="step", leave=False):
            if step == "merge":
                _merge(run, tmp, base, bool(info.get("config", {}).get("trust_remote_code")))
            elif step == "files":
                _copy_run_files(run, tmp, skip=ADAPTER_FILES if merge else ())
                if kind == "adapter" and not merge and base_model:
                    _name_base(tmp, base_model)
            elif step == "eval" and (run / "eval").is_dir():
                shutil.copytree(run / "eval", tmp / "eval")
            elif step == "model card":
                model_card(run, info, repo_id, kind=kind, merged=merge, base_model=base_model,
                           revision=revision).save(tmp / "README.md")
    return out


def repo_url(repo_id: str, revision: str | None = None) -> str:
    """Where the pushed repository (or its branch) is shown, at ``HF_ENDPOINT``."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{repo_id}" + (f"/tree/{revision}" if revision and revision != "main" else "")


def upload(staged: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
           commit_message: str | None = None, token: str | None = None) -> str:
    """Upload a staged folder to ``repo_id`` (created when missing; private with ``private``, otherwise the Hub's
    default visibility) on branch ``revision`` (created from main when missing); returns the commit's URL. The
    token is ``token``, else ``huggingface_hub.get_token()``'s."""
    import httpx2
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    kept = f"the staged files are kept in {staged}"
    if constants.is_offline_mode():
        raise UsageError(f"HF_HUB_OFFLINE is set: unset it to upload ({kept})")
    token = token or get_token()
    if not token:
        raise UsageError(f"no Hugging Face token: set HF_TOKEN or log in with `hf auth login` ({kept})")
    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    message = commit_message or f"Upload {Path(staged).name} with posttrain push"
    try:
        api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(staged), revision=revision,
                                 commit_message=message)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise UsageError(f"the Hub at {api.endpoint} rejected the token (401 Unauthorized): check HF_TOKEN or "
                             f"`hf auth login` ({kept})") from None
        if status == 403:
            raise UsageError(f"the Hub at {api.endpoint} refused to write to {repo_id} (403 Forbidden): the token "
                             f"needs write access to that namespace ({kept})") from None
        raise
    except (httpx2.TransportError, OfflineModeIsEnabled) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot reach the Hub at {api.endpoint}: {detail} ({kept})") from None
    return info.commit_url


def push(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         merge: bool = False, dry_run: str | Path | None = None, overwrite: bool = False,
         commit_message: str | None = None, base_model: str | None = None, token: str | None = None,
         progress: bool = True) -> Path:
    """Stage ``run_dir`` (a `posttrain train` run) and upload it to ``repo_id``; returns the staged folder:
    ``dry_run`` (then nothing is uploaded) or ``run_dir/hub``. The staged folder stays, also when the upload fails.
    """
    out = Path(dry_run) if dry_run is not None else Path(run_dir) / STAGE
    staged = stage(run_dir, out, repo_id, merge=merge, base_model=base_model, revision=revision,
                   overwrite=overwrite, progress=progress)
    if dry_run is None:
        upload(staged, repo_id, private=private, revision=revision, token=token,
               commit_message=commit_message or f"Upload run {Path(run_dir).resolve().name} with posttrain push")
    return staged
