"""`tessy merge`: join shard outputs by id."""

from __future__ import annotations

from tessy.commands.common import INCOMPLETE, allow_errors, failed_ids, rich_console


def add_parser(sub) -> None:
    """The `merge` subparser of `sub`."""
    p = sub.add_parser("merge", help="join shard outputs by id; report missing and duplicated ids")
    p.add_argument("out", help="merged JSONL")
    p.add_argument("shards", nargs="+", help="shard output files")
    p.add_argument("--prompts", help="the prompts file: ids it has and no shard has are reported missing")
    allow_errors(p, "the only missing ids are ones that failed in a shard (its errors file)")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.table import Table

    from tessy.engine.shards import merge

    summary = merge(args.out, args.shards, args.prompts)
    table = Table(title="tessy merge", show_header=False)
    table.add_row("shards", str(len(summary["inputs"])))
    table.add_row("records", str(summary["records"]))
    for key in ("duplicates", "missing", "errors"):
        ids = list(summary[key])
        table.add_row(key, f"{len(ids)}"
                      + (f": {', '.join(ids[:10])}" + (" ..." if len(ids) > 10 else "") if ids else ""))
    if len(summary["config_hashes"]) > 1:
        table.add_row("config hashes",
                      "[red]" + ", ".join(summary["config_hashes"]) + " (shards made with different configs)")
    table.add_row("out", summary["out"])
    rich_console().print(table)
    failed = set(summary["errors"])
    if summary["duplicates"] or set(summary["missing"]) - failed:
        return INCOMPLETE
    return failed_ids(len(failed), "the shards' errors files", args.allow_errors)
