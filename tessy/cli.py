"""The `tessy` command. Heavy imports happen inside each command, so `--help` is instant."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def _console():
    from rich.console import Console

    return Console(stderr=False)


def cmd_synth(args) -> int:
    from tessy.config import load_config
    from tessy.synth import synthesize

    config = load_config(args.config, batch_size=args.batch_size)
    summary = synthesize(config, args.prompts, args.out, limit=args.limit, console=_console())
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    return 0


def cmd_config(args) -> int:
    from tessy.config import ModelConfig, SynthConfig

    print(f"# tessy synth config. Save it, edit it, run: tessy synth --config FILE --prompts P --out O")
    config = SynthConfig()
    for f in dataclasses.fields(SynthConfig):
        value = getattr(config, f.name)
        print(f"\n# {f.metadata['help']}")
        if isinstance(value, ModelConfig):
            print(f"{f.name}:")
            for g in dataclasses.fields(ModelConfig):
                print(f"  {g.name}: {json.dumps(getattr(value, g.name))}  # {g.metadata['help']}")
        else:
            print(f"{f.name}: {json.dumps(value)}")
    return 0


def cmd_show(args) -> int:
    from tessy.records import read_records
    from tessy.show import print_record, record_html

    records = read_records(args.file)
    if args.id is not None:
        records = [r for r in records if str(r["id"]) == args.id]
        if not records:
            print(f"no record with id {args.id!r} in {args.file}", file=sys.stderr)
            return 1
    if not records:
        print(f"{args.file} holds no records", file=sys.stderr)
        return 1
    print_record(records[0], _console())
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(record_html(records if args.id is None else records[:1]))
        print(f"wrote {args.html}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessy",
        description="Teacher-student cooperation data synthesis (TESSY): the student writes the style tokens, "
        "the teacher writes the capability tokens.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="synthesize an SFT dataset with the cooperative loop (Algorithm 1)")
    p.add_argument("--config", help="YAML config (see `tessy config`); default: the embedded models")
    p.add_argument("--prompts", required=True, help="JSONL with `id` and `prompt` or `messages`")
    p.add_argument("--out", required=True, help="output JSONL; the config is saved beside it; a rerun resumes")
    p.add_argument("--limit", type=int, help="only the first N prompts")
    p.add_argument("--batch-size", type=int, help="samples in flight at once (overrides the config)")
    p.add_argument("--summary-json", help="also write the summary as JSON here")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("config", help="print the full default config, with comments")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("show", help="print a record with student and teacher spans in two colours")
    p.add_argument("file", help="records JSONL")
    p.add_argument("--id", help="the record to show (default: the first)")
    p.add_argument("--html", help="also write the records (or the one --id) as an HTML page")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tessy.prompts import PromptFileError

    try:
        return args.func(args)
    except (PromptFileError, FileNotFoundError, ValueError) as e:
        print(f"tessy: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if type(e).__name__ == "ConfigMismatchError":
            print(f"tessy: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
