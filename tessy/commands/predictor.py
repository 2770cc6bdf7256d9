"""`tessy predictor train` and `tessy predictor eval`: learned boundary predictors."""

from __future__ import annotations

import json
from pathlib import Path

from tessy.commands.common import OK, add_fields, given, rich_console


def add_parser(sub) -> None:
    """The `predictor` subparser of `sub`."""
    from tessy.predictors.learned import TrainConfig

    p = sub.add_parser("predictor", help="train and evaluate learned boundary predictors")
    psub = p.add_subparsers(dest="predictor_command", required=True)
    q = psub.add_parser("train", help="train a token classifier on annotated segments (B_S: --source student)")
    add_fields(q, TrainConfig, required=("data", "out"))
    q.add_argument("--config", help="a config file whose `predictor_train:` section gives the options no flag gives "
                                    "(configs/predictor-release.yaml)")
    q.set_defaults(func=run_train)
    q = psub.add_parser("eval", help="score predictors against annotated segments, side by side")
    q.add_argument("--data", required=True, help="annotated segments JSONL")
    q.add_argument("--predictor", action="append", required=True, help="lexicon or a checkpoint directory (repeatable)")
    q.add_argument("--source", choices=["student", "teacher"], help="only this role's segments")
    q.add_argument("--json", help="write {predictor: metrics} here")
    q.set_defaults(func=run_eval)


def run_train(args) -> int:
    from tessy.config import command_section
    from tessy.predictors.learned import TrainConfig, train_predictor
    from tessy.typed import load

    config = load(TrainConfig, command_section(args.config, "predictor_train"),
                  f"{args.config}: predictor_train" if args.config else "tessy predictor train",
                  given(args, TrainConfig))
    meta = train_predictor(config, log=rich_console().print)
    saved = meta["epochs"][meta["saved_epoch"] - 1]
    print(f"saved {args.out} (role {meta['role']}, {meta['n_train']} train / {meta['n_eval']} held out, "
          f"{meta['train_s']} s), epoch {meta['saved_epoch']} ({meta['keep']}); held-out "
          f"{meta['metric']} {saved.get(meta['metric'], '-')}, style F1 {saved.get('style_f1', '-')}, "
          f"boundary exact {saved.get('boundary_exact', '-')}")
    return OK


def run_eval(args) -> int:
    from tessy.predictors import load_predictor
    from tessy.predictors.scoring import evaluate, results_table
    from tessy.predictors.segments import read_segments

    rows = read_segments(args.data, args.source)
    if not rows:
        raise ValueError(f"{args.data}: no annotated segments" + (f" from the {args.source}" if args.source else ""))
    results = {}
    for spec in args.predictor:
        predictor = load_predictor(spec)
        results[spec if spec == "lexicon" else predictor.name] = evaluate(predictor, rows)
    rich_console().print(results_table(
        results, f"{args.data} ({len(rows)} segments{', ' + args.source if args.source else ''})"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return OK
