"""How much the cooperative loop costs over plain batched generation, and how it scales with length.

One run, one process, the embedded default models loaded once (student smollm2-135m-instruct,
teacher gemma3-270m, sampling as in the default config). It measures:

1. Throughput. `tessy.engine.synth.synthesize` on N demo prompts with batch size B, against plain batched
   generation of the SAME number of tokens per model by the SAME `HFBackend` objects (sessions
   started from the same rendered prompts, EOS ignored so every row reaches its count):
     - even rows: each model's total spread evenly over B rows at once, in k-token chunks (one
       `generate` call per k tokens, like the loop) and in one long call: the ideal batch;
     - per-sample lengths: every prompt writes exactly what tessy made that model write for it, B
       slots refilled as rows finish, k-token chunks: the same ragged tail tessy has, without the loop.
   The figure of merit is "tessy time per token / plain time per token" (target <= 1.3). Kept (accepted) tokens/s is
   reported separately: tokens rolled back are wasted work inherent to generate-then-rollback.
2. Length scaling. tessy with a thinking budget of L and of 2L (same prompts, batch size and small
   answer budget): time per sample, the thinking length actually reached, and the ratio of time per
   sample (target <= 2.3 when the length doubles), raw and normalised by the tokens actually reached.

The 2L run doubles as the tessy run of part 1, so each tessy configuration runs once.

    TESSY_CACHE=/tmp/tessy-cache .venv/bin/python benchmarks/loop_overhead.py [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

DEMO_PROMPTS = Path(__file__).resolve().parent.parent / "tessy" / "data" / "demo_prompts.jsonl"
ROLES = ("student", "teacher")


# --- measuring -----------------------------------------------------------------------------------
class Clock:
    """Wall and process CPU time of a block (CPU/wall near the thread count means no contention)."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0
        self.load = round(os.getloadavg()[0], 2)  # 1-minute load average of the machine at the end


@dataclasses.dataclass
class CallStats:
    """What one model's `generate` calls did: time, rows, tokens, and the batch slots they used."""

    calls: int = 0
    seconds: float = 0.0
    rows: int = 0
    tokens: int = 0  # tokens returned in spans
    row_steps: int = 0  # rows x decode steps of each call: the batch slots the forward passes paid for
    prefill_tokens: int = 0  # uncached tokens fed in the first forward pass (other model's text, prompt)
    prefill_padded: int = 0  # rows x longest uncached chunk: what that first pass actually computed

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["mean_rows_per_call"] = round(self.rows / self.calls, 2) if self.calls else 0.0
        d["slot_use"] = round(self.tokens / self.row_steps, 3) if self.row_steps else 0.0
        d["tokens_per_s"] = round(self.tokens / self.seconds, 2) if self.seconds else 0.0
        return d


@contextmanager
def instrument(backends: dict, stats: dict[str, CallStats]):
    """Count every `generate` call of each backend (instance attribute, removed afterwards)."""
    for role, be in backends.items():
        plain = be.generate
        st = stats.setdefault(role, CallStats())

        def counted(sessions, max_new_tokens, stop, plain=plain, st=st):
            chunks = [len(s.ids) - s.n_cached for s in sessions]
            t = time.perf_counter()
            spans = plain(sessions, max_new_tokens, stop)
            st.seconds += time.perf_counter() - t
            st.calls += 1
            st.rows += len(sessions)
            st.tokens += sum(len(sp.ids) for sp in spans)
            # An EOS is sampled but never part of a span: it took one decode step too.
            steps = max((len(sp.ids) + (sp.finish == "eos") for sp in spans), default=0)
            st.row_steps += len(sessions) * steps
            st.prefill_tokens += sum(chunks)
            st.prefill_padded += len(sessions) * max(chunks, default=0)
            return spans

        be.generate = counted
    try:
        yield stats
    finally:
        for be in backends.values():
            be.__dict__.pop("generate", None)


