"""`tessy synth` at scale without a GPU: two simulated vLLM replicas (benchmarks/sim_server.py).

    TESSY_CACHE=/tmp/tessy-cache .venv/bin/python benchmarks/scale_sim.py [--json out.json]
        [--in-flight 16,64,256] [--samples-per-slot 3] [--drivers ticks,events] [--method tessy]

What it measures. It starts two simulated continuous-batching servers (student and teacher, one
replica each) and runs `tessy.engine.synth.synthesize` through them with the `openai` backend (token-id
mode), at 16, 64 and 256 samples in flight, N = samples-per-slot x in-flight samples each. The
servers cost time the way a vLLM engine does (a step of `step_ms + per_seq_ms * active + prefill per
uncached prompt token`, one token per active sequence per step, automatic prefix caching of 16-token
blocks) and "generate" sentences of a fixed corpus encoded with the student's tokenizer: style
discourse and capability text, so the lexicon boundary predictor cuts often. When tessy's config has
a `driver` field (the rewrite of tessy/engine/scheduler.py), both drivers run side by side at each level:
`ticks` (lock-step: each tick runs the predictor, then all student calls, then all teacher calls,
each phase waiting for its slowest row) and `events` (each sample moves on as soon as its own
request returns), and the ratio events / ticks of generated tokens/s is printed. Without the field
(the code before that change) only the existing driver runs, labelled "ticks (lock-step, before the
change)". One small `teacher-only` run follows (16 in flight, 32 samples; the events driver where
there is one) and reports teacher requests and thinking spans per sample, against the target "a
Teacher-Only sample makes at most one request per thinking span plus one for the answer".

Per run it prints: wall time of the synth loop, each server's busy fraction (time with >= 1 active
sequence / wall), generated tokens/s (both servers' generated tokens / wall), each server's
prefix-cache hit rate (cached / prompt tokens), requests and request bytes per kept token (kept =
think + answer tokens of the records), and each server's mean active sequences while busy.

What the figures show and do not show. They compare schedulers against the same simulated engine:
how full each server's batch is kept, how much idle time a lock-step tick leaves, how many requests
and bytes a kept token costs, how much of each prompt the prefix cache serves. Timing is simulated
(the servers sleep for their step times); the client runs on the same small machine (2 cores here)
as both simulated servers, so at high in-flight counts the client's own CPU (HTTP, JSON, decoding
spans, the predictor) and the servers' Python threads compete for the cores and stretch the steps
(each server reports `overrun_s`: how much longer its steps took than planned). "Busy" is >= 1
active sequence, not GPU utilisation. Absolute tokens/s are not a vLLM throughput; the model's
output is a fixed corpus, not a model's text, so teacher shares and stop reasons say nothing about
data quality. The servers' counts include tessy's one probe request per endpoint (max_tokens 1,
excluded from the per-sample request counts).

Budgets and prompts: k = 20, max_think_tokens 192, max_answer_tokens 48 (flags), 3 samples per slot,
chosen so that a full default run with both drivers stays near 11 minutes on the 2-core machine (a
sample makes about 0.15 requests per kept token, about 35 requests, and a lock-step tick costs two
~20-step phases). The prompts are contest-style statements of about 350 tokens (the paper's prompts
are programming-contest tasks), each opening with its own problem number, and every 8th repeats an
earlier statement under its own id. The thinking is far shorter than the paper's (tens of thousands
of tokens), which understates the prefix-cache hit rate: a request's uncached part is about a turn of
the other model's text plus the last partial block, a smaller share of a longer session.
`--samples-per-slot-max LEVEL:S` caps the samples per slot from an in-flight level up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tessy.serve import ServerProcess, free_port

HERE = Path(__file__).resolve().parent
SIM = "(simulated servers)"
MODEL = "smollm2-135m-instruct"
MARKER = "</think>"  # the `plain` profile's close marker

STYLE = [
    "Okay, let's see.", "Wait, that is not right.", "Hmm, let me check again.",
    "So, first I need to understand the question.", "Let me think about this.", "Alright, now the next part.",
    "Hmm, maybe I should try another way.", "Wait, let me verify that.",
    "Okay, so that works.", "Let me recall the definition.", "Hmm, that seems too easy.", "Actually, wait.",
    "So basically, we need to be careful here.", "Let me double-check the arithmetic.", "Okay, that makes sense.",
    "But if that is the case, then what?", "Hold on, I think I made a mistake.", "Alright, let me try again.",
    "Now, let me see what happens next.", "Hmm, interesting.", "Okay, I think I got it.", "Wait, but then again.",
    "So, in other words, it holds.", "Let me check the edge cases.", "Perhaps I should write it down.",
    "Right, so far so good.", "I guess that is the answer.", "Hmm, I wonder if there is a simpler way.",
    "Okay, so to sum up.", "Let's see if that is consistent.",
]
CAPABILITY = [
    "We compute 3 * 4 = 12, so the sum is 15.", "def f(x): return x + 1", "The loop runs n times, so it is O(n).",
    "The derivative of x^2 is 2x.", "Substituting x = 2 gives 4 + 6 = 10.", "for i in range(n): total += a[i]",
    "The triangle has sides 3, 4 and 5.", "Dividing both sides by 7 gives y = 6.", "The area is pi * r^2 = 28.27.",
    "A prime number has exactly two divisors.", "The list is sorted in O(n log n) time.",
    "x = (-b + sqrt(b^2 - 4ac)) / 2a", "The probability is 1/6 for each face.",
    "Binary search halves the interval each step.", "The remainder of 17 mod 5 is 2.",
    "The matrix [[1, 2], [3, 4]] has determinant -2.", "return sorted(set(xs))",
    "The sum 1 + 2 + ... + n equals n(n+1)/2.", "The speed is 120 km / 2 h = 60 km/h.",
    "The hash map gives O(1) lookups on average.", "The gcd of 84 and 36 is 12.",
    "The series converges because the ratio is 1/2.", "If a > b and b > c, then a > c.", "The answer is 42.",
    "while lo < hi: mid = (lo + hi) // 2", "The integral of 1/x is ln|x| + C.",
    "The angle sum of a triangle is 180 degrees.", "The function is increasing on (0, inf).",
    "The recursion depth is log2(n).", "Each of the 5 boxes holds 8 apples, 40 in all.",
]
# Contest-style statements (the paper's prompts are programming-contest tasks): a story, input and
# output formats, constraints and an example, about 300-400 tokens each. The problem number comes
# first, so no two statements share a prefix-cache block past the chat template.
STORIES = [
    "Alice has a row of {m} boxes, numbered from 1 to {m}. Box i holds a_i coins. She may pick any "
    "contiguous segment of boxes and take every coin in it, but the segment must not contain two boxes "
    "with the same number of coins. Bob wants to know the largest number of coins Alice can collect in "
    "one move, because he has to guard the boxes afterwards and wants to plan his night.",
    "A kingdom has {m} cities joined by roads; every road connects two cities and takes some whole "
    "number of hours to travel. The king lives in city 1 and wants to send a messenger to every other "
    "city. A messenger rides without rest, and a city is informed when the first messenger reaches it. "
    "For every city, find the earliest hour at which it is informed, or report that it never is.",
    "You are given a string s of length {m} made of lowercase Latin letters. In one operation you may "
    "choose two adjacent equal letters and delete both of them; the remaining parts of the string are "
    "then glued together. You may perform any number of operations, in any order you like. Find the "
    "shortest string that can be obtained, and print it, or print the word EMPTY if nothing remains.",
    "A robot stands on cell (0, 0) of an infinite grid and receives a program of {m} commands, each of "
    "them one of U, D, L and R, moving it one cell up, down, left or right. Some commands may be broken "
    "and are then skipped. Count how many distinct cells the robot can end on, over every possible set "
    "of broken commands, and print the count modulo 998244353.",
    "There are {m} students in a line, and the i-th student has height h_i. The teacher wants to split "
    "the line into groups of consecutive students so that in each group the tallest and the shortest "
    "student differ by at most d centimetres. Groups may have any size, including one. Find the smallest "
    "number of groups, and one way to split the line that achieves it.",
]
FORMAT = (
    "\n\nInput\nThe first line contains a single integer t (1 <= t <= 10^4), the number of test cases. "
    "The first line of each test case contains the integers n and d (1 <= n <= 2 * 10^5, 0 <= d <= 10^9). "
    "The second line contains n integers, the values described in the statement (1 <= a_i <= 10^9). It is "
    "guaranteed that the sum of n over all test cases does not exceed 2 * 10^5.\n\n"
    "Output\nFor each test case print the answer on its own line. If there are several answers, print any "
    "of them.\n\nExample\nInput\n3\n{m} 2\n{row}\n1 0\n7\n4 5\n1 9 2 8\n\nOutput\n{ans}\n1\n2\n\n"
    "Note\nIn the first test case one optimal choice uses the segments shown above; no better one exists. "
    "Solve it in Python, reading from standard input and writing to standard output, and explain the "
    "algorithm and its complexity before the code."
)


def statement(i: int) -> str:
    m = 3 + (i * 7) % 40
    row = " ".join(str(1 + (i * 13 + j * 5) % 17) for j in range(min(m, 12)))
    return f"Problem {i}. " + STORIES[i % len(STORIES)].format(m=m) + FORMAT.format(m=m, row=row, ans=i % 9 + 1)


def http(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def build_corpus(tokenizer, path: Path) -> dict:
    sentences = []
    for s in [x for pair in zip(STYLE, CAPABILITY) for x in pair]:
        ids = tokenizer.encode(" " + s, add_special_tokens=False)
        text = tokenizer.decode(ids, skip_special_tokens=False)
        offsets = []
        for n in range(1, len(ids) + 1):
            prefix = tokenizer.decode(ids[:n], skip_special_tokens=False)
            offsets.append(len(prefix) if text.startswith(prefix) and not prefix.endswith("\ufffd") else -1)
        sentences.append({"ids": ids, "text": text, "offsets": offsets})
    corpus = {"sentences": sentences, "eos_id": tokenizer.eos_token_id,
              "markers": {MARKER: tokenizer.encode(MARKER, add_special_tokens=False)}}
    path.write_text(json.dumps(corpus))
    return corpus


def write_prompts(path: Path, n: int) -> None:
    """n distinct ids; every 8th prompt repeats an earlier prompt's text under its own id."""
    texts = []
    for i in range(n):
        if i % 8 == 7:
            texts.append(texts[i - 5])
        else:
            texts.append(statement(i))
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"q{i}", "prompt": t}) + "\n")


