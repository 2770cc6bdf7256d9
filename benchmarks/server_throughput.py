"""Throughput of the `openai` backend against a real server at concurrency 1 and 8.

Starts `python -m llama_cpp.server` on 127.0.0.1 with the packaged SmolLM2 GGUF and measures, side
by side in one run:

1. Raw k-token requests: N sessions, each asking for k new tokens R times (the loop's call pattern),
   with at most C requests in flight (C = 1, then C = 8): generated tokens per second.
2. `tessy synth` end to end through the server (both roles served by it): batch size and
   concurrency 1, then 8, on the same prompts: generated tokens per second and wall time.

Each part runs in the order 1, 8, 8, 1 after an untimed warm-up round (a first round on a cold
server was 3x slower than the same round warm, which an order 1-then-8 would credit to concurrency
8); each figure is the mean of its two runs. It prints each figure and the ratio concurrency 8 /
concurrency 1. The ratio says how much the
server gains from requests in flight at once: an engine that batches them (vLLM, SGLang,
llama.cpp's own `llama-server --parallel`) gains; one that runs them one at a time does not.

    TESSY_CACHE=/tmp/tessy-cache .venv/bin/python benchmarks/server_throughput.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DEMO_PROMPTS = Path(__file__).resolve().parent.parent / "tessy" / "data" / "demo_prompts.jsonl"


def start_server(log: Path):
    from tessy.models import _smollm2_gguf

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(_smollm2_gguf()), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "4096", "--n_threads", "2", "--interrupt_requests", "False"]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/models", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    raise RuntimeError("llama_cpp.server did not start:\n" + log.read_text(errors="replace")[-2000:])


def raw_requests(url: str, tokenizer, concurrency: int, sessions: int, rounds: int, k: int) -> dict:
    from tessy.backends import Sampling, Span
    from tessy.backends.openai import EndpointPool, OpenAIBackend
    from tessy.profiles import PLAIN, render_prompt
    from tessy.prompts import read_prompts

    pool = EndpointPool([url], None, timeout_s=300, max_retries=0, concurrency=concurrency)
    backend = OpenAIBackend(tokenizer, pool, Sampling(0.6, 1.0, 0))
    prompts = read_prompts(DEMO_PROMPTS)[:sessions]
    ss = [backend.start(render_prompt(PLAIN, tokenizer, list(p.messages))[0]) for p in prompts]
    backend.generate(ss, [k] * len(ss), [()] * len(ss))  # the probe and a warm server, outside the clock
    for s in ss:
        backend.rollback(s, len(s.ids) - s.state.pieces[0].n)
    tokens, t0 = 0, time.perf_counter()
    for _ in range(rounds):
        spans = backend.generate(ss, [k] * len(ss), [()] * len(ss))
        assert all(isinstance(s, Span) for s in spans), spans
        tokens += sum(len(s.ids) for s in spans)
    wall = time.perf_counter() - t0
    pool.close()
    return {"tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 2)}


def synth_run(url: str, concurrency: int, n_prompts: int, workdir: Path) -> dict:
    from tessy.config import load_config
    from tessy.synth import load_backends, synthesize

    config = load_config(max_think_tokens=32, max_answer_tokens=8, batch_size=concurrency)
    for role, seed in (("student", 0), ("teacher", 1)):
        m = getattr(config, role)
        m.model, m.backend, m.urls, m.seed, m.concurrency = "smollm2-135m-instruct", "openai", [url], seed, concurrency
    backends = load_backends(config)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"synth-c{concurrency}.jsonl"
    summary = synthesize(config, DEMO_PROMPTS, out, limit=n_prompts, backends=backends, progress=False)
    for b in backends.values():
        b.close()
    assert summary["errors"] == 0, summary
    return {"samples": summary["samples"], "wall_s": summary["wall_s"],
            "generated_tokens_per_s": summary["generated_tokens_per_s"],
            "kept_tokens_per_s": summary["kept_tokens_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8, help="sessions in the raw-request part")
    parser.add_argument("--rounds", type=int, default=2, help="k-token requests per session")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=4, help="prompts in the synth part")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from tessy.backends.openai import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    workdir = Path(tempfile.mkdtemp(prefix="tessy-bench-"))
    proc, url = start_server(workdir / "server.log")
    results = {"server": "llama-cpp-python server, SmolLM2-135M-Instruct Q4_1, CPU", "cores": os.cpu_count()}
    try:
        runs = {}
        for _i, c in enumerate((1, 8, 8, 1)):
            runs.setdefault(f"raw_c{c}", []).append(raw_requests(url, tokenizer, c, args.sessions, args.rounds, args.k))
            print(f"raw k={args.k} requests, concurrency {c}: {runs[f'raw_c{c}'][-1]}", flush=True)
        for i, c in enumerate((1, 8, 8, 1)):
            runs.setdefault(f"synth_c{c}", []).append(synth_run(url, c, args.prompts, workdir / f"run{i}"))
            print(f"tessy synth, batch size and concurrency {c}: {runs[f'synth_c{c}'][-1]}", flush=True)
        results["runs"] = runs
        for key, rs in runs.items():
            results[key] = {k: round(sum(r[k] for r in rs) / len(rs), 2) for k in rs[0]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    raw = results["raw_c8"]["tokens_per_s"] / results["raw_c1"]["tokens_per_s"]
    syn = results["synth_c8"]["generated_tokens_per_s"] / results["synth_c1"]["generated_tokens_per_s"]
    results["ratio_raw_c8_over_c1"], results["ratio_synth_c8_over_c1"] = round(raw, 2), round(syn, 2)
    print(f"\nthroughput ratio, concurrency 8 / concurrency 1: raw requests {raw:.2f}x, tessy synth {syn:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
