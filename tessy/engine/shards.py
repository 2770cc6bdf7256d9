"""Shards: split one prompt set into independent jobs (`tessy synth --shard i/N`, a Slurm array or
Ray jobs), then join their outputs by id (`tessy merge`).

A prompt's shard depends on its id alone (a SHA-256 of it), so every job computes the same split on
any machine, and adding prompts to the file moves none of the old ones to another shard.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tessy.engine.records import errors_path_for, json_lines, read_errors


def parse_shard(spec: str) -> tuple[int, int]:
    """`"i/N"` -> (i, N), with 0 <= i < N (a Slurm array's `$SLURM_ARRAY_TASK_ID/N`)."""
    try:
        i, n = (int(part) for part in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"--shard {spec!r}: expected i/N, such as 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {spec!r}: need 0 <= i < N")
    return i, n


def shard_of(prompt_id: str, n: int) -> int:
    return int(hashlib.sha256(str(prompt_id).encode()).hexdigest()[:16], 16) % n


def select_shard(prompts: list, i: int, n: int) -> list:
    """The prompts of shard i of n, in file order."""
    return [p for p in prompts if shard_of(p.id, n) == i]


def merge(out: str | Path, inputs: list[str | Path], prompts: str | Path | None = None) -> dict:
    """Join shard outputs by id into `out`; report what is missing, duplicated or failed.

    Returns {"records", "out", "inputs", "duplicates": {id: [files]}, "missing": [ids],
    "errors": {id: error}, "config_hashes": [..]}. `missing` needs the prompts file; without it
    only ids left in the shards' error files are known to be missing.
    """
    from tessy.prompts import read_prompts

    out = Path(out)
    seen: dict[str, dict] = {}
    where: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    inputs = [p for p in map(Path, inputs) if not p.name.endswith(".errors.jsonl")]  # a shell glob may catch them
    for path in inputs:
        for _, record in json_lines(path, complete_only=True):  # not the half-written tail of a killed job
            rid = str(record["id"])
            where.setdefault(rid, []).append(str(path))
            seen.setdefault(rid, record)
        for rid, err in read_errors(errors_path_for(path)).items():
            errors[rid] = err.get("error", "")
    errors = {rid: e for rid, e in errors.items() if rid not in seen}
    order = list(seen)
    missing: list[str] = []
    if prompts is not None:
        ids = [p.id for p in read_prompts(prompts)]
        missing = [i for i in ids if i not in seen]
        extra = [i for i in order if i not in set(ids)]
        order = [i for i in ids if i in seen] + extra
    else:
        missing = sorted(errors)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rid in order:
            f.write(json.dumps(seen[rid], ensure_ascii=False) + "\n")
    tmp.replace(out)
    hashes = sorted({r.get("config_hash", "") for r in seen.values()})
    first_config = Path(inputs[0]).with_name(Path(inputs[0]).stem + ".config.yaml") if inputs else None
    if first_config is not None and first_config.exists() and len(hashes) <= 1:
        shutil.copyfile(first_config, out.with_name(out.stem + ".config.yaml"))
    return {
        "records": len(order),
        "out": str(out),
        "inputs": [str(p) for p in inputs],
        "duplicates": {rid: files for rid, files in where.items() if len(files) > 1},
        "missing": missing,
        "errors": errors,
        "config_hashes": hashes,
    }
