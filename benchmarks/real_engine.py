"""What a kept token costs on a real batching engine: llama.cpp's `llama-server` or vLLM, on this CPU.

    .venv/bin/python benchmarks/real_engine.py [--engine llama.cpp|vllm] [--json out.json] [--prompts-n 16]
        [--in-flight 16] [--repeat 3] [--keep] [--llama-server PATH] [--no-swa-full] [--vllm-python PATH]
        [--runs teacher-only,whole,streamed,streamed-q4_1,ticks,ticks-streamed,release,release-streamed]

**vLLM** (`--engine vllm`): two vLLM OpenAI servers started as `tessy serve --engine vllm` starts them
(tessy/serve_vllm.py: prefix caching in small blocks, prompt-token details, on a CPU float32 and whole
prompts per step; one thread each, as the llama.cpp servers; `--max-num-seqs` = `--in-flight`), the
embedded models' converted checkpoints, the
`openai` backend in ids mode. A vLLM start takes minutes here (its compile warm-up), so the pair is
started once and every run begins with its prefix cache emptied (`POST /reset_prefix_cache`, which
the servers offer with `VLLM_SERVER_DEV_MODE=1`): as cold as a fresh server. Every run but
`streamed-q4_1` (a GGUF file) runs. The table adds vLLM's own prefix-cache hit rate (its
`prefix_cache_hits_total` over `prefix_cache_queries_total`), which the targets judge.

**llama.cpp** (the default):

It starts two `llama-server` processes as `tessy serve` does (tessy/serve.py: continuous batching
over `--parallel` slots, a prompt cache per slot, `--metrics`, one thread each): the embedded
SmolLM2-135M student and Gemma 3 270M teacher, each in the form that `tessy serve --weights auto`
serves on this machine (its GGUF or that file's F16 copy, whichever ran a short turn-taking workload
faster here: tessy/serve_weights.py; the `streamed-q4_1` run serves the student's packaged Q4_1 file),
the teacher's sliding-window layers with a full-size cache (`--swa-full`; without it every turn
computes its last turn's tokens again). Then it runs `tessy synth` through them (the `openai`
backend, which speaks llama.cpp's native `/completion` with exact token ids) over the same
contest-style prompts as benchmarks/scale_sim.py, one run after the other. Each run gets two fresh
servers: a server's prompt cache outlives a run (llama.cpp keeps evicted prompts in RAM,
`--cache-ram`), so on shared servers every run after the first would find the same prompts cached and
the first would pay for all of them.

- `teacher-only`: the teacher writes everything (two requests per sample): the reference cost;
- `whole`: TESSY, k = 20 (the paper's turn), every turn generates its k tokens (`stream_cuts: false`),
  the `events` driver;
- `streamed`: the same, each turn's request stopped as soon as its cut is final (tessy/engine/streaming.py);
- `streamed-q4_1`: `streamed` with the student served from its packaged Q4_1 file;
- `ticks` / `ticks-streamed`: as `whole` / `streamed`, with the lock-step `ticks` driver;
- `release` / `release-streamed`: the authors' turns, student k = 5 and teacher k = 10.

Per run it prints kept tokens per second (think + answer tokens of the records / wall), generated
tokens per kept token (every token the servers sent tessy; a sequence aborted at a cut may have
generated a token or two more that never arrived, and llama.cpp's own `tokens_predicted_total`
counts only the requests that ran to their end, so it is printed beside it as a floor), the
cost per kept token against Teacher-Only (its seconds per kept token over Teacher-Only's), each
server's prefix-cache hit rate (its `tokens_cached` over the prompt tokens, as tessy's per-role
figures report them), the share of each server's prompt tokens that it had just seen in the same
sample (`reusable S/T`: the hit rate of a cache that keeps each session's last request, which an
engine's own rate passes only by matching other samples' prompts) and each server's busy share (the
share of `/metrics` readings, ten a second, that show a request processing).

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
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_sim import write_prompts  # noqa: E402  (the same prompts as the simulated benchmark)

from tessy.serve import ServerProcess, find_llama_server, free_port, server_command  # noqa: E402
from tessy.serve_weights import choose_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    # name: (method, driver, student k, teacher k, stream_cuts, the student's GGUF: as `tessy serve` chooses
    # it (`--weights auto`), or the packaged file)
    "teacher-only": ("teacher-only", "events", 20, 20, False, "auto"),
    "whole": ("tessy", "events", 20, 20, False, "auto"),
    "streamed": ("tessy", "events", 20, 20, None, "auto"),
    "streamed-q4_1": ("tessy", "events", 20, 20, None, "packaged"),
    "ticks": ("tessy", "ticks", 20, 20, False, "auto"),
    "ticks-streamed": ("tessy", "ticks", 20, 20, None, "auto"),
    "release": ("tessy", "events", 5, 10, False, "auto"),
    "release-streamed": ("tessy", "events", 5, 10, None, "auto"),
}


# Each engine's `/metrics` names for what the benchmark reads: tokens generated, prompt tokens, requests
# running now, and (vLLM only) its prefix cache's lookups and hits, in prompt tokens.
COUNTERS = {
    "llama.cpp": {"generated": "llamacpp:tokens_predicted_total", "prompt": "llamacpp:prompt_tokens_total",
                  "running": "llamacpp:requests_processing"},
    "vllm": {"generated": "vllm:generation_tokens_total", "prompt": "vllm:prompt_tokens_total",
             "running": "vllm:num_requests_running", "cache_queries": "vllm:prefix_cache_queries_total",
             "cache_hits": "vllm:prefix_cache_hits_total"},
}


def metrics(url: str, engine: str) -> dict[str, float]:
    """The engine's counters by the benchmark's names, each summed over its labels."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    names = {v: k for k, v in COUNTERS[engine].items()}
    out = dict.fromkeys(COUNTERS[engine], 0.0)
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        key = names.get(name.split("{", 1)[0])
        if key:
            out[key] += float(value)
    return out


