"""A tiny OpenAI-compatible HTTP server on 127.0.0.1 for the fault shapes a real server rarely shows
on demand: HTTP 500, a malformed answer, an answer slower than the timeout, a stream that breaks.

It speaks like vLLM (`ids=True`: token-id prompts in, `token_ids` out, `usage` with cached prompt
tokens), like llama-cpp-python's server (`ids=False`: a token-id prompt is refused with 422, text in
and out, no `/completion` route), or like llama.cpp's `llama-server` (`native=True`: `/v1/completions`
takes token ids but answers text only, and `/completion` at the root takes token ids and returns the
sampled ones with `return_tokens`, `stop_type`, `tokens_evaluated` and `timings.cache_n`). Its "model"
writes the letters of `alphabet` in turn, one character per token (tests/scripted.py's
CharTokenizer), starting where the prompt's length (and, with `seeded`, the request's seed) says. In
ids and native modes it stops at a stop string it was sent (included, finish "stop" / stop_type
"word"), and in native mode also at the character "\\x00" (EOS, stop_type "eos"), as llama.cpp does.

A request with `"stream": true` is answered with server-sent events, one token per event, in the
shape of its mode: vLLM's (`choices[0].text` and `token_ids`, a usage event, `data: [DONE]`),
llama.cpp's own (`content`, `tokens`, `tokens_predicted`, and a last event with `stop: true`, no
[DONE]) or plain OpenAI text. `stream_faults` (one per streamed request) break a stream on purpose;
`streams` records how many events each stream wrote before it ended or the client went away.

For the scheduler's tests it can also hold a request (`hold_if`) until `release` is set, which
another server's `on_request` hook may do when a request reaches it. For throttling, the faults "429"
and "503" carry `Retry-After: <retry_after>` where that is set; `refuse_above` answers 429 (with the
same header) to every request beyond that many in flight, and `refuse_next` to the next that many
requests of any kind (the mode probe's too), counting them in `refused`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Ways to break a stream, after `fault_after` events: an event that is not JSON; the connection
# closed without the last event; an event left out (as llama.cpp leaves out a token that ends inside
# a UTF-8 character); an error event; or no fault, every event written in 3-byte pieces.
STREAM_FAULTS = ("ok", "malformed", "drop", "gap", "error", "split")


class FakeServer:
    def __init__(self, ids: bool = False, alphabet: str = "abcdefghij ", delay_s: float = 0.0, native: bool = False):
        self.ids = ids
        self.native = native
        self.alphabet = alphabet
        self.delay_s = delay_s
        # one per /completions request: "500", "400", "429", "503", "json", "shape", "slow", "ok"
        self.faults: deque[str] = deque()
        self.retry_after: str | None = None  # the Retry-After header of a 429 or 503, where set
        self.refuse_above: int | None = None  # more requests than this in flight: 429
        self.refuse_next = 0  # the next this many POSTs: 429
        self.refused = 0
        self.always: str | None = None  # a fault for every request
        self.poison: str | None = None  # fail (500) every request whose prompt contains this text
        self.requests: list[dict] = []
        self.paths: list[str] = []  # the path of each request in `requests`
        self.raw: list[bytes] = []  # the request bodies as sent
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.slow_s = 2.0
        self.seeded = False  # the output depends on the request's seed too
        self.slow_if: str | None = None  # requests whose prompt holds this text take `slow_if_s`
        self.slow_if_s = 0.2
        self.hold_if = None  # (prompt text) -> bool: hold that request until `release` is set
        self.hold_s = 3.0  # ... or until this many seconds have passed
        self.release = threading.Event()
        self.held: list[str] = []  # per held request: "released" or "timed out"
        self.on_request = None  # called as each model request (not the probe) arrives
        self.stream_faults: deque[str] = deque()  # one of STREAM_FAULTS per streamed model request
        self.fault_after = 2  # events written before a stream's fault
        self.stream_delay_s = 0.0  # between two events of a stream
        self.ignore_stream = False  # answer a streaming request whole, as a server that cannot stream
        self.streams: list[dict] = []  # per stream: {"events": written, "gone": the client closed it first}
        self.chat_reply = None  # (request body) -> the /chat/completions answer; None echoes "ok: " + the last message
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.root + "/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def completions(self) -> list[dict]:
        """The /completions bodies the model answered (the probe excluded)."""
        return [r for r in self.requests if "top_p" in r]  # the mode probe carries no sampling

    # --- the model -------------------------------------------------------------------------------
    def _write(self, body: dict, text_prompt: str, native: bool) -> tuple[str, str]:
        """(the text the model writes for this request, how it ends: llama.cpp's stop_type)."""
        n = int(body.get("n_predict" if native else "max_tokens", 16))
        start = (len(text_prompt) + (int(body.get("seed") or 0) if self.seeded else 0)) % len(self.alphabet)
        text = "".join(self.alphabet[(start + i) % len(self.alphabet)] for i in range(n))
        stops = [s for s in body.get("stop") or [] if s] if native or self.ids else []
        for i in range(1, len(text) + 1):
            if native and text[i - 1] == "\x00":
                return text[:i], "eos"
            if any(s in text[:i] for s in stops):
                return text[:i], "word"  # the stop string included, as vLLM's include_stop_str_in_output
        return text, "limit"

    def _answer(self, body: dict, native: bool = False) -> tuple[int, bytes | list[bytes]]:
        """The status and body of one model request, or for a stream the status and its events."""
        if self.ignore_stream:
            body = {k: v for k, v in body.items() if k != "stream"}
        prompt = body.get("prompt")
        if isinstance(prompt, list) and not (self.ids or self.native):
            return 422, b'{"detail": "prompt must be a string"}'
        text_prompt = "".join(chr(t) for t in prompt) if isinstance(prompt, list) else prompt
        if "top_p" not in body:  # the backend's mode probe: faults are for the model's requests
            fault = "ok"
        else:
            fault = self.always or (self.faults.popleft() if self.faults else "ok")
        if self.poison and self.poison in text_prompt:
            fault = "500"
        if fault == "500":
            return 500, b'{"error": "internal"}'
        if fault == "400":
            return 400, b'{"error": "bad request"}'
        if fault in ("429", "503"):
            return int(fault), b'{"error": "overloaded"}'
        if fault == "json":
            return 200, b"<html>not json"
        if fault == "shape":
            return 200, b'{"choices": []}'
        if fault == "slow":
            time.sleep(self.slow_s)
        if "top_p" in body:
            if self.on_request is not None:
                self.on_request()
            if self.slow_if and self.slow_if in text_prompt:
                time.sleep(self.slow_if_s)
            if self.hold_if is not None and self.hold_if(text_prompt):
                self.release.clear()
                self.held.append("released" if self.release.wait(self.hold_s) else "timed out")
        text, stop_type = self._write(body, text_prompt, native)
        if native:
            return 200, self._native(body, prompt, text, stop_type)
        reason = "stop" if stop_type == "word" else "length"
        if body.get("stream"):
            return 200, self._openai_events(body, prompt, text, reason)
        choice = {"index": 0, "text": text, "finish_reason": reason}
        answer = {"id": "cmpl-fake", "object": "text_completion", "model": "fake", "choices": [choice]}
        if self.ids and body.get("return_token_ids"):
            choice["token_ids"] = [ord(c) for c in text]
            answer["usage"] = self._usage(prompt, len(text))
        return 200, json.dumps(answer).encode()

    @staticmethod
    def _usage(prompt, n: int) -> dict:
        # As vLLM with --enable-prompt-tokens-details; a fixed half stands in for its prefix cache.
        return {"prompt_tokens": len(prompt), "completion_tokens": n,
                "prompt_tokens_details": {"cached_tokens": len(prompt) // 2}}

    def _openai_events(self, body: dict, prompt, text: str, reason: str) -> list[bytes]:
        events = []
        for i, c in enumerate(text):
            choice = {"index": 0, "text": c, "finish_reason": reason if i == len(text) - 1 else None}
            if self.ids and body.get("return_token_ids"):
                choice["token_ids"] = [ord(c)]
            events.append({"id": "cmpl-fake", "object": "text_completion", "choices": [choice]})
        if self.ids and (body.get("stream_options") or {}).get("include_usage"):
            events.append({"id": "cmpl-fake", "object": "text_completion", "choices": [],
                           "usage": self._usage(prompt, len(text))})
        return [sse(e) for e in events] + [b"data: [DONE]\n\n"]

    def _native(self, body: dict, prompt, text: str, stop_type: str) -> bytes | list[bytes]:
        ids = [ord(c) for c in text]
        figures = {"tokens_evaluated": len(prompt),
                   "timings": {"cache_n": len(prompt) // 2, "prompt_n": len(prompt) - len(prompt) // 2}}
        last = {"content": text, "tokens": ids if body.get("return_tokens") else [],
                "stop": True, "stop_type": stop_type, "stopping_word": "", "tokens_predicted": len(ids),
                "tokens_cached": len(prompt) + len(ids), "prompt": "<the prompt again>",
                "generation_settings": {"n_predict": body.get("n_predict")}, **figures}
        if not body.get("stream"):
            return json.dumps(last).encode()
        events = [{"content": c, "tokens": [t], "stop": False, "tokens_predicted": i + 1, **figures}
                  for i, (c, t) in enumerate(zip(text, ids))]
        return [sse(e) for e in events] + [sse({**last, "content": "", "tokens": []})]

    # --- HTTP --------------------------------------------------------------------------------------
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if status in (429, 503) and server.retry_after is not None:
                    self.send_header("Retry-After", server.retry_after)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout)

            def _stream(self, events: list[bytes]) -> None:
                """Server-sent events, then the connection closes (HTTP/1.0: no length, no chunks)."""
                fault = server.stream_faults.popleft() if server.stream_faults else "ok"
                record = {"events": 0, "gone": False, "fault": fault}
                server.streams.append(record)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for i, event in enumerate(events):
                        if i == server.fault_after:
                            if fault == "malformed":
                                event = b"data: {not json\n\n"
                            elif fault == "drop":
                                return
                            elif fault == "gap":
                                continue
                            elif fault == "error":
                                event = sse({"error": {"code": 500, "message": "boom", "type": "server_error"}})
                        if fault == "split":
                            for j in range(0, len(event), 3):
                                self.wfile.write(event[j : j + 3])
                                self.wfile.flush()
                                time.sleep(0.0005)
                        else:
                            self.wfile.write(event)
                            self.wfile.flush()
                        record["events"] += 1
                        if fault == "error" and i == server.fault_after:
                            return
                        if server.stream_delay_s:
                            time.sleep(server.stream_delay_s)
                except (BrokenPipeError, ConnectionResetError):
                    record["gone"] = True

            def do_GET(self):
                if self.path.endswith("/models"):
                    self._send(200, b'{"object": "list", "data": [{"id": "fake-model", "object": "model"}]}')
                else:
                    self._send(404, b"{}")

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.paths.append(self.path)
                    server.raw.append(raw)
                    server.headers.append(dict(self.headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    refuse = server.refuse_next > 0 or (server.refuse_above is not None
                                                        and server.in_flight > server.refuse_above)
                    server.refuse_next = max(server.refuse_next - 1, 0)
                    server.refused += refuse
                try:
                    if server.delay_s and not refuse:
                        time.sleep(server.delay_s)
                    if refuse:
                        status, payload = 429, b'{"error": "too many requests"}'
                    elif self.path.endswith("/chat/completions"):
                        content = (server.chat_reply(body) if server.chat_reply is not None
                                   else "ok: " + body["messages"][-1]["content"])
                        message = {"role": "assistant", "content": content}
                        reply = {"choices": [{"index": 0, "message": message}]}
                        status, payload = 200, json.dumps(reply).encode()
                    elif self.path == "/completion":
                        status, payload = server._answer(body, native=True) if server.native else (404, b"{}")
                    else:
                        status, payload = server._answer(body)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                if isinstance(payload, list):
                    self._stream(payload)
                else:
                    self._send(status, payload)

        return Handler


def sse(event: dict) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"
