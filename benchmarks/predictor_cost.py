"""What the boundary predictors cost inside the loop, as a share of its time, on the embedded default.

One process, the embedded default models loaded once (student smollm2-135m-instruct, teacher
gemma3-270m, the default config's sampling and budgets), the same N demo prompts and batch size,
run twice by `tessy.engine.synth.synthesize`:
1. B_S and B_T = the lexicon;
2. B_S and B_T = a learned predictor (a checkpoint given with --predictor, else one trained here on
   tests/data/predictor_segments.jsonl: smollm2-135m base, 1 epoch; its accuracy is not the point).
For each run it prints the summary's timing.predict_s, timing.generate_s and wall time, the
predictor's share of the loop's time (predict_s / wall_s), and predict_s per boundary call.

    TESSY_CACHE=/tmp/tessy-cache .venv/bin/python benchmarks/predictor_cost.py [--n 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="demo prompts per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-think-tokens", type=int, default=256)
    parser.add_argument("--predictor", help="a checkpoint from `tessy predictor train` (default: train one here)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    import torch

    from tessy.config import load_config
    from tessy.engine.synth import load_backends, synthesize
    from tessy.predictors.learned import TrainConfig, train_predictor

    work = Path(tempfile.mkdtemp(prefix="predictor-cost-"))
    predictor = args.predictor
    if predictor is None:
        predictor = str(work / "b_s")
        t = time.perf_counter()
        train_predictor(TrainConfig(data=str(ROOT / "tests" / "data" / "predictor_segments.jsonl"), out=predictor,
                                    source="student", epochs=1, max_length=64, device="cpu"), log=lambda _: None)
        print(f"trained a predictor for the benchmark in {time.perf_counter() - t:.0f} s: {predictor}")

    base = load_config(batch_size=args.batch_size, max_think_tokens=args.max_think_tokens)
    backends = load_backends(base)
    prompts = ROOT / "tessy" / "data" / "demo_prompts.jsonl"
    results = {}
    for label, spec in (("lexicon", "lexicon"), ("learned", predictor)):
        config = dataclasses.replace(base, student_predictor=spec, teacher_predictor=spec)
        summary = synthesize(config, prompts, work / f"{label}.jsonl", limit=args.n, backends=backends, progress=False)
        timing, wall = summary["timing"], summary["wall_s"]
        boundaries = sum(r["stats"]["rounds"] for r in map(json.loads, open(work / f"{label}.jsonl")))
        results[label] = {
            "samples": summary["samples"],
            "wall_s": wall,
            "generate_s": timing["generate_s"],
            "predict_s": timing["predict_s"],
            "predict_share_of_loop": round(timing["predict_s"] / wall, 4) if wall else 0.0,
            "boundary_calls": boundaries,  # one per round (Algorithm 1, line 9)
            "predict_ms_per_boundary": round(1000 * timing["predict_s"] / max(boundaries, 1), 2),
        }
    results["setup"] = {"n_prompts": args.n, "batch_size": args.batch_size, "max_think_tokens": args.max_think_tokens,
                        "predictor": predictor, "torch_threads": torch.get_num_threads(),
                        "device": "cuda" if torch.cuda.is_available() else "cpu"}

    print(f"\n{'':28}{'lexicon':>12}{'learned':>12}")
    for key in ("wall_s", "generate_s", "predict_s", "predict_share_of_loop", "boundary_calls",
                "predict_ms_per_boundary"):
        print(f"{key:28}{results['lexicon'][key]:>12}{results['learned'][key]:>12}")
    ratio = results["learned"]["predict_ms_per_boundary"] / max(results["lexicon"]["predict_ms_per_boundary"], 1e-6)
    print(f"learned / lexicon predict time per boundary: {ratio:.0f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