def reseed(backends: dict, config) -> None:
    """Restart each sampler from its configured seed, so every phase samples reproducibly."""
    for role, be in backends.items():
        seed = getattr(config, role).spec.seed
        if seed is not None and getattr(be, "generator", None) is not None:
            be.generator.manual_seed(seed)


def write_prompts(n: int, path: Path) -> Path:
    """The first n demo prompts (cycled, with fresh ids, when n exceeds the file)."""
    lines = [json.loads(line) for line in DEMO_PROMPTS.read_text().splitlines() if line.strip()]
    with open(path, "w") as f:
        for i in range(n):
            obj = dict(lines[i % len(lines)])
            if i >= len(lines):
                obj["id"] = f"{obj['id']}-{i // len(lines)}"
            f.write(json.dumps(obj) + "\n")
    return path


# --- the two things compared -----------------------------------------------------------------------
def run_tessy(config, backends: dict, prompts: Path, workdir: Path, name: str) -> dict:
    from tessy.engine.synth import synthesize

    out = workdir / name / "records.jsonl"
    reseed(backends, config)
    stats: dict[str, CallStats] = {}
    with instrument(backends, stats), Clock() as clock:
        summary = synthesize(config, prompts, out, backends=backends, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    st = [r["stats"] for r in records]
    n = len(records)
    generated = {role: sum(s["generated_tokens"][role] for s in st) for role in ROLES}
    think = [s["think_tokens"] for s in st]
    answer = [s["answer_tokens"] for s in st]
    kept = sum(think) + sum(answer)
    total_generated = sum(generated.values())
    return {
        "name": name,
        "max_think_tokens": config.max_think_tokens,
        "max_answer_tokens": config.max_answer_tokens,
        "samples": n,
        "wall_s": round(clock.wall, 3),
        "cpu_s": round(clock.cpu, 3),
        "load_avg_1min": clock.load,
        "generate_s": summary.get("timing", {}).get("generate_s"),
        "predict_s": summary.get("timing", {}).get("predict_s"),
        "generated_tokens": generated,
        "generated_per_prompt": {r["id"]: r["stats"]["generated_tokens"] for r in records},
        "generated_total": total_generated,
        "kept_tokens": kept,
        "kept_fraction": round(kept / total_generated, 3) if total_generated else 0.0,
        "generated_tokens_per_s": round(total_generated / clock.wall, 2),
        "kept_tokens_per_s": round(kept / clock.wall, 2),
        "time_per_sample_s": round(clock.wall / n, 3) if n else None,
        "mean_think_tokens": round(sum(think) / n, 1) if n else 0.0,
        "min_think_tokens": min(think, default=0),
        "max_think_tokens_reached": max(think, default=0),
        "mean_answer_tokens": round(sum(answer) / n, 1) if n else 0.0,
        "mean_generated_per_sample": round(total_generated / n, 1) if n else 0.0,
        "stop_reasons": summary.get("stop_reasons", {}),
        "calls": {role: stats[role].as_dict() for role in ROLES},
    }


def plain_sessions(config, backend, role: str, prompts: list, rows: int) -> list:
    """Sessions started exactly as `tessy.engine.synth.start_sample` starts them, for `rows` prompts."""
    renderer = getattr(config, role).renderer(backend.tokenizer, config.profiles)
    sessions = []
    for i in range(rows):
        text, used_template = renderer.render(list(prompts[i % len(prompts)].messages))
        sessions.append(backend.start(text, add_special_tokens=not used_template))
    return sessions


def run_plain(config, backends: dict, prompts: list, slots: int, jobs: dict[str, list[tuple[int, int]]],
              chunk: int | None, mode: str) -> dict:
    """Plain batched generation: for each model, `jobs[role]` lists (prompt index, tokens to write).
    Up to `slots` jobs run at once, in calls of `chunk` tokens per row (None: one call per row's
    whole count); a finished job's slot takes the next job (continuous batching, like the scheduler).
    EOS is ignored (sampled on as a token) so every row reaches its count; no stop strings are checked."""
    out = {"mode": mode, "slots": slots, "models": {}}
    reseed(backends, config)
    wall = cpu = 0.0
    total = 0
    loads = []
    for role in ROLES:
        be = backends[role]
        queue = [(i, n) for i, n in jobs[role] if n > 0]
        sessions = plain_sessions(config, be, role, prompts, len(prompts))
        stats: dict[str, CallStats] = {}
        eos = be.eos_ids
        be.eos_ids = set()
        try:
            with instrument({role: be}, stats), Clock() as clock:
                live: list[list] = []  # [session, tokens left]
                while queue or live:
                    while queue and len(live) < slots:
                        i, n = queue.pop(0)
                        live.append([sessions[i], n])
                    want = [min(chunk, left) if chunk else left for _, left in live]
                    spans = be.generate([sess for sess, _ in live], want, [()] * len(live))
                    for job, sp in zip(live, spans):
                        job[1] -= len(sp.ids)
                    for sess, left in live:
                        if left <= 0:
                            be.release(sess)
                    live = [job for job in live if job[1] > 0]
        finally:
            be.eos_ids = eos
        made = stats[role].tokens
        out["models"][role] = {"tokens": made, "wall_s": round(clock.wall, 3), "cpu_s": round(clock.cpu, 3),
                               "tokens_per_s": round(made / clock.wall, 2), "calls": stats[role].as_dict()}
        wall += clock.wall
        cpu += clock.cpu
        total += made
        loads.append(clock.load)
    out.update(wall_s=round(wall, 3), cpu_s=round(cpu, 3), load_avg_1min=max(loads), tokens=total,
               tokens_per_s=round(total / wall, 2))
    return out


def even_jobs(total: int, rows: int) -> list[tuple[int, int]]:
    """`total` tokens spread evenly over prompts 0..rows-1."""
    return [(i, total // rows + (i < total % rows)) for i in range(rows)]


def warm_up(config, backends: dict, prompts: list) -> None:
    """One short batched call per model, so one-off first-call costs land in no measurement."""
    for role in ROLES:
        be = backends[role]
        sessions = plain_sessions(config, be, role, prompts, 2)
        be.generate(sessions, [4, 4], [(), ()])
        be.generate(sessions, [4, 4], [(), ()])
        for s in sessions:
            be.release(s)


# --- report ----------------------------------------------------------------------------------------
def ratio(a, b):
    return round(a / b, 3) if a and b else None


def report(res: dict) -> list[str]:
    t1, t2 = res["tessy_L"], res["tessy_2L"]
    thr = res["throughput"]
    tessy = thr["tessy"]
    lines = []

    def row(label, value, note=""):
        lines.append(f"  {label:<64} {value!s:>12}  {note}")

    lines.append("=" * 100)
    lines.append(f"tessy loop overhead  |  N={res['prompts_n']} prompts, batch size B={res['batch_size']}, "
                 f"tessy in flight {res['in_flight']}, k={res['k']}, "
                 f"torch threads={res['torch_threads']}, models: {res['student']} / {res['teacher']}")
    lines.append("=" * 100)
    lines.append(f"1. Throughput (tessy run: think budget {tessy['max_think_tokens']}, answer budget "
                 f"{tessy['max_answer_tokens']}; plain: same tokens per model by the same backends, EOS ignored)")
    g = tessy["generated_tokens"]
    row("tokens generated by tessy (student + teacher)", f"{g['student']} + {g['teacher']}")
    row("tessy wall time [s] (whole synthesize call)", tessy["wall_s"],
        f"generate {tessy['generate_s']} s, predictors {tessy['predict_s']} s")
    row("tessy generated tokens/s", tessy["generated_tokens_per_s"])
    row("tessy kept (accepted) tokens/s", tessy["kept_tokens_per_s"],
        f"{tessy['kept_tokens']} kept = {tessy['kept_fraction']:.0%} of generated; the rest was rolled back")
    for key in ("plain_chunked", "plain_long", "plain_per_sample"):
        p = thr[key]
        m = p["models"]
        row(f"plain tokens/s, {p['mode']}", p["tokens_per_s"],
            f"{p['wall_s']} s (student {m['student']['tokens_per_s']}/s, teacher {m['teacher']['tokens_per_s']}/s)")
    row("tessy time per token / plain time per token (even, chunks)", thr["overhead_vs_chunked"], "target <= 1.3")
    row("tessy time per token / plain time per token (even, one call)", thr["overhead_vs_long"], "target <= 1.3")
    row("  same, in process CPU seconds (even chunks / even one call)",
        f"{thr['overhead_vs_chunked_cpu']} / {thr['overhead_vs_long_cpu']}", "robust to other load")
    row("tessy time per token / plain time per token (per-sample)", thr["overhead_vs_per_sample"],
        f"CPU seconds: {thr['overhead_vs_per_sample_cpu']}; plain pays the same ragged tail")
    row("tessy time per KEPT token / plain time per token (even, chunks)", thr["kept_overhead_vs_chunked"],
        "includes rollback waste")
    lines.append("  per model, tessy time per token / plain (even, chunks) time per token, generate calls only:")
    for role in ROLES:
        c = tessy["calls"][role]
        pc = thr["plain_chunked"]["models"][role]["calls"]
        pr = thr["plain_per_sample"]["models"][role]["calls"]
        row(f"  {role}: tessy {c['tokens_per_s']}/s in {c['calls']} calls of {c['mean_rows_per_call']} rows",
            ratio(pc["tokens_per_s"], c["tokens_per_s"]),
            f"plain {pc['tokens_per_s']}/s in {pc['calls']} calls of {pc['mean_rows_per_call']} rows "
            f"(per-sample {pr['tokens_per_s']}/s, {pr['calls']} calls of {pr['mean_rows_per_call']} rows); "
            f"slot use {c['slot_use']:.0%} vs {pc['slot_use']:.0%}; "
            f"prefill {c['prefill_tokens']} tok ({c['prefill_padded']} padded)")
    lines.append("-" * 100)
    lines.append(f"2. Length scaling (think budget L={t1['max_think_tokens']} vs 2L={t2['max_think_tokens']}, "
                 f"answer budget {t1['max_answer_tokens']}, same prompts and batch size)")
    for r in (t1, t2):
        row(f"budget {r['max_think_tokens']}: time per sample [s]", r["time_per_sample_s"],
            f"wall {r['wall_s']} s; think reached mean {r['mean_think_tokens']} (min {r['min_think_tokens']}, "
            f"max {r['max_think_tokens_reached']}); answer {r['mean_answer_tokens']}; "
            f"generated/sample {r['mean_generated_per_sample']}; stops {r['stop_reasons']}")
    sc = res["scaling"]
    row("think tokens reached, 2L / L", sc["think_reached_ratio"])
    row("time per sample, 2L / L", sc["time_per_sample_ratio"], "target <= 2.3")
    row("time per think token reached, 2L / L", sc["time_per_think_token_ratio"], "1.0 = linear")
    row("time per generated token, 2L / L", sc["time_per_generated_token_ratio"], "1.0 = linear")
    row("process CPU seconds, 2L / L", sc["cpu_per_sample_ratio"], "robust to other load")
    lines.append("-" * 100)
    util = res["cpu_utilisation"]
    lines.append(f"  CPU time / wall time per phase: {util} (about {res['torch_threads']} means no contention)")
    lines.append(f"  1-minute load average: {res['load_avg_1min']} (machine has {os.cpu_count()} CPUs)")
    if res.get("warnings"):
        for w in res["warnings"]:
            lines.append(f"  WARNING: {w}")
    lines.append(f"  total benchmark wall time {res['total_wall_s']} s (model loading {res['load_s']} s)")
    lines.append("=" * 100)
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts-n", type=int, default=8, help="demo prompts to synthesize (default 8)")
    ap.add_argument("--batch-size", type=int, default=8,
                    help="rows per model call: tessy's batch_size, plain's rows (default 8)")
    ap.add_argument("--in-flight", type=int, default=0,
                    help="tessy samples open at once (default 0: the config's 2 x batch size)")
    ap.add_argument("--length", type=int, default=96,
                    help="think budget L of the short run; the long run uses 2L (default 96)")
    ap.add_argument("--answer-tokens", type=int, default=32, help="answer budget of both runs (default 32)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    ap.add_argument("--workdir", type=Path, default=None, help="where records go (default: a temp dir, removed)")
    args = ap.parse_args(argv)

    os.environ.setdefault("TESSY_CACHE", "/tmp/tessy-cache")
    import torch

    from tessy.config import load_config
    from tessy.engine.synth import load_backends
    from tessy.prompts import read_prompts

    t_start = time.perf_counter()
    start_load = round(os.getloadavg()[0], 2)
    base = load_config()
    base = dataclasses.replace(base, batch_size=args.batch_size, in_flight=args.in_flight,
                               max_answer_tokens=args.answer_tokens)
    with Clock() as load:
        backends = load_backends(base)
    tmp = tempfile.TemporaryDirectory(prefix="tessy-bench-") if args.workdir is None else None
    workdir = Path(tmp.name) if tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        prompts_path = write_prompts(args.prompts_n, workdir / "prompts.jsonl")
        prompts = read_prompts(prompts_path)
        warm_up(base, backends, prompts)

        def say(msg):
            print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", file=sys.stderr, flush=True)

        say(f"tessy, think budget L={args.length}")
        t1 = run_tessy(dataclasses.replace(base, max_think_tokens=args.length), backends, prompts_path, workdir, "L")
        say(f"  {t1['wall_s']} s, {t1['generated_total']} tokens generated")
        say(f"tessy, think budget 2L={2 * args.length}")
        t2 = run_tessy(dataclasses.replace(base, max_think_tokens=2 * args.length), backends, prompts_path, workdir,
                       "2L")
        say(f"  {t2['wall_s']} s, {t2['generated_total']} tokens generated")

        rows = min(args.batch_size, len(prompts))
        targets = t2["generated_tokens"]
        even = {role: even_jobs(targets[role], rows) for role in ROLES}
        say(f"plain, even rows, chunks of {base.k}, {targets}")
        chunked = run_plain(base, backends, prompts, rows, even, base.k, f"even rows, chunks of {base.k}")
        say(f"  {chunked['wall_s']} s")
        say("plain, even rows, one long call")
        long = run_plain(base, backends, prompts, rows, even, None, "even rows, one long call")
        say(f"  {long['wall_s']} s")
        per_prompt = {role: [(i, t2["generated_per_prompt"][p.id][role]) for i, p in enumerate(prompts)]
                      for role in ROLES}
        say(f"plain, per-sample lengths, chunks of {base.k}")
        ragged = run_plain(base, backends, prompts, args.batch_size, per_prompt, base.k,
                           f"per-sample lengths, chunks of {base.k}")
        say(f"  {ragged['wall_s']} s")
    finally:
        if tmp:
            tmp.cleanup()

    tessy_tpt = t2["wall_s"] / t2["generated_total"]
    res = {
        "student": base.student.spec.model,
        "teacher": base.teacher.spec.model,
        "temperature": {"student": base.student.spec.temperature, "teacher": base.teacher.spec.temperature},
        "prompts_n": args.prompts_n,
        "batch_size": args.batch_size,
        "in_flight": args.in_flight or 2 * args.batch_size,
        "k": base.k,
        "torch_threads": torch.get_num_threads(),
        "load_s": round(load.wall, 2),
        "tessy_L": t1,
        "tessy_2L": t2,
        "throughput": {
            "tessy": t2,
            "plain_rows": rows,
            "plain_chunked": chunked,
            "plain_long": long,
            "plain_per_sample": ragged,
            # (tessy seconds per generated token) / (plain seconds per token)
            "overhead_vs_chunked": ratio(tessy_tpt, chunked["wall_s"] / chunked["tokens"]),
            "overhead_vs_long": ratio(tessy_tpt, long["wall_s"] / long["tokens"]),
            # the same two ratios in process CPU seconds: less sensitive to other processes on the machine
            "overhead_vs_chunked_cpu": ratio(t2["cpu_s"] / t2["generated_total"], chunked["cpu_s"] / chunked["tokens"]),
            "overhead_vs_long_cpu": ratio(t2["cpu_s"] / t2["generated_total"], long["cpu_s"] / long["tokens"]),
            "overhead_vs_per_sample": ratio(tessy_tpt, ragged["wall_s"] / ragged["tokens"]),
            "overhead_vs_per_sample_cpu": ratio(t2["cpu_s"] / t2["generated_total"],
                                                ragged["cpu_s"] / ragged["tokens"]),
            "kept_overhead_vs_chunked": ratio(t2["wall_s"] / t2["kept_tokens"], chunked["wall_s"] / chunked["tokens"]),
        },
        "scaling": {
            "think_reached_ratio": ratio(t2["mean_think_tokens"], t1["mean_think_tokens"]),
            "time_per_sample_ratio": ratio(t2["time_per_sample_s"], t1["time_per_sample_s"]),
            "time_per_think_token_ratio": ratio(t2["wall_s"] / max(t2["mean_think_tokens"], 1e-9),
                                                t1["wall_s"] / max(t1["mean_think_tokens"], 1e-9)),
            "time_per_generated_token_ratio": ratio(t2["wall_s"] / t2["generated_total"],
                                                    t1["wall_s"] / t1["generated_total"]),
            "cpu_per_sample_ratio": ratio(t2["cpu_s"], t1["cpu_s"]),
        },
        "cpu_utilisation": {
            "tessy_L": ratio(t1["cpu_s"], t1["wall_s"]),
            "tessy_2L": ratio(t2["cpu_s"], t2["wall_s"]),
            "plain_chunked": ratio(chunked["cpu_s"], chunked["wall_s"]),
            "plain_long": ratio(long["cpu_s"], long["wall_s"]),
            "plain_per_sample": ratio(ragged["cpu_s"], ragged["wall_s"]),
        },
        "load_avg_1min": {"at_start": start_load, "tessy_L": t1["load_avg_1min"], "tessy_2L": t2["load_avg_1min"],
                          "plain_chunked": chunked["load_avg_1min"], "plain_long": long["load_avg_1min"],
                          "plain_per_sample": ragged["load_avg_1min"]},
        "total_wall_s": round(time.perf_counter() - t_start, 1),
    }
    threads = res["torch_threads"]
    warnings = [f"{phase}: CPU/wall {u} is well under {threads} threads; another process may have competed for the CPU"
                for phase, u in res["cpu_utilisation"].items() if u is not None and threads > 1 and u < 0.6 * threads]
    busy = {k: v for k, v in res["load_avg_1min"].items() if v > (os.cpu_count() or 1) + 1}
    if busy:
        warnings.append(f"1-minute load average above the {os.cpu_count()} CPUs: {busy}; "
                        "wall-time figures are unreliable, prefer the CPU-time ratios")
    if t2["mean_think_tokens"] < 1.5 * t1["mean_think_tokens"]:
        warnings.append("the 2L run reached less than 1.5x the thinking of the L run (early stops); "
                        "read the normalised ratios")
    res["warnings"] = warnings
    print("\n".join(report(res)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
