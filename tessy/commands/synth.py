"""`tessy synth`: synthesize an SFT dataset with the cooperative loop."""

from __future__ import annotations

import json
from pathlib import Path

from tessy.commands.common import add_fields, allow_errors, count, failed_ids, given, rich_console


def add_parser(sub) -> None:
    """The `synth` subparser of `sub`."""
    from tessy.config import SynthConfig

    p = sub.add_parser("synth", help="synthesize an SFT dataset with the cooperative loop (Algorithm 1)")
    p.add_argument("--config", help="YAML config (see `tessy config`); default: the embedded models")
    p.add_argument("--prompts", required=True, help="JSONL with `id` and `prompt` or `messages`")
    p.add_argument("--out", required=True, help="output JSONL; the config is saved beside it; a rerun resumes")
    p.add_argument("--limit", type=count, help="only the first N prompts")
    # The config's own fields (a flag overrides the --config file); roles' settings stay in the file.
    add_fields(p, SynthConfig, skip=("student", "teacher", "style_phrases", "profiles"))
    p.add_argument("--summary-json", help="also write the summary as JSON here")
    p.add_argument("--student-url", action="append", metavar="URL",
                   help="serve the student from this OpenAI-compatible server (base URL ending in /v1; repeat for "
                   "several); its tokenizer, profile and sampling stay from the config")
    p.add_argument("--teacher-url", action="append", metavar="URL", help="the same for the teacher")
    p.add_argument("--shard", metavar="i/N", help="run only shard i of N (0-based; split by a hash of the id)")
    p.add_argument("--retry-errors", action="store_true",
                   help="run only the ids in OUT's errors file that are not done yet")
    allow_errors(p, "ids failed for good (written to OUT's errors file)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tessy.config import SynthConfig, load_config
    from tessy.engine.synth import synthesize

    # A role's URLs move only its generation to the servers; its tokenizer, profile and sampling stay.
    roles = {role: {"backend": "openai", "urls": list(urls)}
             for role, urls in (("student", args.student_url), ("teacher", args.teacher_url)) if urls}
    config = load_config(args.config, **given(args, SynthConfig), **roles)
    shard = None
    if args.shard:
        from tessy.engine.shards import parse_shard

        shard = parse_shard(args.shard)
    summary = synthesize(config, args.prompts, args.out, limit=args.limit, console=rich_console(), shard=shard,
                         retry_errors=args.retry_errors)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    return failed_ids(summary["errors_left"], summary["errors_file"], args.allow_errors)
