"""`tessy config`: print the full default config, with comments."""

from __future__ import annotations

import dataclasses
import json

from tessy.commands.common import OK


def add_parser(sub) -> None:
    """The `config` subparser of `sub`."""
    p = sub.add_parser("config", help="print the full default config, with comments")
    p.set_defaults(func=run)


def run(args) -> int:
    from tessy.config import ROLE_KEYS, Recipe, RoleConfig, SynthConfig
    from tessy.typed import flat_keys

    print("# tessy synth config. Save it, edit it, run: tessy synth --config FILE --prompts P --out O")
    # The synth config, then the predictor recipe's sections that the same file can hold.
    for config in (SynthConfig(), Recipe()):
        data = config.to_dict() if isinstance(config, SynthConfig) else dataclasses.asdict(config)
        for f in dataclasses.fields(config):
            print(f"\n# {f.metadata['help']}")
            if isinstance(getattr(config, f.name), RoleConfig):
                keys = flat_keys(RoleConfig)
                print(f"{f.name}:")
                for key in ROLE_KEYS:
                    print(f"  {key}: {json.dumps(data[f.name][key])}  # {keys[key][0].metadata['help']}")
            else:
                print(f"{f.name}: {json.dumps(data[f.name])}")
    return OK
