"""`tessy filter`: choose the records to publish."""

from __future__ import annotations

import dataclasses
import sys

from tessy.commands.common import INCOMPLETE, OK, add_fields, given, rich_console


def add_parser(sub) -> None:
    """The `filter` subparser of `sub`."""
    from tessy.dataset.filter import FilterJob

    p = sub.add_parser("filter", help="choose the records to publish: passed, not in a benchmark, not duplicated; "
                       "kept lines unchanged, every drop counted in KEPT.filter.json")
    p.add_argument("records", help="records JSONL (tessy synth or merge output)")
    add_fields(p, FilterJob, skip=("records", "decontaminate", "verdicts", "grade"), required=("out",))
    correct = p.add_mutually_exclusive_group()
    for name in ("verdicts", "grade"):
        f = next(f for f in dataclasses.fields(FilterJob) if f.name == name)
        correct.add_argument("--" + name, dest=name, metavar="RESULTS" if name == "verdicts" else "BENCHMARK",
                             help=f.metadata["help"])
    p.add_argument("--decontaminate", nargs="+", metavar="BENCHMARK",
                   help=next(f for f in dataclasses.fields(FilterJob) if f.name == "decontaminate").metadata["help"])
    p.set_defaults(func=run)


def run(args) -> int:
    from tessy.dataset.filter import FilterJob, filter_path_for, run_filter
    from tessy.typed import load

    job = load(FilterJob, {}, "tessy filter", {**given(args, FilterJob), "records": args.records})
    report = run_filter(job, console=rich_console())
    if not report["counts"]["kept"]:
        print(f"tessy: no record of {job.records} was kept, so {job.out} is not written (the reasons are in "
              f"{filter_path_for(job.out)}); exit status {INCOMPLETE}", file=sys.stderr)
        return INCOMPLETE
    return OK
