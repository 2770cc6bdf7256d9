"""A tiny OpenAI-compatible HTTP server on 127.0.0.1 for the fault shapes a real server rarely shows
on demand: HTTP 500, a malformed answer, an answer slower than the timeout.

It speaks like vLLM (`ids=True`: token-id prompts in, `token_ids` out, `usage` with cached prompt
tokens) or like llama.cpp's server (`ids=False`: a token-id prompt is refused with 422, text in and
out). Its "model" writes the letters of `alphabet` in turn, one character per token
(tests/scripted.py's CharTokenizer), starting where the prompt's length (and, with `seeded`, the
request's seed) says.

For the scheduler's tests it can also hold a request (`hold_if`) until `release` is set, which
another server's `on_request` hook may do when a request reaches it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    def __init__(self, ids: bool = False, alphabet: str = "abcdefghij ", delay_s: float = 0.0):
        self.ids = ids
        self.alphabet = alphabet
        self.delay_s = delay_s
        self.faults: deque[str] = deque()  # one per /completions request: "500", "400", "json", "shape", "slow", "ok"
        self.always: str | None = None  # a fault for every request
        self.poison: str | None = None  # fail (500) every request whose prompt contains this text
        self.requests: list[dict] = []
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
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def completions(self) -> list[dict]:
        """The /completions bodies the model answered (the probe excluded)."""
        return [r for r in self.requests if "top_p" in r]  # the mode probe carries no sampling

    def _answer(self, body: dict) -> tuple[int, bytes]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and not self.ids:
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
        n = int(body.get("max_tokens", 16))
        start = (len(text_prompt) + (int(body.get("seed") or 0) if self.seeded else 0)) % len(self.alphabet)
        text = "".join(self.alphabet[(start + i) % len(self.alphabet)] for i in range(n))
        choice = {"index": 0, "text": text, "finish_reason": "length"}
        answer = {"id": "cmpl-fake", "object": "text_completion", "model": "fake", "choices": [choice]}
        if self.ids and body.get("return_token_ids"):
            choice["token_ids"] = [ord(c) for c in text]
            # As vLLM with --enable-prompt-tokens-details; a fixed half stands in for its prefix cache.
            answer["usage"] = {"prompt_tokens": len(prompt), "completion_tokens": n,
                               "prompt_tokens_details": {"cached_tokens": len(prompt) // 2}}
        return 200, json.dumps(answer).encode()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout)

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
                    server.raw.append(raw)
                    server.headers.append(dict(self.headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.delay_s:
                        time.sleep(server.delay_s)
                    if self.path.endswith("/chat/completions"):
                        message = {"role": "assistant", "content": "ok: " + body["messages"][-1]["content"]}
                        reply = {"choices": [{"index": 0, "message": message}]}
                        status, payload = 200, json.dumps(reply).encode()
                    else:
                        status, payload = server._answer(body)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                self._send(status, payload)

        return Handler
