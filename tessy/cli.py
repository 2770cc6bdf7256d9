"""The `tessy` command: the parser assembled from `tessy.commands`, one module per command. Heavy
imports happen inside each command's `run`, so `--help` is instant.

Every command builds its configs through `tessy.typed.load`, so a value is checked the same way
whether it comes from a flag or from a config file, before any model loads. The exit codes a script
can rely on are `EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import sys

from tessy.commands import analyze, annotate, config, export, merge, plot_loss, predictor, serve, sft, show, synth
from tessy.commands import eval as eval_command
from tessy.commands import filter as filter_command
from tessy.commands.common import EXIT_CODES, FAILED, INCOMPLETE, INTERRUPTED, OK, USAGE  # noqa: F401  (tests' names)

COMMANDS = (synth, serve, merge, export, filter_command, analyze, config, show, annotate, predictor, sft, eval_command,
            plot_loss)  # the order of `tessy --help`


def build_parser() -> argparse.ArgumentParser:
    """The `tessy` parser; each command's subparser sets `func`, its `run`."""
    from tessy import __version__

    parser = argparse.ArgumentParser(
        prog="tessy",
        description="Teacher-student cooperation data synthesis (TESSY): the student writes the style tokens, "
        "the teacher writes the capability tokens.",
        epilog="exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"tessy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tessy.prompts import PromptFileError

    try:
        return args.func(args)
    except (PromptFileError, FileNotFoundError, ValueError) as e:  # ConfigError, ConfigMismatchError included
        print(f"tessy: error: {e}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("tessy: interrupted (tessy synth, run again, resumes where it stopped)", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