class Server:
    """One server on 127.0.0.1 (`llama-server`, or vLLM's OpenAI server), started as `tessy serve`
    starts it, and a thread that reads its `/metrics` ten times a second."""

    def __init__(self, engine: str, cmd: list[str], port: int, log: Path, env: dict | None = None,
                 timeout_s: float = 300):
        self.engine, self.cmd, self.port = engine, cmd, port
        self.url = f"http://127.0.0.1:{port}"
        self.process = ServerProcess(cmd, self.url, env={**os.environ, **env} if env else None, log=log,
                                     name=f"{engine} ({log})")
        self.process.start().ready(timeout_s)
        self._readings: list[float] = []
        self._stop = threading.Event()
        self._thread = None

    @classmethod
    def llama(cls, binary: Path, gguf: Path, parallel: int, ctx_per_slot: int, log: Path, swa_full: bool) -> "Server":
        port = free_port()
        return cls("llama.cpp", server_command(binary, gguf, port=port, parallel=parallel, ctx_per_slot=ctx_per_slot,
                                               threads=1, swa_full=swa_full), port, log)

    @classmethod
    def vllm(cls, vllm, model: str, name: str, parallel: int, log: Path) -> "Server":
        from tessy.serve_vllm import model_for_vllm, vllm_command

        port = free_port()
        cmd, env = vllm_command(vllm, model_for_vllm(model)[0], served_name=name, port=port, parallel=parallel,
                                max_model_len=2048, kv_cache_gib=2, threads=1)
        # /reset_prefix_cache, so that every run starts on a cold cache without a start of minutes.
        return cls("vllm", cmd, port, log, {**env, "VLLM_SERVER_DEV_MODE": "1"}, timeout_s=1200)

    def reset_cache(self) -> None:
        """vLLM: forget every cached prefix, as a fresh server would have none."""
        request = urllib.request.Request(self.url + "/reset_prefix_cache", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=60) as r:
            r.read()

    def start_watch(self) -> dict:
        self._readings, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return metrics(self.url, self.engine)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._readings.append(metrics(self.url, self.engine)["running"])
            except OSError:
                pass
            self._stop.wait(0.1)

    def stop_watch(self, before: dict) -> dict:
        self._stop.set()
        self._thread.join()
        after = metrics(self.url, self.engine)
        moved = {k: after[k] - before[k] for k in after}
        busy = sum(1 for r in self._readings if r > 0) / len(self._readings) if self._readings else None
        out = {"generated_tokens": int(moved["generated"]), "prompt_tokens": int(moved["prompt"]),
               "busy_share": round(busy, 3) if busy is not None else None}
        if "cache_queries" in moved:  # the engine's own prefix-cache hit rate
            out["engine_cache_hit_rate"] = round(moved["cache_hits"] / moved["cache_queries"], 3) \
                if moved["cache_queries"] else None
        return out

    def close(self) -> None:
        self.process.stop()


