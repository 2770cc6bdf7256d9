#!/usr/bin/env bash
# Makes the example report: four datasets from the shipped prompts, then `tessy analyze`.
# Run from the repository root: bash examples/report/make_report.sh   (2 CPU cores: about 15 minutes)
set -euo pipefail
export TESSY_CACHE="${TESSY_CACHE:-$HOME/.cache/tessy}"
TESSY="${TESSY:-.venv/bin/tessy}"
DIR=examples/report
LIMIT="${LIMIT:-20}"  # all 20 shipped prompts; fewer for a quicker report
for method in student-only teacher-only tessy teacher-mix; do
  "$TESSY" synth --config "$DIR/config.yaml" --method "$method" \
    --prompts tessy/data/demo_prompts.jsonl --limit "$LIMIT" --out "$DIR/data/$method.jsonl" \
    --summary-json "$DIR/data/$method.summary.json"
done
"$TESSY" analyze "$DIR/data/student-only.jsonl" "$DIR/data/teacher-only.jsonl" \
  "$DIR/data/teacher-mix.jsonl" "$DIR/data/tessy.jsonl" --config "$DIR/config.yaml" --out "$DIR"
