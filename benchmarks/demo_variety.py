"""How varied the demo's thinking is, and how often both models wrote some of it.

Reads a records file of `tessy synth` (or runs the demo first with `--run`) and prints:
- per record, the zlib compression ratio of its thinking, len(zlib(text)) / len(text) in UTF-8
  bytes: text that loops compresses well (a low ratio); ordinary English of a few hundred words
  sits near 0.55. It does not depend on the repetition guard, so it also sees loops the guard
  let through;
- the median of those ratios (the demo's target: at least 0.45);
- how many samples ended on the repetition guard (`stats.stop_reason == "repetition"`);
- how many records hold non-blank thinking from both models (think segments of each source).

    .venv/bin/python benchmarks/demo_variety.py runs/demo/records.jsonl
    .venv/bin/python benchmarks/demo_variety.py /tmp/demo/records.jsonl --run [--limit N] [--config C]

What it does not show: whether the thinking is any good. A high ratio says the text does not
repeat itself, not that it reasons correctly.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from tessy.engine.records import read_records
from tessy.engine.variety import compression_ratio, thinking_text

DEMO_PROMPTS = Path(__file__).resolve().parent.parent / "tessy" / "data" / "demo_prompts.jsonl"


def has_both_thinkers(record: dict) -> bool:
    """Whether the student and the teacher each wrote non-blank thinking in the record."""
    sources = {s["source"] for s in record["segments"] if s["part"] == "think" and s["text"].strip()}
    return {"student", "teacher"} <= sources


def measure(records: list[dict]) -> dict:
    """{"ratios": {id: ratio}, "median_ratio", "guard_stops", "both_sources", "samples"}."""
    ratios = {r["id"]: compression_ratio(thinking_text(r)) for r in records}
    return {
        "samples": len(records),
        "median_ratio": round(statistics.median(ratios.values()), 3) if ratios else 0.0,
        "ratios": ratios,
        "guard_stops": sum(r["stats"]["stop_reason"] == "repetition" for r in records),
        "both_sources": sum(has_both_thinkers(r) for r in records),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("records", help="records file of `tessy synth`")
    parser.add_argument("--run", action="store_true", help="first run the demo into RECORDS (resumes)")
    parser.add_argument("--limit", type=int, help="with --run: only the first N demo prompts")
    parser.add_argument("--config", help="with --run: a YAML config for `tessy synth`")
    args = parser.parse_args(argv)
    if args.run:
        tessy = str(Path(sys.executable).with_name("tessy"))
        cmd = [tessy, "synth", "--prompts", str(DEMO_PROMPTS), "--out", args.records]
        cmd += ["--limit", str(args.limit)] if args.limit else []
        cmd += ["--config", args.config] if args.config else []
        subprocess.run(cmd, check=True)
    records = read_records(args.records)
    result = measure(records)
    for rid, ratio in result["ratios"].items():
        record = next(r for r in records if r["id"] == rid)
        stop = record["stats"]["stop_reason"]
        print(f"{rid:>12}  ratio {ratio:.3f}  stop {stop:<16} both {has_both_thinkers(record)}")
    n = result["samples"]
    print(f"median zlib ratio of the thinking: {result['median_ratio']:.3f} over {n} records (target >= 0.45)")
    print(f"ended on the repetition guard: {result['guard_stops']} of {n}")
    print(f"non-blank thinking from both models: {result['both_sources']} of {n}")


if __name__ == "__main__":
    main()