def run_one(name: str, servers: dict, workdir: Path, args) -> dict:
    from tessy.config import load_config
    from tessy.engine.records import read_records
    from tessy.engine.synth import synthesize

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
                           "reusable_prompt_share": summary.get("roles", {}).get(role, {}).get("reusable_prompt_share"),
                           "stopped_at_cut": summary.get("roles", {}).get(role, {}).get("stopped_at_cut", 0)}
                    for role in servers},
        "engine": next(iter(servers.values())).engine,
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
    # vLLM only: its own counters (prefix_cache_hits_total over prefix_cache_queries_total).
    ("streamed, the engine's own prefix-cache hit rate, student >= 0.9", lambda v: v >= 0.9,
     lambda by: by["streamed"]["servers"]["student"].get("engine_cache_hit_rate") if "streamed" in by else None),
    ("streamed, the engine's own prefix-cache hit rate, teacher >= 0.9", lambda v: v >= 0.9,
     lambda by: by["streamed"]["servers"]["teacher"].get("engine_cache_hit_rate") if "streamed" in by else None),
]


def table(rows: list[dict], reference: dict | None) -> str:
    head = ["engine", "run", "driver", "k S/T", "samples", "wall s", "kept tok/s", "generated / kept",
            "cost vs Teacher-Only", "cache hit S/T (tessy)", "cache hit S/T (engine)", "reusable S/T", "busy S/T",
            "stopped at cut S/T"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cost = (f"{r['seconds_per_kept_token'] / reference['seconds_per_kept_token']:.2f}x"
                if reference and r["seconds_per_kept_token"] else "-")
        s, t = r["servers"]["student"], r["servers"]["teacher"]
        lines.append("| " + " | ".join(str(x) for x in [
            r["engine"], r["run"], r["driver"], f"{r['k'][0]}/{r['k'][1]}", r["samples"] if not r["errors"] else
            f"{r['samples']}+{r['errors']} err", f"{r['wall_s']:.1f}", r["kept_tokens_per_s"], r["generated_per_kept"],
            cost, f"{s['prefix_cache_hit_rate']} / {t['prefix_cache_hit_rate']}",
            f"{s.get('engine_cache_hit_rate', '-')} / {t.get('engine_cache_hit_rate', '-')}",
            f"{s.get('reusable_prompt_share', '-')} / {t.get('reusable_prompt_share', '-')}",
            f"{s['busy_share']} / {t['busy_share']}", f"{s['stopped_at_cut']} / {t['stopped_at_cut']}"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["llama.cpp", "vllm"], default="llama.cpp",
                        help="llama.cpp's llama-server (fresh servers per run) or vLLM's OpenAI server (one pair, "
                        "its prefix cache reset before every run)")
    parser.add_argument("--llama-server", help="the llama-server binary (default: .venv/bin/llama-server)")
    parser.add_argument("--vllm-python", help="the Python that has vLLM (default: as `tessy serve --engine vllm`)")
    parser.add_argument("--runs", help=f"comma list of {', '.join(RUNS)} (default: all the engine's runs)")
    parser.add_argument("--prompts-n", type=int, default=16)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=8, help="llama.cpp: slots per server")
    parser.add_argument("--max-think-tokens", type=int, default=192)
    parser.add_argument("--max-answer-tokens", type=int, default=48)
    parser.add_argument("--swa-full", action=argparse.BooleanOptionalAction, default=True,
                        help="give the sliding-window teacher a full-size cache (--swa-full), as `tessy serve` does")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs, records)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of all the runs, interleaved; the targets take the median round")
    args = parser.parse_args(argv)
    default_runs = [n for n in RUNS if args.engine == "llama.cpp" or RUNS[n][5] == "auto"]
    names = [n.strip() for n in args.runs.split(",") if n.strip()] if args.runs else default_runs
    unknown = [n for n in names if n not in default_runs]
    if unknown:
        parser.error(f"unknown runs {unknown} for {args.engine}; known: {', '.join(default_runs)}")
    from tessy.models import EMBEDDED, STUDENT_DEFAULT, TEACHER_DEFAULT

    workdir = Path(tempfile.mkdtemp(prefix="tessy-real-engine-"))
    write_prompts(workdir / "prompts.jsonl", args.prompts_n)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}"
    shared: dict[str, Server] = {}
    if args.engine == "vllm":
        from tessy.serve_vllm import find_vllm

        vllm = find_vllm(args.vllm_python)
        print(f"real engine: vLLM {vllm.version} ({vllm.distribution}, {vllm.python}), {started}, {machine}; the "
              f"client and both servers share these cores; {args.prompts_n} prompts, {args.in_flight} in flight; "
              f"student {STUDENT_DEFAULT}, teacher {TEACHER_DEFAULT}, as `tessy serve --engine vllm` serves them",
              flush=True)
        t = time.perf_counter()
        for role, model in (("student", STUDENT_DEFAULT), ("teacher", TEACHER_DEFAULT)):
            shared[role] = Server.vllm(vllm, model, model, args.in_flight, workdir / f"vllm.{role}.log")
        print(f"  both vLLM servers up in {time.perf_counter() - t:.0f} s", flush=True)
    else:
        binary = find_llama_server(args.llama_server)
        # The weights `tessy serve ROLE --weights auto --threads 1` serves here, timed once per machine.
        chosen = {role: choose_weights(binary, EMBEDDED[model](), threads=1, parallel=args.parallel, say=print)
                  for role, model in (("student", STUDENT_DEFAULT), ("teacher", TEACHER_DEFAULT))}
        student = {"packaged": EMBEDDED[STUDENT_DEFAULT](), "auto": chosen["student"]["path"]}
        teacher = chosen["teacher"]["path"]
        print(f"real engine: llama-server ({binary}), {started}, {machine}; the client and both servers share "
              f"these cores; {args.prompts_n} prompts, {args.in_flight} in flight, --parallel {args.parallel}; "
              f"student {student['auto'].name} (streamed-q4_1: {student['packaged'].name}), teacher {teacher.name}"
              f"{' with --swa-full' if args.swa_full else ''}; as `tessy serve --weights auto` chooses them here: "
              + "; ".join(f"{role}: {c['why']}" for role, c in chosen.items()))
    rounds = []
    try:
        for r in range(1, args.repeat + 1):  # the runs interleave, so a slow stretch of the machine hits them all
            rows = []
            for name in names:
                servers = dict(shared)
                try:
                    if shared:
                        for s in shared.values():
                            s.reset_cache()
                    else:
                        ctx = 2048
                        servers["student"] = Server.llama(binary, student[RUNS[name][5]], args.parallel, ctx,
                                                          workdir / f"{name}.{r}.student.log", args.swa_full)
                        servers["teacher"] = Server.llama(binary, teacher, args.parallel, ctx,
                                                          workdir / f"{name}.{r}.teacher.log", args.swa_full)
                    row = run_one(name, servers, workdir, args)
                finally:
                    if not shared:
                        for s in servers.values():
                            s.close()
                row["round"] = r
                rows.append(row)
                print(f"  round {r}, {name}: {row['samples']} samples in {row['wall_s']} s, {row['kept_tokens_per_s']} "
                      f"kept tok/s, {row['generated_per_kept']} generated per kept, client CPU {row['client_cpu_s']} s",
                      flush=True)
            rounds.append(rows)
    finally:
        for s in shared.values():
            s.close()
    print(f"\nMeasured {started} on {machine} (real {args.engine} servers, not simulated):")
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