class SimServers:
    """The student's and the teacher's simulated servers (sim_server.py), each started, waited for and
    stopped as tessy starts a real one (tessy.serve.ServerProcess)."""

    def __init__(self, corpus_path: Path, logdir: Path, server_args: list[str]):
        self.servers, self.urls, self.logs = {}, {}, {}
        for role in ("student", "teacher"):
            port = free_port()
            self.logs[role] = log = logdir / f"sim-{role}.log"
            log.unlink(missing_ok=True)  # `errors` reads this run's output alone
            self.urls[role] = f"http://127.0.0.1:{port}"
            self.servers[role] = ServerProcess(
                [sys.executable, str(HERE / "sim_server.py"), "--port", str(port), "--corpus", str(corpus_path),
                 *server_args], self.urls[role], log=log, grace_s=5.0, name=f"sim server ({role})").start()
        try:
            for server in self.servers.values():
                server.ready(20)
        except Exception:
            self.close()
            raise

    def reset(self) -> None:
        for url in self.urls.values():
            http(url + "/stats/reset", {})

    def stats(self) -> dict:
        return {role: http(url + "/stats") for role, url in self.urls.items()}

    def errors(self) -> str:
        return "".join(f"[{r}] {log.read_text()[-1000:]}" for r, log in self.logs.items() if log.stat().st_size)

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()


