"""`tessy eval`: pass@1 on a benchmark, the code run in a sandbox."""

from __future__ import annotations

import sys

from tessy.commands.common import FAILED, OK, add_fields, allow_errors, given, json_flag, rich_console


def add_parser(sub) -> None:
    """The `eval` subparser of `sub`."""
    from tessy.config import ModelSpec
    from tessy.eval.evaluate import EvalConfig

    p = sub.add_parser("eval", help="pass@1 on humaneval or a benchmark JSONL; code runs in a sandbox")
    add_fields(p, EvalConfig, skip=("model", "urls"))
    p.add_argument("--out", help="directory for results.jsonl and summary.json")
    # The model: the same fields, help and defaults as a role of the synth config.
    model = p.add_argument_group("the model that samples (as a role of the synth config)")
    add_fields(model, ModelSpec)
    json_flag(model, ModelSpec, "chat_template_kwargs")
    p.add_argument("--url", dest="urls", action="append", help="openai backend: a base URL ending in /v1 (repeatable)")
    allow_errors(p, "samples could not be graded (a generation that failed, a sandbox that refused)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tessy.config import ModelSpec
    from tessy.eval.evaluate import EvalConfig, evaluate
    from tessy.typed import load

    own = {k: v for k, v in given(args, EvalConfig).items() if k != "model"}  # --model names the ModelSpec's model
    config = load(EvalConfig, {"model": {"model": ""}}, "tessy eval", {**own, "model": given(args, ModelSpec)},
                  nested={"model": ModelSpec})
    summary = evaluate(config, out=args.out, console=rich_console())
    return _ungraded(summary.get("ungraded", 0), args.allow_errors)


def _ungraded(n: int, allowed: bool) -> int:
    if not n:
        return OK
    print(f"tessy: {n} sample{'s' if n != 1 else ''} could not be graded (see the failures in the summary)"
          + ("" if allowed else f"; exit status {FAILED} (--allow-errors makes it 0)"), file=sys.stderr)
    return OK if allowed else FAILED
