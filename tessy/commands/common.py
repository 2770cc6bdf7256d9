"""What the commands share: the exit codes, the flags made from a dataclass's fields, argparse types.

Light (no torch, no rich at import), so `tessy --help` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

OK = 0
INCOMPLETE = 1  # merge: ids that no shard wrote, or wrote twice; show: no such record; filter: no record kept
USAGE = 2  # a bad flag, config value or input file: refused before any work
FAILED = 3  # synth and merge: ids that ended in an errors file; eval: samples that could not be graded;
#   serve: the server exited with an error; export --push-to-hub: the folder did not reach the hub
INTERRUPTED = 130  # Ctrl-C; a rerun of the same command resumes

EXIT_CODES = {OK: "success", INCOMPLETE: "incomplete output", USAGE: "bad input, nothing run",
              FAILED: "samples failed (see the errors file), or a server or the hub failed", INTERRUPTED: "interrupted"}


def rich_console():
    """A rich Console on stdout."""
    from rich.console import Console

    return Console(stderr=False)


def add_fields(parser, cls, skip: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> None:
    """One flag per field of dataclass `cls` (`--max-length` for `max_length`), with the field's type,
    choices and help (as TRL's HfArgumentParser does), so each default and help text lives once, on
    the field. A flag left out is None: the config file, then the dataclass, give the value."""
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = flag_type(hints[f.name])
        if f.name in skip or kind is None:
            continue
        text = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING and f.default not in (None, "") and kind is not bool:
            text += f" (default: {f.default})"
        options = {"dest": f.name, "default": None, "help": text, "required": f.name in required}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
            if "choices" in f.metadata:
                options["choices"] = f.metadata["choices"]
        parser.add_argument("--" + f.name.replace("_", "-"), **options)


def flag_type(hint):
    """The flag type of a field: int, float, str or bool (an optional one too); None for fields
    that only a config file can hold (mappings, lists, nested configs)."""
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [flag_type(a) for a in typing.get_args(hint) if a is not type(None)]
        kinds = [k for k in kinds if k is not None]
        return kinds[0] if kinds else None
    return hint if hint in (int, float, str, bool) else None


def given(args, cls) -> dict:
    """The flags of `cls`'s fields that were given."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def count(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def json_object(text: str) -> dict:
    """An argparse type: a JSON object, such as '{"reasoning_effort": "high"}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object")
    return value


def json_flag(parser, cls, name: str) -> None:
    """A flag for a mapping field of `cls` (which `add_fields` leaves to config files), given as a JSON
    object, with the field's own help."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    parser.add_argument("--" + name.replace("_", "-"), dest=name, type=json_object, default=None,
                        metavar="JSON", help=f.metadata["help"] + " (a JSON object)")


def allow_errors(parser, what: str) -> None:
    """The --allow-errors flag, whose help says `what` it lets pass."""
    parser.add_argument("--allow-errors", action="store_true",
                        help=f"exit 0 even when {what}; without it the exit status is {FAILED}")


def failed_ids(n: int, where: str, allowed: bool) -> int:
    """FAILED when `n` ids failed for good, unless --allow-errors; the count goes to stderr."""
    if not n:
        return OK
    print(f"tessy: {n} id{'s' if n != 1 else ''} failed for good (in {where})"
          + ("" if allowed else f"; exit status {FAILED} (--allow-errors makes it 0)"), file=sys.stderr)
    return OK if allowed else FAILED
