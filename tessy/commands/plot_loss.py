"""`tessy plot-loss`: overlay the loss curves of several SFT runs."""

from __future__ import annotations

from tessy.commands.common import OK


def add_parser(sub) -> None:
    """The `plot-loss` subparser of `sub`."""
    p = sub.add_parser("plot-loss", help="overlay the loss curves of several SFT runs (paper, Figure 15)")
    p.add_argument("logs", nargs="+", help="train_log.json files written by tessy sft")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--labels", nargs="+", help="one label per log (default: the run directory names)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tessy.sft import plot_loss

    print(f"wrote {plot_loss(args.logs, args.out, args.labels)}")
    return OK