def has_driver() -> bool:
    from tessy.config import load_config

    return hasattr(load_config(), "driver")


def run_one(servers: SimServers, workdir: Path, args, method: str, in_flight: int, n_samples: int,
            driver: str | None) -> dict:
    from tessy.config import load_config
    from tessy.engine.records import read_records
    from tessy.engine.synth import synthesize

    tag = f"{method}-{driver or 'before'}-{in_flight}"
    prompts = workdir / f"prompts-{n_samples}.jsonl"
    if not prompts.exists():
        write_prompts(prompts, n_samples)
    out = workdir / tag / "records.jsonl"
    if out.parent.exists():
        shutil.rmtree(out.parent)
    config = load_config(k=args.k, max_think_tokens=args.max_think_tokens, max_answer_tokens=args.max_answer_tokens,
                         in_flight=in_flight, batch_size=max(in_flight // 2, 1), method=method,
                         **({"max_rounds": args.max_rounds} if args.max_rounds else {}))
    for role in ("student", "teacher"):
        spec, endpoint = getattr(config, role).spec, getattr(config, role).endpoint
        spec.backend, spec.model, endpoint.urls = "openai", MODEL, [servers.urls[role] + "/v1"]
        endpoint.concurrency, endpoint.timeout_s, endpoint.max_retries = in_flight + 16, 3600.0, 1
    config.teacher.spec.seed = 1
    if driver is not None:
        config.driver = driver
    servers.reset()
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = synthesize(config, prompts, out, progress=False)
    call_s, client_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stats = servers.stats()
    records = read_records(out) if out.exists() else []
    wall = summary.get("wall_s") or call_s
    kept = sum(r["stats"]["think_tokens"] + r["stats"]["answer_tokens"] for r in records)
    requests = sum(s["requests"] - s["requests_max1"] for s in stats.values())
    gen = sum(s["generated_tokens"] for s in stats.values())
    think_spans = sum(sum(1 for seg in r["segments"] if seg["part"] == "think") for r in records)
    row = {
        "method": method, "driver": driver or "ticks (lock-step, before the change)", "in_flight": in_flight,
        "samples": len(records), "errors": summary.get("errors", 0), "wall_s": round(wall, 2),
        "call_s": round(call_s, 2),
        "client_cpu_s": round(client_cpu, 2),  # the synth call's process CPU, tokenizer loading included
        "kept_tokens": kept, "generated_tokens": gen,
        "generated_tokens_per_s": round(gen / wall, 1) if wall else 0.0,
        "kept_tokens_per_s": round(kept / wall, 1) if wall else 0.0,
        "requests": requests, "requests_per_kept_token": round(requests / kept, 4) if kept else None,
        "bytes_per_kept_token": round(sum(s["bytes_in"] for s in stats.values()) / kept, 1) if kept else None,
        "think_spans_per_sample": round(think_spans / len(records), 2) if records else None,
        "stop_reasons": summary.get("stop_reasons"), "timing": summary.get("timing"),
        "servers": {},
    }
    for role, s in stats.items():
        row["servers"][role] = {
            "busy_fraction": round(s["busy_s"] / wall, 3) if wall else None,
            "prefix_cache_hit_rate": (round(s["cached_prompt_tokens"] / s["prompt_tokens"], 3)
                                      if s["prompt_tokens"] else None),
            "mean_active": s["mean_active"], "max_active": s["max_active"],
            "requests_per_sample": round((s["requests"] - s["requests_max1"]) / len(records), 2) if records else None,
            "overrun_fraction": round(s["overrun_s"] / s["busy_s"], 3) if s["busy_s"] else 0.0,
            **s,
        }
    return row


COLUMNS = [
    ("driver", lambda r: r["driver"].split(" ")[0] + ("*" if r["driver"].startswith("ticks (") else "")),
    ("in flight", lambda r: r["in_flight"]),
    ("samples", lambda r: r["samples"] if not r["errors"] else f"{r['samples']}+{r['errors']}err"),
    ("wall s", lambda r: f"{r['wall_s']:.1f}"),
    ("busy S", lambda r: f"{r['servers']['student']['busy_fraction']:.2f}"),
    ("busy T", lambda r: f"{r['servers']['teacher']['busy_fraction']:.2f}"),
    ("gen tok/s", lambda r: f"{r['generated_tokens_per_s']:.0f}"),
    ("kept tok/s", lambda r: f"{r['kept_tokens_per_s']:.0f}"),
    ("cache hit S", lambda r: _f(r["servers"]["student"]["prefix_cache_hit_rate"], 3)),
    ("cache hit T", lambda r: _f(r["servers"]["teacher"]["prefix_cache_hit_rate"], 3)),
    ("req/kept tok", lambda r: _f(r["requests_per_kept_token"], 3)),
    ("bytes/kept tok", lambda r: _f(r["bytes_per_kept_token"], 0)),
    ("active S", lambda r: f"{r['servers']['student']['mean_active']:.1f}"),
    ("active T", lambda r: f"{r['servers']['teacher']['mean_active']:.1f}"),
    ("CPU c/S/T", lambda r: "/".join(f"{x / r['call_s']:.2f}"
                                     for x in (r["client_cpu_s"], r["servers"]["student"]["cpu_s"],
                                               r["servers"]["teacher"]["cpu_s"]))),
    ("overrun S/T", lambda r: f"{r['servers']['student']['overrun_fraction']:.2f}/"
                              f"{r['servers']['teacher']['overrun_fraction']:.2f}"),
]


def _f(x, digits):
    return "-" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict]) -> str:
    cells = [[name for name, _ in COLUMNS] + [""]] + [[str(get(r)) for _, get in COLUMNS] + [SIM] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--in-flight", default="16,64,256", help="comma-separated in-flight levels")
    ap.add_argument("--samples-per-slot", type=int, default=3, help="samples per in-flight slot (N = this x in-flight)")
    ap.add_argument("--samples-per-slot-max", default="",
                    help="LEVEL:S caps samples-per-slot at S from that in-flight level up (2 cores; '' for none)")
    ap.add_argument("--drivers", default="ticks,events", help="drivers to run when tessy has a `driver` config field")
    ap.add_argument("--method", default="tessy", help="the method of the main runs")
    ap.add_argument("--no-teacher-only", action="store_true", help="skip the small teacher-only run")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--max-think-tokens", type=int, default=192)
    ap.add_argument("--max-answer-tokens", type=int, default=48)
    ap.add_argument("--step-ms", type=float, default=20.0)
    ap.add_argument("--per-seq-ms", type=float, default=0.08)
    ap.add_argument("--prefill-ms-per-token", type=float, default=0.05)
    ap.add_argument("--p-close", type=float, default=0.04,
                    help="the simulated model's chance to close its thinking after a sentence (lower: longer samples)")
    ap.add_argument("--max-rounds", type=int, help="tessy's max_rounds guard (default: the config's)")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--keep", help="keep the records and server logs in this directory")
    args = ap.parse_args(argv)

    import tessy
    from tessy.backends.openai import load_tokenizer

    levels = [int(x) for x in args.in_flight.split(",") if x.strip()]
    cap_level, cap = ((int(x) for x in args.samples_per_slot_max.split(":")) if args.samples_per_slot_max
                      else (None, None))
    with_driver = has_driver()
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()] if with_driver else [None]
    print(f"tessy from {tessy.__file__}")
    print("scheduler drivers: "
          f"{', '.join(drivers) if with_driver else 'ticks (lock-step, before the change): no `driver` config field'}")
    server_args = ["--step-ms", str(args.step_ms), "--per-seq-ms", str(args.per_seq_ms),
                   "--prefill-ms-per-token", str(args.prefill_ms_per_token), "--p-close", str(args.p_close)]
    print(f"simulated engine: step {args.step_ms} ms + {args.per_seq_ms} ms/active seq + "
          f"{args.prefill_ms_per_token} ms/uncached prompt token, 16-token prefix-cache blocks, "
          f"p_close {args.p_close}; k={args.k}, think {args.max_think_tokens}, answer {args.max_answer_tokens} "
          f"tokens; {os.cpu_count()} CPU cores shared by the client and both servers", flush=True)

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tessy-scale-sim-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(MODEL)
    corpus = build_corpus(tokenizer, workdir / "corpus.json")
    print(f"corpus: {len(corpus['sentences'])} sentences, eos {corpus['eos_id']}, "
          f"{MARKER} = {corpus['markers'][MARKER]}")
    servers = SimServers(workdir / "corpus.json", workdir, server_args)
    rows, t_all = [], time.perf_counter()
    try:
        for level in levels:
            per_slot = (min(args.samples_per_slot, cap) if cap_level is not None and level >= cap_level
                        else args.samples_per_slot)
            for driver in drivers:
                t = time.perf_counter()
                row = run_one(servers, workdir, args, args.method, level, per_slot * level, driver)
                row["samples_per_slot"] = per_slot
                rows.append(row)
                print(f"  ran {args.method} {row['driver']} at {level} in flight: {row['samples']} samples, "
                      f"{row['wall_s']:.1f} s synth loop, {time.perf_counter() - t:.1f} s with set-up {SIM}",
                      flush=True)
        teacher_only = None
        if not args.no_teacher_only:
            driver = ("events" if "events" in drivers else drivers[-1]) if with_driver else None
            t = time.perf_counter()
            teacher_only = run_one(servers, workdir, args, "teacher-only", 16, 32, driver)
            print(f"  ran teacher-only {teacher_only['driver']} at 16 in flight: {teacher_only['samples']} samples, "
                  f"{time.perf_counter() - t:.1f} s {SIM}", flush=True)
        if servers.errors():
            print("server errors:\n" + servers.errors())
    finally:
        servers.close()

    print()
    print(f"tessy synth --method {args.method} through two simulated vLLM replicas {SIM}")
    print(table(rows))
    if not with_driver:
        print("* ticks = the lock-step driver of the code before the change (no `driver` field)")
    print("S = student server, T = teacher server; busy = time with >= 1 active sequence / synth wall; "
          "active = mean active sequences while busy;\n"
          "CPU c/S/T = CPU seconds per wall second of the client (tessy) / student server / teacher server "
          "(2 cores = 2.00 in all); overrun = share of busy time the steps ran over plan (CPU contention)")
    ratios = {}
    if with_driver and "ticks" in drivers and "events" in drivers:
        for level in levels:
            by = {r["driver"]: r for r in rows if r["in_flight"] == level and r["method"] == args.method}
            if by.get("ticks") and by.get("events") and by["ticks"]["generated_tokens_per_s"]:
                ratios[level] = round(by["events"]["generated_tokens_per_s"] / by["ticks"]["generated_tokens_per_s"], 2)
                print(f"events / ticks, generated tokens/s at {level} in flight: {ratios[level]:.2f}x {SIM}")
    if teacher_only:
        t = teacher_only
        per_sample = t["servers"]["teacher"]["requests_per_sample"]
        spans = t["think_spans_per_sample"]
        print(f"teacher-only ({t['driver']}, 16 in flight, {t['samples']} samples): "
              f"{per_sample} teacher requests per sample, {spans} thinking spans per sample; "
              f"target <= spans + 1 = {spans + 1 if spans is not None else '-'} {SIM}; "
              f"mean kept tokens {t['kept_tokens'] / max(t['samples'], 1):.0f}, stop reasons {t['stop_reasons']}")
    total = time.perf_counter() - t_all
    print(f"total {total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "tessy_file": tessy.__file__,
            "drivers": drivers if with_driver else ["ticks (lock-step, before the change)"],
            "simulated_servers": True, "cpu_cores": os.cpu_count(), "args": vars(args), "runs": rows,
            "events_over_ticks_generated_tokens_per_s": ratios, "teacher_only": teacher_only,
            "total_s": round(total, 1),
        }, indent=1))
        print(f"figures written to {args.json}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
