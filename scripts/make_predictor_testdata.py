"""Make the small annotated set the predictor tests train on: tests/data/predictor_segments.jsonl.

Fresh thinking from both embedded models (student smollm2-135m-instruct, teacher gemma3-270m,
default sampling) on the first 8 demo prompts (96 thinking tokens each), cut into 120 random
windows per source and annotated by the lexicon (weak labels; the paper uses the teacher with
Table 2, which a 270M teacher does poorly).
Run once; the output is committed:

    TESSY_CACHE=/tmp/tessy-cache .venv/bin/python scripts/make_predictor_testdata.py
"""

from pathlib import Path

from rich.console import Console

from tessy.predictors.annotate import AnnotateJob, run_annotate

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = Path("/tmp/predictor-testdata-prompts.jsonl")

if __name__ == "__main__":
    PROMPTS.write_text("".join(
        (ROOT / "tessy" / "data" / "demo_prompts.jsonl").read_text().splitlines(keepends=True)[:8]))
    job = AnnotateJob(
        out=str(ROOT / "tests" / "data" / "predictor_segments.jsonl"),
        sample=["student", "teacher"],
        prompts=str(PROMPTS),
        annotator="lexicon",
        n=120,
        min_words=4,
        max_words=24,
        sample_tokens=96,
        batch_size=8,
        seed=0,
    )
    run_annotate(job, Console())
