"""A simulated continuous-batching OpenAI-compatible server: one vLLM replica, with no model in it.

    python benchmarks/sim_server.py --port 8123 --corpus corpus.json \
        [--step-ms 20 --per-seq-ms 0.08 --prefill-ms-per-token 0.05 --block 16 --max-num-seqs 512 \
         --p-close 0.04 --p-eos 0.01 --cache-blocks 0]

Standard library only, so it starts in a fraction of a second; it prints nothing but errors.

What it models (as vLLM does it):
- **Engine steps.** One engine thread runs a loop of steps. While at least one sequence is active,
  a step lasts `step_ms + per_seq_ms * n_active + prefill_ms_per_token * (uncached prompt tokens of
  the sequences admitted in this step)`, and every active sequence gets one new token per step (the
  step that admits a sequence also yields its first token). With nothing active the engine waits
  for an arrival (idle, not busy). Requests beyond `--max-num-seqs` wait in a FIFO queue. A request
  that arrives during a step joins at the next one.
- **Automatic prefix caching.** Full `--block`-token blocks keyed by a chained hash of their
  contents. At admission `cached_tokens = block * (leading full blocks of the prompt found in the
  cache)`, capped so that at least one prompt token is computed (vLLM v1's rule). When a request
  finishes, the full blocks of prompt + output go into the cache. Unbounded by default;
  `--cache-blocks N` keeps the N most recently used blocks (LRU).
- **Sampling.** The "model" is the corpus file (written by benchmarks/scale_sim.py): sentences
  `{"ids", "text", "offsets"?}` in the client's tokenizer, `"eos_id"` and `"markers"` (text -> ids,
  e.g. `"</think>"`). A request's output is drawn from `random.Random` seeded with the request's
  `seed` and a hash of its prompt (a random seed when it has none), so the same seed and prompt
  always give the same output. Sentences are drawn at random (with replacement) and emitted one
  token per step. After each whole sentence, with probability `--p-close` the ids of a marker that
  is in the request's `stop` list are emitted and the request stops there (finish "stop", the marker
  included, as with `include_stop_str_in_output`), and with probability `--p-eos` `eos_id` is
  emitted and it stops (finish "stop"). Otherwise it stops at `max_tokens` (finish "length").
  A stop string that is not a corpus marker never matches (the sentences hold no newlines).

What it does not model: any real model or its quality; KV-cache memory (no preemption, no limit on
cached blocks unless `--cache-blocks`); chunked prefill limits, speculative decoding, tensor
parallelism; more than one replica (run several processes for that). Timing is by `time.sleep` on
whatever machine runs it: on a small shared machine a starved engine thread makes steps longer than
planned (see `overrun_s` in /stats). "Busy" means at least one sequence is active, not GPU
utilisation.

Endpoints:
- `POST /v1/completions` with a token-id prompt (a list of ints). Used fields: `prompt`,
  `max_tokens` (default 16), `seed`, `stop`, `return_token_ids`; `include_stop_str_in_output`,
  temperature, top_p and the rest are accepted and ignored (the stop marker is always included). A
  string prompt is answered 400 with a JSON error. The answer has `choices[0].text`,
  `finish_reason`, `token_ids` (only with `return_token_ids`) and `usage` with
  `prompt_tokens_details.cached_tokens`.
- `GET /v1/models`: `{"object": "list", "data": [{"id": "sim", "object": "model"}]}`.
- `GET /health`: `{"ok": true}` once the server listens (what tessy.serve.ServerProcess waits for).
- `GET /stats`: `busy_s` (time with >= 1 active sequence), `wall_s` (since start or the last
  reset), `requests`, `requests_max1` (requests with `max_tokens` <= 1: a client's probes),
  `prompt_tokens`, `cached_prompt_tokens`, `generated_tokens`, `bytes_in` (request body bytes on
  /completions), `mean_active` (time-weighted mean of active sequences while busy), `max_active`,
  `steps`, `overrun_s` (how much longer the steps took than planned), `waiting_max`, `cache_blocks`
  (blocks in the prefix cache), `cpu_s` (this process's CPU time: all threads).
- `POST /stats/reset` zeroes all of those and also empties the prefix cache, so each run starts cold.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import threading
import time
import uuid
import zlib
from array import array
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Seq:
    __slots__ = ("prompt", "max_tokens", "marker", "marker_text", "rng", "out", "buf", "pos", "kind", "pieces",
                 "finish", "cached", "done", "t_arrive")

    def __init__(self, prompt, max_tokens, marker, marker_text, rng):
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.marker = marker  # ids of a corpus marker that is in the request's stop list, or None
        self.marker_text = marker_text
        self.rng = rng
        self.out: list[int] = []
        self.buf: list[int] = []  # the sentence (or marker / eos) being emitted
        self.pos = 0
        self.kind = "start"  # start | sentence | end
        self.pieces: list[list] = []  # [kind, sentence index or text, tokens emitted] for the text
        self.finish = None
        self.cached = 0
        self.done = threading.Event()
        self.t_arrive = time.perf_counter()


class Engine:
    def __init__(self, corpus: dict, step_ms: float, per_seq_ms: float, prefill_ms_per_token: float, block: int,
                 max_num_seqs: int, p_close: float, p_eos: float, cache_blocks: int):
        self.sentences = corpus["sentences"]
        self.eos_id = corpus.get("eos_id")
        self.markers = {text: list(ids) for text, ids in (corpus.get("markers") or {}).items()}
        self.step_s, self.per_seq_s, self.prefill_s = step_ms / 1000, per_seq_ms / 1000, prefill_ms_per_token / 1000
        self.block, self.max_num_seqs = block, max_num_seqs
        self.p_close, self.p_eos = p_close, p_eos
        self.cache_blocks = cache_blocks
        self.cache: collections.OrderedDict = collections.OrderedDict()  # block hash -> None, LRU order
        self.cond = threading.Condition()
        self.waiting: collections.deque = collections.deque()
        self.running: list[Seq] = []
        self.reset_stats()
        threading.Thread(target=self.loop, name="engine", daemon=True).start()

    # --- stats -------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        with self.cond:
            self.t0 = time.perf_counter()
            self.cpu0 = time.process_time()
            self.busy_s = self.active_time = self.overrun_s = 0.0
            self.requests = self.requests_max1 = self.prompt_tokens = self.cached_prompt_tokens = 0
            self.generated_tokens = self.bytes_in = self.max_active = self.steps = self.waiting_max = 0
            self.cache.clear()

    def stats(self) -> dict:
        with self.cond:
            busy = self.busy_s
            return {
                "busy_s": round(busy, 4), "wall_s": round(time.perf_counter() - self.t0, 4), "requests": self.requests,
                "requests_max1": self.requests_max1, "prompt_tokens": self.prompt_tokens,
                "cached_prompt_tokens": self.cached_prompt_tokens, "generated_tokens": self.generated_tokens,
                "bytes_in": self.bytes_in, "mean_active": round(self.active_time / busy, 3) if busy else 0.0,
                "max_active": self.max_active, "steps": self.steps, "overrun_s": round(self.overrun_s, 4),
                "waiting_max": self.waiting_max, "cache_blocks": len(self.cache),
                "cpu_s": round(time.process_time() - self.cpu0, 3),
            }

    # --- prefix cache --------------------------------------------------------------------------
    def _block_hashes(self, ids: list[int], n_blocks: int):
        h, b = 0, self.block
        for i in range(n_blocks):
            h = hash((h, tuple(ids[i * b:(i + 1) * b])))
            yield h

    def _lookup(self, prompt: list[int]) -> int:
        hits = 0
        for h in self._block_hashes(prompt, (len(prompt) - 1) // self.block):  # at least one token computed
            if h not in self.cache:
                break
            if self.cache_blocks:
                self.cache.move_to_end(h)
            hits += 1
        return hits * self.block

    def _insert(self, ids: list[int]) -> None:
        for h in self._block_hashes(ids, len(ids) // self.block):
            if h in self.cache:
                if self.cache_blocks:
                    self.cache.move_to_end(h)
            else:
                self.cache[h] = None
        while self.cache_blocks and len(self.cache) > self.cache_blocks:
            self.cache.popitem(last=False)

    # --- requests ------------------------------------------------------------------------------
    def submit(self, seq: Seq, nbytes: int) -> None:
        with self.cond:
            self.requests += 1
            self.requests_max1 += seq.max_tokens <= 1
            self.bytes_in += nbytes
            self.waiting.append(seq)
            self.waiting_max = max(self.waiting_max, len(self.waiting))
            self.cond.notify()

    def _next_token(self, seq: Seq) -> int:
        if seq.pos >= len(seq.buf):  # a whole sentence is out (or nothing yet): what comes next
            r = seq.rng.random() if seq.kind == "sentence" else None
            if r is not None and seq.marker is not None and r < self.p_close:
                seq.buf, seq.kind = seq.marker, "end"
                seq.pieces.append(["text", seq.marker_text, 0])
            elif r is not None and self.eos_id is not None and r >= 1.0 - self.p_eos:
                seq.buf, seq.kind = [self.eos_id], "end"
                seq.pieces.append(["text", "", 0])
            else:
                i = seq.rng.randrange(len(self.sentences))
                seq.buf, seq.kind = self.sentences[i]["ids"], "sentence"
                seq.pieces.append(["sentence", i, 0])
            seq.pos = 0
        token = seq.buf[seq.pos]
        seq.pos += 1
        seq.pieces[-1][2] += 1
        return token

    def _finished(self, seq: Seq) -> str | None:
        if seq.kind == "end" and seq.pos >= len(seq.buf):
            return "stop"
        if len(seq.out) >= seq.max_tokens:
            return "length"
        return None

    def text_of(self, seq: Seq) -> str:
        parts = []
        for kind, what, n in seq.pieces:
            if kind == "sentence":
                s = self.sentences[what]
                if n >= len(s["ids"]):
                    parts.append(s["text"])
                elif s.get("offsets") and s["offsets"][n - 1] >= 0:
                    parts.append(s["text"][: s["offsets"][n - 1]])
                else:
                    parts.append(s["text"][: len(s["text"]) * n // len(s["ids"])])
            else:
                parts.append(what)  # a marker (cut short only at max_tokens; approximate) or EOS
        return "".join(parts)

    # --- the engine loop -----------------------------------------------------------------------
    def loop(self) -> None:
        while True:
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - keep serving; say what happened
                print(f"sim_server engine error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                time.sleep(0.01)

    def _step(self) -> None:
        with self.cond:
            while not self.running and not self.waiting:
                self.cond.wait()
            t_start = time.perf_counter()
            uncached = 0
            while self.waiting and len(self.running) < self.max_num_seqs:
                seq = self.waiting.popleft()
                seq.cached = self._lookup(seq.prompt)
                uncached += len(seq.prompt) - seq.cached
                self.prompt_tokens += len(seq.prompt)
                self.cached_prompt_tokens += seq.cached
                self.running.append(seq)
        n = len(self.running)
        planned = self.step_s + self.per_seq_s * n + self.prefill_s * uncached
        finished = []
        for seq in self.running:
            seq.out.append(self._next_token(seq))
            seq.finish = self._finished(seq)
            if seq.finish:
                finished.append(seq)
        left = t_start + planned - time.perf_counter()
        if left > 0:
            time.sleep(left)
        t_end = time.perf_counter()
        with self.cond:
            dt = t_end - t_start
            self.busy_s += dt
            self.active_time += n * dt
            self.overrun_s += max(dt - planned, 0.0)
            self.max_active = max(self.max_active, n)
            self.steps += 1
            self.generated_tokens += n
            if finished:
                self.running = [s for s in self.running if not s.finish]
                for seq in finished:
                    self._insert(seq.prompt + seq.out)
        for seq in finished:
            seq.done.set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    engine: Engine = None  # set in main

    def log_message(self, format, *args):  # noqa: A002 - quiet: errors only
        pass

    def _send(self, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        head = (f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.wfile.write(head + body)  # one write: no Nagle / delayed-ACK stall between head and body

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"object": "error", "error": {"message": message, "type": "BadRequestError", "code": status},
                            "message": message})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": "sim", "object": "model"}]})
        elif path == "/health":
            self._send(200, {"ok": True})
        elif path == "/stats":
            self._send(200, self.engine.stats())
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self):  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        raw = self._body()
        if path == "/stats/reset":
            self.engine.reset_stats()
            self._send(200, {"ok": True})
            return
        if path not in ("/v1/completions", "/completions"):
            self._error(404, f"no route {self.path}")
            return
        try:
            req = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._error(400, "body is not JSON")
            return
        prompt = req.get("prompt")
        if (not isinstance(prompt, list) or not prompt
                or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
            self._error(400, "this simulated server takes token-id prompts only (a non-empty list of ints)")
            return
        max_tokens = req.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            self._error(400, "max_tokens must be a positive integer")
            return
        stop = req.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        engine = self.engine
        marker_text = next((s for s in stop if s in engine.markers), None)
        seed = req.get("seed")
        if seed is None:
            seed = random.getrandbits(62)
        rng = random.Random(f"{seed}|{len(prompt)}|{zlib.crc32(array('q', prompt).tobytes())}")
        seq = Seq(prompt, max_tokens, engine.markers.get(marker_text), marker_text, rng)
        engine.submit(seq, len(raw))
        seq.done.wait()
        choice = {"index": 0, "text": engine.text_of(seq), "finish_reason": seq.finish, "logprobs": None}
        if req.get("return_token_ids"):
            choice["token_ids"] = seq.out
        self._send(200, {
            "id": f"cmpl-{uuid.uuid4().hex[:16]}", "object": "text_completion", "created": int(time.time()),
            "model": req.get("model") or "sim", "choices": [choice],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(seq.out),
                      "total_tokens": len(prompt) + len(seq.out),
                      "prompt_tokens_details": {"cached_tokens": seq.cached}},
        })


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096  # the default listen backlog (5) drops bursts of hundreds of connects


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--corpus", required=True, help="JSON: sentences [{ids, text, offsets?}], eos_id, markers")
    ap.add_argument("--step-ms", type=float, default=20.0, help="fixed cost of one engine step")
    ap.add_argument("--per-seq-ms", type=float, default=0.08, help="cost per active sequence per step")
    ap.add_argument("--prefill-ms-per-token", type=float, default=0.05, help="cost per uncached prompt token admitted")
    ap.add_argument("--block", type=int, default=16, help="prefix-cache block size in tokens")
    ap.add_argument("--max-num-seqs", type=int, default=512, help="most sequences active at once")
    ap.add_argument("--p-close", type=float, default=0.04, help="chance after a sentence to emit a stop marker")
    ap.add_argument("--p-eos", type=float, default=0.01, help="chance after a sentence to emit EOS")
    ap.add_argument("--cache-blocks", type=int, default=0, help="LRU bound on cached blocks; 0 = unbounded")
    args = ap.parse_args(argv)
    with open(args.corpus, encoding="utf-8") as f:
        corpus = json.load(f)
    if not corpus.get("sentences"):
        sys.exit("sim_server: the corpus has no sentences")
    Handler.engine = Engine(corpus, args.step_ms, args.per_seq_ms, args.prefill_ms_per_token, args.block,
                            args.max_num_seqs, args.p_close, args.p_eos, args.cache_blocks)
    server = Server((args.host, args.port), Handler)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
