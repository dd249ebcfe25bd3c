"""The ``posttrain`` command: gen, train, eval, demo."""

from __future__ import annotations

import argparse
import sys

from posttrain.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain", description=__doc__, allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gen", help="generate a dataset: posttrain gen kg --out DIR [--seed S --key value ...]",
                       allow_abbrev=False)
    g.add_argument("name")
    g.add_argument("--out", required=True)
    t = sub.add_parser("train", help="train a recipe: posttrain train RECIPE [--key value ...]", allow_abbrev=False)
    t.add_argument("recipe")
    e = sub.add_parser("eval", help="evaluate a model or run directory", allow_abbrev=False)
    e.add_argument("run", help="run directory or model directory")
    e.add_argument("--data", required=True, help="dataset directory written by `posttrain gen`")
    e.add_argument("--suite", default="qa", help="comma-separated suites: qa, hallucination")
    e.add_argument("--splits", default=None, help="comma-separated splits (default: all QA splits present)")
    e.add_argument("--limit", type=int, default=None, help="at most N questions per split")
    e.add_argument("--engine", default="auto", choices=["auto", "hf"])
    e.add_argument("--batch_size", type=int, default=128)
    e.add_argument("--output", default=None, help="output directory (default: RUN/eval)")
    d = sub.add_parser("demo", help="gen -> base model -> eval on the embedded testbed", allow_abbrev=False)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seed", type=int, default=0)
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

            print(gen(args.name, args.out, rest))
        elif args.command == "train":
            from posttrain.train import train

            print(train(args.recipe, rest, command=["posttrain", *argv]))
        elif args.command == "eval":
            from posttrain.evals.report import split_table
            from posttrain.evaluate import run_eval

            splits = args.splits.split(",") if args.splits else None
            out, results = run_eval(args.run, args.data, args.suite.split(","), splits, args.limit, args.engine,
                                    args.output, args.batch_size)
            for suite, res in results.items():
                print(f"{suite}:\n{split_table(res)}")
            print(f"wrote {out}")
        elif args.command == "demo":
            from posttrain.demo import demo

            demo(args.out, args.seed)
    except UsageError as e:
        print(f"posttrain: error: {e}", file=sys.stderr)
        return 2
    return 0
