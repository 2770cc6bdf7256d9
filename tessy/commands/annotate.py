"""`tessy annotate`: cut thinking segments and annotate their style spans."""

from __future__ import annotations

import json
from pathlib import Path

from tessy.commands.common import OK, add_fields, given, rich_console


def add_parser(sub) -> None:
    """The `annotate` subparser of `sub`."""
    from tessy.predictors.annotate import AnnotateJob

    p = sub.add_parser("annotate", help="cut thinking segments and annotate their style spans (Table 2)")
    add_fields(p, AnnotateJob, skip=("records", "sample"), required=("out",))
    p.add_argument("--records", action="append", help="JSONL of synth records or generations (repeatable)")
    p.add_argument("--sample", choices=["student", "teacher", "both"],
                   help="also sample fresh thinking from these models")
    p.add_argument("--summary-json", help="also write the summary as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    from tessy.config import command_section
    from tessy.predictors.annotate import AnnotateJob, run_annotate
    from tessy.typed import load

    sample = ["student", "teacher"] if args.sample == "both" else [args.sample] if args.sample else None
    # The config file's `annotate:` section gives the options no flag gives (configs/predictor-release.yaml).
    job = load(AnnotateJob, command_section(args.config, "annotate"),
               f"{args.config}: annotate" if args.config else "tessy annotate",
               {**given(args, AnnotateJob), "sample": sample})
    summary = run_annotate(job, rich_console())
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    return OK
