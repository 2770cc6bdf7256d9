"""`tessy sft`: fine-tune the student on records with TRL."""

from __future__ import annotations

from tessy.commands.common import OK, add_fields, given, rich_console


def add_parser(sub) -> None:
    """The `sft` subparser of `sub`."""
    from tessy.sft import SFTRunConfig

    p = sub.add_parser("sft", help="fine-tune the student on records with TRL (loss on assistant tokens only)")
    p.add_argument("--config", help="YAML of these options, keys with _ (configs/sft-qwen3-8b.yaml); flags override it")
    add_fields(p, SFTRunConfig)  # data, model and out: here or in --config
    p.set_defaults(func=run)


def run(args) -> int:
    from tessy.sft import SFTRunConfig, load_sft_config, train

    train(load_sft_config(args.config, **given(args, SFTRunConfig)), console=rich_console())
    return OK
