"""`tessy show`: print a record with student and teacher spans in two colours."""

from __future__ import annotations

import sys
from pathlib import Path

from tessy.commands.common import INCOMPLETE, OK, rich_console


def add_parser(sub) -> None:
    """The `show` subparser of `sub`."""
    p = sub.add_parser("show", help="print a record with student and teacher spans in two colours")
    p.add_argument("file", help="records JSONL")
    p.add_argument("--id", help="the record to show (default: the first)")
    p.add_argument("--html", help="also write the records (or the one --id) as an HTML page")
    p.set_defaults(func=run)


def run(args) -> int:
    from tessy.dataset.show import print_record, record_html
    from tessy.engine.records import read_records

    records = read_records(args.file)
    if args.id is not None:
        records = [r for r in records if str(r["id"]) == args.id]
        if not records:
            print(f"no record with id {args.id!r} in {args.file}", file=sys.stderr)
            return INCOMPLETE
    if not records:
        print(f"{args.file} holds no records", file=sys.stderr)
        return INCOMPLETE
    print_record(records[0], rich_console())
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(record_html(records if args.id is None else records[:1]))
        print(f"wrote {args.html}")
    return OK
