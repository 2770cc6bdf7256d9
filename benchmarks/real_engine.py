"""What a kept token costs on a real batching engine: llama.cpp's `llama-server`, on this CPU.

    .venv/bin/python benchmarks/real_engine.py [--json out.json] [--prompts-n 16] [--in-flight 16] [--repeat 3]
        [--runs teacher-only,whole,streamed,streamed-q4_1,ticks,ticks-streamed,release,release-streamed] [--keep]
        [--llama-server PATH] [--no-swa-full]

It starts two `llama-server` processes as `tessy serve` does (tessy/serve.py: continuous batching
over `--parallel` slots, a prompt cache per slot, `--metrics`, one thread each): the student with an
F16 copy of the embedded SmolLM2-135M GGUF (its packaged Q4_1 file reads prompts at half the speed on
this CPU; the `streamed-q4_1` run serves that file) and the teacher with the embedded Gemma 3 270M
GGUF, whose sliding-window layers get a full-size cache (`--swa-full`; without it every turn computes
its last turn's tokens again). Then it runs `tessy synth` through them (the `openai`
backend, which speaks llama.cpp's native `/completion` with exact token ids) over the same
contest-style prompts as benchmarks/scale_sim.py, one run after the other. Each run gets two fresh
servers: a server's prompt cache outlives a run (llama.cpp keeps evicted prompts in RAM,
`--cache-ram`), so on shared servers every run after the first would find the same prompts cached and
the first would pay for all of them.

- `teacher-only`: the teacher writes everything (two requests per sample): the reference cost;
- `whole`: TESSY, k = 20 (the paper's turn), every turn generates its k tokens (`stream_cuts: false`),
  the `events` driver;
- `streamed`: the same, each turn's request stopped as soon as its cut is final (tessy/streaming.py);
- `streamed-q4_1`: `streamed` with the student served from its packaged Q4_1 file;
- `ticks` / `ticks-streamed`: as `whole` / `streamed`, with the lock-step `ticks` driver;
- `release` / `release-streamed`: the authors' turns, student k = 5 and teacher k = 10.

Per run it prints kept tokens per second (think + answer tokens of the records / wall), generated
tokens per kept token (every token the servers sent tessy; a sequence aborted at a cut may have
generated a token or two more that never arrived, and llama.cpp's own `tokens_predicted_total`
counts only the requests that ran to their end, so it is printed beside it as a floor), the
cost per kept token against Teacher-Only (its seconds per kept token over Teacher-Only's), each
server's prefix-cache hit rate (its `tokens_cached` over the prompt tokens, as tessy's per-role
figures report them) and each server's busy share (the share of `/metrics` readings, ten a second,
that show a request processing).

Runs of the same pair on two shared cores spread by ten to twenty percent; `--repeat N` runs every
run N times, interleaved, prints each round's table and takes each target's median round.

What it does not show: the models are tiny and share two CPU cores with the client, so the absolute
rates say nothing of a GPU; the streamed and whole runs write the same kind of records but not the
same ones (a batching server's numerics change with the batch), so their data are compared by their
statistics, not line by line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_sim import free_port, write_prompts  # noqa: E402  (the same prompts as the simulated benchmark)

from tessy.serve import f16_copy, find_llama_server, server_command, wait_until_healthy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    # name: (method, driver, student k, teacher k, stream_cuts, the student's GGUF: f16 or packaged)
    "teacher-only": ("teacher-only", "events", 20, 20, False, "f16"),
    "whole": ("tessy", "events", 20, 20, False, "f16"),
    "streamed": ("tessy", "events", 20, 20, None, "f16"),
    "streamed-q4_1": ("tessy", "events", 20, 20, None, "packaged"),
    "ticks": ("tessy", "ticks", 20, 20, False, "f16"),
    "ticks-streamed": ("tessy", "ticks", 20, 20, None, "f16"),
    "release": ("tessy", "events", 5, 10, False, "f16"),
    "release-streamed": ("tessy", "events", 5, 10, None, "f16"),
}


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("llamacpp:"):
            name, value = line.split(" ", 1)
            out[name.split(":", 1)[1]] = float(value)
    return out


class Server:
    """One `llama-server` on 127.0.0.1, and a thread that reads its `/metrics` ten times a second."""

    def __init__(self, binary: Path, gguf: Path, parallel: int, ctx_per_slot: int, log: Path, swa_full: bool):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.cmd = server_command(binary, gguf, port=self.port, parallel=parallel, ctx_per_slot=ctx_per_slot,
                                  threads=1, swa_full=swa_full)
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_until_healthy(self.url, self.proc, timeout_s=300):
            raise RuntimeError(f"llama-server did not come up: see {log}")
        self._readings: list[float] = []
        self._stop = threading.Event()
        self._thread = None

    def start_watch(self) -> dict:
        self._readings, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return metrics(self.url)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._readings.append(metrics(self.url).get("requests_processing", 0.0))
            except OSError:
                pass
            self._stop.wait(0.1)

    def stop_watch(self, before: dict) -> dict:
        self._stop.set()
        self._thread.join()
        after = metrics(self.url)
        busy = sum(1 for r in self._readings if r > 0) / len(self._readings) if self._readings else None
        return {"generated_tokens": int(after["tokens_predicted_total"] - before["tokens_predicted_total"]),
                "prompt_tokens": int(after["prompt_tokens_total"] - before["prompt_tokens_total"]),
                "busy_share": round(busy, 3) if busy is not None else None}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def run_one(name: str, servers: dict, workdir: Path, args) -> dict:
    from tessy.config import load_config
    from tessy.records import read_records
    from tessy.synth import synthesize

    method, driver, k_student, k_teacher, stream, _ = RUNS[name]
    out = workdir / name / "records.jsonl"
    shutil.rmtree(out.parent, ignore_errors=True)
    roles = {}
    for role, k in (("student", k_student), ("teacher", k_teacher)):
        roles[role] = {"backend": "openai", "urls": [servers[role].url + "/v1"], "k": k, "stream_cuts": stream,
                       "concurrency": args.in_flight, "timeout_s": 600.0, "max_retries": 1}
    config = load_config(method=method, driver=driver, max_think_tokens=args.max_think_tokens,
                         max_answer_tokens=args.max_answer_tokens, in_flight=args.in_flight,
                         batch_size=max(args.in_flight // 2, 1), **roles)
    before = {role: s.start_watch() for role, s in servers.items()}
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = synthesize(config, workdir / "prompts.jsonl", out, progress=False)
    wall, client_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    seen = {role: s.stop_watch(before[role]) for role, s in servers.items()}
    records = read_records(out) if out.exists() else []
    kept = sum(r["stats"]["think_tokens"] + r["stats"]["answer_tokens"] for r in records)
    generated = sum(r.get("generated_tokens", 0) for r in summary.get("roles", {}).values())
    finished = sum(s["generated_tokens"] for s in seen.values())
    return {
        "run": name, "method": method, "driver": summary.get("driver", driver), "k": [k_student, k_teacher],
        "stream_cuts": summary.get("stream_cuts"), "samples": len(records), "errors": summary.get("errors", 0),
        "wall_s": round(wall, 2), "client_cpu_s": round(client_cpu, 2), "kept_tokens": kept,
        "generated_tokens": generated,
        "server_tokens_predicted_total": finished,
        "kept_tokens_per_s": round(kept / wall, 2) if wall else None,
        "generated_per_kept": round(generated / kept, 3) if kept else None,
        "tessy_generated_per_kept": summary.get("generated_per_kept"),
        "seconds_per_kept_token": wall / kept if kept else None,
        "teacher_token_share": summary.get("teacher_token_share"),
        "servers": {role: {**seen[role], "generated_tokens": summary.get("roles", {}).get(role, {}).get(
            "generated_tokens"), "tokens_predicted_total": seen[role]["generated_tokens"], "prefix_cache_hit_rate":
                           summary.get("roles", {}).get(role, {}).get("prefix_cache_hit_rate"),
                           "stopped_at_cut": summary.get("roles", {}).get(role, {}).get("stopped_at_cut", 0)}
                    for role in servers},
    }


def _ratio(by: dict, a: str, b: str, key: str) -> float | None:
    if a not in by or b not in by or not by[a][key] or not by[b][key]:
        return None
    return by[a][key] / by[b][key]


# (what, the test of the median, the figure of one round's runs by name)
TARGETS = [
    ("streamed cost per kept token vs Teacher-Only <= 1.15", lambda v: v <= 1.15,
     lambda by: _ratio(by, "streamed", "teacher-only", "seconds_per_kept_token")),
    ("streamed generated per kept token <= 1.2", lambda v: v <= 1.2,
     lambda by: by["streamed"]["generated_per_kept"] if "streamed" in by else None),
    ("events vs ticks, kept tokens/s, whole turns >= 1.4", lambda v: v >= 1.4,
     lambda by: _ratio(by, "whole", "ticks", "kept_tokens_per_s")),
    ("events vs ticks, kept tokens/s, streamed cuts >= 1.4", lambda v: v >= 1.4,
     lambda by: _ratio(by, "streamed", "ticks-streamed", "kept_tokens_per_s")),
]


def table(rows: list[dict], reference: dict | None) -> str:
    head = ["run", "driver", "k S/T", "samples", "wall s", "kept tok/s", "generated / kept", "cost vs Teacher-Only",
            "cache hit S/T", "busy S/T", "stopped at cut S/T"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cost = (f"{r['seconds_per_kept_token'] / reference['seconds_per_kept_token']:.2f}x"
                if reference and r["seconds_per_kept_token"] else "-")
        s, t = r["servers"]["student"], r["servers"]["teacher"]
        lines.append("| " + " | ".join(str(x) for x in [
            r["run"], r["driver"], f"{r['k'][0]}/{r['k'][1]}", r["samples"] if not r["errors"] else
            f"{r['samples']}+{r['errors']} err", f"{r['wall_s']:.1f}", r["kept_tokens_per_s"], r["generated_per_kept"],
            cost, f"{s['prefix_cache_hit_rate']} / {t['prefix_cache_hit_rate']}",
            f"{s['busy_share']} / {t['busy_share']}", f"{s['stopped_at_cut']} / {t['stopped_at_cut']}"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", help="the llama-server binary (default: .venv/bin/llama-server)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma list of {', '.join(RUNS)}")
    parser.add_argument("--prompts-n", type=int, default=16)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=8, help="slots per server")
    parser.add_argument("--max-think-tokens", type=int, default=192)
    parser.add_argument("--max-answer-tokens", type=int, default=48)
    parser.add_argument("--swa-full", action=argparse.BooleanOptionalAction, default=True,
                        help="give the sliding-window teacher a full-size cache (--swa-full), as `tessy serve` does")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs, records)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of all the runs, interleaved; the targets take the median round")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; known: {', '.join(RUNS)}")
    binary = find_llama_server(args.llama_server)
    from tessy.models import EMBEDDED

    student = {"packaged": EMBEDDED["smollm2-135m-instruct"]()}
    student["f16"] = f16_copy(student["packaged"])
    teacher = EMBEDDED["gemma3-270m"]()

    workdir = Path(tempfile.mkdtemp(prefix="tessy-real-engine-"))
    write_prompts(workdir / "prompts.jsonl", args.prompts_n)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}"
    print(f"real engine: llama-server ({binary}), {started}, {machine}; the client and both servers share "
          f"these cores; {args.prompts_n} prompts, {args.in_flight} in flight, --parallel {args.parallel}; "
          f"student {student['f16'].name} (streamed-q4_1: {student['packaged'].name}), teacher {teacher.name}"
          f"{' with --swa-full' if args.swa_full else ''}")
    rounds = []
    for r in range(1, args.repeat + 1):  # the runs interleave, so a slow stretch of the machine hits them all
        rows = []
        for name in names:
            servers = {}
            try:
                ctx = 2048
                servers["student"] = Server(binary, student[RUNS[name][5]], args.parallel, ctx,
                                            workdir / f"{name}.{r}.student.log", args.swa_full)
                servers["teacher"] = Server(binary, teacher, args.parallel, ctx, workdir / f"{name}.{r}.teacher.log",
                                            args.swa_full)
                row = run_one(name, servers, workdir, args)
            finally:
                for s in servers.values():
                    s.close()
            row["round"] = r
            rows.append(row)
            print(f"  round {r}, {name}: {row['samples']} samples in {row['wall_s']} s, {row['kept_tokens_per_s']} "
                  f"kept tok/s, {row['generated_per_kept']} generated per kept, client CPU {row['client_cpu_s']} s",
                  flush=True)
        rounds.append(rows)
    print(f"\nMeasured {started} on {machine} (real llama.cpp servers on CPU, not simulated):")
    for r, rows in enumerate(rounds, 1):
        print(f"\nround {r} of {len(rounds)}:\n")
        print(table(rows, next((x for x in rows if x["run"] == "teacher-only"), None)))
    targets = []
    for what, limit, value in TARGETS:
        values = [v for v in (value({x["run"]: x for x in rows}) for rows in rounds) if v is not None]
        if values:
            mid = statistics.median(values)
            spread = f" (rounds: {', '.join(f'{v:.3f}' for v in values)})" if len(values) > 1 else ""
            targets.append((what, round(mid, 3), limit(mid), values))
            print(("\nTargets (the median over the rounds):" if len(targets) == 1 else "")
                  + f"\n- {what}: {mid:.3f}{spread}: {'met' if limit(mid) else 'missed'}", end="")
    print()
    rows = [x for rows in rounds for x in rows]
    if args.json:
        Path(args.json).write_text(json.dumps({"date": started, "machine": machine, "args": vars(args), "runs": rows,
                                               "targets": [dict(zip(("target", "median", "met", "rounds"), t))
                                                           for t in targets]}, indent=2))
        print(f"wrote {args.json}")
    if args.keep:
        print(f"kept {workdir} (server logs: RUN.ROUND.student.log, RUN.ROUND.teacher.log)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
