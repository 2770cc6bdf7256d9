"""`tessy export`: write records in a training format, or as a folder for the Hugging Face Hub."""

from __future__ import annotations

import sys
from pathlib import Path

from tessy.commands.common import FAILED, OK


def add_parser(sub) -> None:
    """The `export` subparser of `sub`."""
    from tessy.dataset.export import FORMATS as EXPORT_FORMATS  # light: json and pathlib only

    p = sub.add_parser("export",
                       help="write records as the release's dialogs, LLaMA-Factory's sharegpt, or Parquet for TRL")
    p.add_argument("records", help="records JSONL (tessy synth or merge output)")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                   help="dialogs: JSONL {id_ddm, dialogs}; sharegpt: JSONL {conversations, system, id}; "
                   "parquet: columns id, messages, prompt, answer, method; hub: a folder for the Hugging Face Hub "
                   "(that Parquet under data/, a dataset card README.md, the config, the filter report)")
    p.add_argument("--out", required=True, help="file to write (hub: folder)")
    p.add_argument("--license", help="hub: the card's license, a Hub license id such as apache-2.0 (default: other, "
                   "with a note that the models' licenses apply)")
    p.add_argument("--push-to-hub", metavar="REPO", help="hub: then upload the folder to this dataset repo "
                   "(USER/NAME), with the token in HF_TOKEN; private unless --public")
    p.add_argument("--public", action="store_true", help="with --push-to-hub: create the repo public")
    p.set_defaults(func=run)


def run(args) -> int:
    from tessy.dataset.export import PushError, check_push, export, push_to_hub

    hub = args.format == "hub"
    for flag, value in (("--push-to-hub", args.push_to_hub), ("--license", args.license)):
        if value and not hub:
            raise ValueError(f"{flag} goes with --format hub (a folder with a dataset card)")
    if args.public and not args.push_to_hub:
        raise ValueError("--public goes with --push-to-hub")
    if args.push_to_hub:
        check_push(args.push_to_hub)  # a bad name or no token: refused before anything is written
    summary = export(args.records, args.format, args.out, **({"license": args.license, "repo": args.push_to_hub}
                                                              if hub else {}))
    skipped = summary["skipped"]
    line = f"wrote {summary['written']} records to {summary['out']} ({summary['format']})"
    if skipped:
        line += (f"; skipped {len(skipped)} with an error: {', '.join(skipped[:10])}"
                 + (" ..." if len(skipped) > 10 else ""))
    print(line)
    if not hub:
        return OK
    print(f"  files: {', '.join(summary['files'])} (README.md is the dataset card)")
    for warning in summary["warnings"]:
        print(f"  card warning: {warning}")
    if not args.push_to_hub:
        print(f"  not pushed; to push: tessy export {args.records} --format hub --out {args.out} "
              "--push-to-hub USER/NAME")
        return OK
    try:
        url = push_to_hub(Path(args.out), args.push_to_hub, args.public)
    except PushError as e:
        print(f"tessy: error: not pushed: {e}\n  the folder stays at {args.out}; push it later with this command "
              f"again, or `hf upload {args.push_to_hub} {args.out} . --repo-type dataset"
              f"{'' if args.public else ' --private'}`", file=sys.stderr)
        return FAILED
    print(f"  pushed to {url} ({'public' if args.public else 'private'} if it was new; an existing repo keeps "
          "its visibility)")
    return OK
