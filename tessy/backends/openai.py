"""The `openai` backend: any OpenAI-compatible `/v1/completions` server (vLLM, SGLang, llama.cpp).

Only the generation moves to the server. The role's identity stays in tessy: its tokenizer (from the
config's `model`) counts and encodes, its profile renders the prompt, its sampling goes into every
request.

Each endpoint is probed once (`OpenAIBackend._probe`) and then spoken to in one of three modes:
- **ids** (vLLM): `/v1/completions` with the session's own token ids as the prompt; the answer
  carries the sampled ids (`return_token_ids`). A model's own span is kept as the exact ids it
  sampled, and the server's prefix cache (vLLM: full 16-token blocks) reuses everything up to the
  last rollback, so a sample's cost grows linearly with its length.
- **native** (llama.cpp's `llama-server`, whose `/v1/completions` takes token ids but answers text
  only): its own `/completion` route at the server root (the base URL without its `/v1`), with the
  token-id prompt, `return_tokens` (the sampled ids come back as they are) and `cache_prompt` (the
  slot's cached prefix is reused). The role's sampling goes under llama.cpp's names, with the
  sampler chain in transformers' order; `timings.cache_n` and `tokens_evaluated` give the span's
  cached and prompt tokens.
- **text** (a server that takes neither, such as llama-cpp-python's): the session keeps its text as
  well; the sampled text is encoded with the role's tokenizer for ids and per-token offsets. The
  server re-tokenizes the whole prompt, so its view of a model's own span may differ from what it
  sampled: a limit of such servers, not of tessy.

The probe, in order of preference: a one-token `/v1/completions` request with a token-id prompt and
`return_token_ids`, answered with `token_ids`: ids mode; else a one-token `/completion` request at
the root with a token-id prompt and `return_tokens`, answered with `tokens`: native mode; else text
mode, once a text prompt has gone through. A probe that gets no answer at all decides nothing: the
request fails (and is retried), and the next one probes again.

Special tokens are kept in both directions where the server allows (`add_special_tokens=false`,
`skip_special_tokens=false`; native mode sends ids and reads ids), so think markers survive. `submit`
sends one session's request and returns a future at once (the scheduler's event driver keeps many in
flight, both roles together); `generate` sends one request per session, all at once, and waits for
all. A request that fails (no connection, a timeout, HTTP 5xx or 429, a malformed answer, a stream
that breaks off) is tried again from the start with the same seed, on the next endpoint when there
are several; after the last try that row is a `SampleError`, which the scheduler writes as an error
record while the run goes on. Before a retry it waits with exponential backoff, or where a 429 or
503 says `Retry-After` (seconds or an HTTP date), as long as that says, at most `timeout_s`.

**Throttling.** At most `concurrency` requests are in flight per endpoint, and fewer while its server
refuses them as overloaded (429, or 503 with `Retry-After`): each endpoint's limit halves on such a
refusal and climbs back by one after a run of successes (AIMD, tessy/backends/limit.py). A shrink
lets the requests in flight finish. `throttling()` reports the refusals, the time spent waiting on
`Retry-After` and how low each endpoint's limit went.

**Streaming and early stops.** With a `watch` (a callable that takes the span so far and returns
True to stop), the request streams (server-sent events) and the backend calls the watch after every
event that adds tokens to the span, until the answer is complete. When the watch says True, the
backend closes the stream (the server aborts the sequence and frees its slot: the tokens after the
cut are never generated) and returns the span so far with `finish="cut"`. The watch runs in the
backend's event-loop thread, synchronously: it must be cheap (a learned predictor hands its spans to
a worker, tessy/streaming.py). After a retry it sees the new attempt's spans from the first token.
llama.cpp leaves out of its stream the ids of a token that ends inside a UTF-8 character; where the
server's count of sampled tokens (llama.cpp's `tokens_predicted`, vLLM's usage) shows such a gap, the
answer is asked again whole (same seed) and the watch reads its prefixes one token at a time, as it
does for a server that answers a streaming request whole.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tessy.backends.limit import AdaptiveLimit, retry_after
from tessy.backends.protocol import DECODE_CONTEXT, SampleError, Sampling, Session, Span, span_from_ids
from tessy.seeds import request_seed, stream_seed

BACKOFF_S = 0.5  # first wait before a retry; doubled each try, with jitter
compact_json = functools.partial(json.dumps, separators=(",", ":"))
MODES = ("ids", "native", "text")
# llama.cpp's sampler chain for a role: transformers' order (penalty, temperature, top-k, top-p,
# min-p), and none of the server's other samplers (DRY, XTC, typical, top-n-sigma), whatever its
# command line set.
NATIVE_SAMPLERS = ["penalties", "temperature", "top_k", "top_p", "min_p"]
# The fields of llama.cpp's last answer that tessy reads: not the prompt echoed back, nor the settings.
NATIVE_FIELDS = ["content", "tokens", "stop", "stop_type", "stopping_word", "tokens_predicted", "tokens_evaluated",
                 "tokens_cached", "timings", "truncated"]
NATIVE_FINISH = {"eos": "eos", "word": "stop", "limit": "length"}
# vLLM's `/metrics` counters that a run's summary reports beside tessy's own figures, by tessy's name.
# Its prefix-cache counters count prompt tokens: looked up, and found cached.
SERVER_COUNTERS = {"vllm:prefix_cache_queries_total": "prefix_cache_queries",
                   "vllm:prefix_cache_hits_total": "prefix_cache_hits",
                   "vllm:prompt_tokens_total": "prompt_tokens", "vllm:generation_tokens_total": "generated_tokens"}


class RequestFailed(Exception):
    """One request that failed; `retry` says whether trying again may help, `status` is the HTTP
    status when the server answered at all, `retry_after` the seconds its `Retry-After` header asked
    to wait (429 and 503 only)."""

    def __init__(self, message: str, retry: bool = True, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.retry = retry
        self.status = status
        self.retry_after = retry_after

    @property
    def throttled(self) -> bool:
        """The server refused the request as overloaded: 429, or 503 with `Retry-After` (a 503 without
        it is a server that fails, not one that asks for fewer requests)."""
        return self.status == 429 or (self.status == 503 and self.retry_after is not None)


class WatchFailed(Exception):
    """A watch raised: the caller's bug, not the server's, so it is not retried (`__cause__`)."""


@dataclass
class Endpoint:
    url: str  # base URL ending in /v1
    limit: AdaptiveLimit  # how many requests may be in flight here now
    model: str | None = None  # the served model's name (GET /models)
    mode: str | None = None  # one of MODES once probed
    sessions: int = 0  # sessions assigned here
    ready: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def ids(self) -> bool | None:
        """Whether the endpoint takes token-id prompts and returns the sampled ids (ids or native
        mode); None before the probe."""
        return None if self.mode is None else self.mode != "text"

    @property
    def root(self) -> str:
        """The server's root, where llama.cpp's own routes are: the base URL without its `/v1`."""
        return self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url


class SSEDecoder:
    """Server-sent events from the bytes of a response as they arrive, in pieces of any size.

    `feed(piece)` returns the data of each event that the piece completes (its `data:` lines joined
    by newlines). Comments (`:` lines, llama.cpp's keep-alive pings), other fields and events
    without data are skipped; lines may end in `\\n` or `\\r\\n`."""

    def __init__(self):
        self._buffer = bytearray()
        self._data: list[bytes] = []

    def feed(self, piece: bytes) -> list[str]:
        self._buffer += piece
        events, start = [], 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            line = bytes(self._buffer[start:end]).removesuffix(b"\r")
            start = end + 1
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data).decode("utf-8"))
                    self._data = []
                continue
            name, _, value = line.partition(b":")
            if name == b"data":
                self._data.append(value.removeprefix(b" "))
        del self._buffer[:start]
        return events

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished event are waiting (a stream that ends here was cut off)."""
        return bool(self._buffer.strip() or self._data)


def _failure(status: int, raw: bytes, headers=None) -> RequestFailed:
    retry = status in (408, 429) or status >= 500
    wait = retry_after((headers or {}).get("Retry-After")) if status in (429, 503) else None
    return RequestFailed(f"HTTP {status}: {raw[:300].decode(errors='replace')}", retry=retry, status=status,
                         retry_after=wait)


def _event(data: str) -> dict:
    """One server-sent event's JSON; `RequestFailed` for a malformed event or an error event."""
    try:
        event = json.loads(data)
    except ValueError as e:
        raise RequestFailed(f"malformed event (not JSON): {data[:120]!r}") from e
    if not isinstance(event, dict):
        raise RequestFailed(f"malformed event (not an object): {data[:120]!r}")
    if "error" in event or event.get("object") == "error":  # llama.cpp and vLLM report a failure mid-stream
        error = event.get("error", event)
        code = error.get("code") if isinstance(error, dict) else None
        retry = not isinstance(code, int) or code in (408, 429) or code >= 500
        raise RequestFailed(f"error event: {data[:300]}", retry=retry, status=code if isinstance(code, int) else None)
    return event


class EndpointPool:
    """A role's endpoints, one async HTTP client on a background event loop, and the retry policy.

    The Backend protocol is synchronous (the scheduler calls it once per tick); `run` carries a
    coroutine over to the loop thread and waits for its result.
    """

    def __init__(self, urls: list[str], api_key: str | None = None, timeout_s: float = 120.0, max_retries: int = 3,
                 concurrency: int = 64, backoff_s: float = BACKOFF_S):
        if not urls:
            raise ValueError("the openai backend needs at least one URL "
                             "(`urls:` in the config, or --student-url/--teacher-url)")
        self.max_retries, self.backoff_s, self.timeout_s = max_retries, backoff_s, timeout_s
        self.throttled = 0  # answers that refused a request as overloaded (429, or 503 with Retry-After)
        self.retry_after_wait_s = 0.0  # time spent waiting as their Retry-After said
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tessy-openai", daemon=True)
        self._thread.start()
        self.endpoints = self.run(self._make_endpoints([u.rstrip("/") for u in urls], concurrency))

    async def _make_endpoints(self, urls, concurrency):
        # aiohttp rather than httpx: httpcore's pool probes every pooled connection's socket on each
        # request (encode/httpcore#924), which made the client, not the servers, the limit at 256
        # requests in flight (benchmarks/scale_sim.py).
        import aiohttp

        self._client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=concurrency * len(urls), limit_per_host=concurrency),
            headers=self.headers,
            json_serialize=compact_json,  # a session's ids are most of each body: no spaces between them
        )
        return [Endpoint(u, AdaptiveLimit(concurrency)) for u in urls]

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def spawn(self, coro):
        """Start `coro` on the pool's loop; a `concurrent.futures.Future` of its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self) -> None:
        if self._loop.is_running():
            if self._client is not None:
                self.run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def assign(self) -> int:
        """The endpoint with the fewest sessions; a session stays there (its prefix is cached there)."""
        i = min(range(len(self.endpoints)), key=lambda j: self.endpoints[j].sessions)
        self.endpoints[i].sessions += 1
        return i

    def unassign(self, i: int) -> None:
        self.endpoints[i].sessions = max(self.endpoints[i].sessions - 1, 0)

    async def post(self, ep: Endpoint, path: str, body: dict) -> dict:
        """POST `body` to `path` under one endpoint's base URL; the parsed JSON answer, or `RequestFailed`."""
        return await self.post_url(ep.url + path, body)

    async def post_url(self, url: str, body: dict) -> dict:
        status, raw, headers = await self._send("POST", url, body)
        if status != 200:
            raise _failure(status, raw, headers)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestFailed(f"malformed answer (not JSON): {raw[:120]!r}") from e

    async def _send(self, method: str, url: str, body: dict | None = None) -> tuple[int, bytes, Any]:
        """One HTTP exchange: (status, body bytes, headers), or `RequestFailed` when no answer came."""
        import aiohttp

        try:
            async with self._client.request(method, url, json=body) as response:
                return response.status, await response.read(), response.headers
        except (TimeoutError, asyncio.TimeoutError) as e:  # aiohttp's own timeouts are TimeoutErrors too
            raise RequestFailed(f"timed out after {self.timeout_s:g} s ({type(e).__name__})") from e
        except aiohttp.ClientError as e:
            raise RequestFailed(f"{type(e).__name__}: {e}") from e

    async def stream(self, url: str, body: dict, on_event: Callable[[dict], bool]) -> bool | dict:
        """POST `body` (a streaming request) and hand each server-sent event's JSON to `on_event` as it
        arrives. Returns True where `on_event` returned True: the connection is then closed at once,
        which makes the server abort the sequence. Returns False where the stream ended (`data:
        [DONE]` or the end of the body), and the whole answer where the server did not stream (it
        answered JSON). `RequestFailed` for an HTTP error, no answer, a timeout, a connection that
        breaks, a malformed event or an error event."""
        import aiohttp

        try:
            async with self._client.post(url, json=body) as response:
                if response.status != 200:
                    raise _failure(response.status, await response.read(), response.headers)
                if response.content_type == "application/json":  # a server that ignores "stream"
                    raw = await response.read()
                    try:
                        return json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        raise RequestFailed(f"malformed answer (not JSON): {raw[:120]!r}") from e
                decoder = SSEDecoder()
                async for piece in response.content.iter_any():
                    try:
                        events = decoder.feed(piece)
                    except UnicodeDecodeError as e:
                        raise RequestFailed(f"malformed event (not UTF-8): {e}") from e
                    for data in events:
                        if data.strip() == "[DONE]":
                            return False
                        if on_event(_event(data)):
                            response.close()
                            return True
                if decoder.pending:
                    raise RequestFailed("the stream broke off inside an event")
                return False
        except (TimeoutError, asyncio.TimeoutError) as e:
            raise RequestFailed(f"timed out after {self.timeout_s:g} s ({type(e).__name__})") from e
        except aiohttp.ClientError as e:
            raise RequestFailed(f"{type(e).__name__}: {e}") from e

    async def call(self, start: int, attempt_once: Callable[[Endpoint], Any]) -> tuple[Any, int, int]:
        """Run `attempt_once(endpoint)` with retries, moving to the next endpoint after each failure
        and waiting before it: as long as the failure's `Retry-After` said (at most `timeout_s`), else
        exponential backoff with jitter. Returns (result, attempts, endpoint index), or raises
        `SampleError`."""
        i, error = start, ""
        tries = self.max_retries + 1
        for attempt in range(1, tries + 1):
            ep = self.endpoints[i]
            wait = self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
            try:
                return await self.attempt(ep, attempt_once), attempt, i
            except RequestFailed as e:
                error = f"{ep.url}: {e}"
                if not e.retry or attempt == tries:
                    raise SampleError(error, attempts=attempt, endpoint=ep.url) from e
                if e.retry_after is not None:
                    wait = min(e.retry_after, self.timeout_s)  # a server's word, but not hours of it
                    self.retry_after_wait_s += wait
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
                error = f"{ep.url}: malformed answer ({type(e).__name__}: {e})"
                if attempt == tries:
                    raise SampleError(error, attempts=attempt, endpoint=ep.url) from e
            i = (i + 1) % len(self.endpoints)
            await asyncio.sleep(wait)
        raise SampleError(error, attempts=tries)  # not reached

    async def attempt(self, ep: Endpoint, attempt_once: Callable[[Endpoint], Any]) -> Any:
        """`attempt_once(ep)` once, in one of the endpoint's places, telling its limit how it went."""
        async with ep.limit as epoch:
            try:
                result = await attempt_once(ep)
            except RequestFailed as e:
                if e.throttled:
                    self.throttled += 1
                    ep.limit.throttled(epoch)
                raise
            ep.limit.succeeded()
            return result

    def throttling(self) -> dict:
        """How the servers held this pool back: {"throttled": answers that refused a request as
        overloaded (429, or 503 with Retry-After), "retry_after_wait_s": seconds waited as their
        Retry-After said (summed over requests), "concurrency": the configured limit per endpoint,
        "lowest_limit": the lowest any endpoint's limit went, "endpoints": {url: {"limit": now,
        "lowest_limit": lowest}}}."""
        limits = [ep.limit for ep in self.endpoints]
        return {"throttled": self.throttled, "retry_after_wait_s": round(self.retry_after_wait_s, 3),
                "concurrency": limits[0].ceiling, "lowest_limit": min(x.lowest for x in limits),
                "endpoints": {ep.url: {"limit": ep.limit.limit, "lowest_limit": ep.limit.lowest}
                              for ep in self.endpoints}}

    async def served_model(self, ep: Endpoint, fallback: str) -> str:
        """The name the server serves its model under (vLLM checks it); `fallback` if it won't say."""
        if ep.model is None:
            try:
                status, raw, _ = await self._send("GET", ep.url + "/models")
            except RequestFailed as e:
                raise RequestFailed(f"GET /models: {e}") from e
            try:
                data = json.loads(raw)["data"] if status == 200 else []
                ep.model = data[0]["id"] if data else fallback
            except (ValueError, KeyError, IndexError, TypeError):
                ep.model = fallback
        return ep.model


def load_tokenizer(model: str):
    """The role's own tokenizer: an embedded default, a .gguf file or a directory (see
    `tessy.models.resolve`), else a hub name (on machines that reach the hub)."""
    from transformers import AutoTokenizer

    from tessy.models import EMBEDDED, resolve

    path = Path(model).expanduser()
    if model in EMBEDDED or path.suffix == ".gguf" or path.is_dir():
        return AutoTokenizer.from_pretrained(resolve(model))
    return AutoTokenizer.from_pretrained(model)


def eos_ids_of(tokenizer, model_dir: Path | None = None) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = model_dir / "generation_config.json" if model_dir else None
    if config and config.exists():
        eos = json.loads(config.read_text()).get("eos_token_id")
        ids |= {eos} if isinstance(eos, int) else set(eos or [])
    return ids


def server_span(tokenizer, ids: list[int], reason: str | None, stop: tuple[str, ...], eos_ids: set[int]) -> Span:
    """A `Span` from the ids a server sampled: EOS is never part of a span, and `finish` tells a
    stop string from an end of turn (servers call both "stop")."""
    ids = list(ids)
    ended = False
    while ids and ids[-1] in eos_ids:
        ids.pop()
        ended = True
    span = span_from_ids(tokenizer, ids, "length")
    if any(s and s in span.text for s in stop):
        span.finish = "stop"
    elif ended or reason != "length":
        span.finish = "eos"
    return span


def through_stop(span: Span, stop: tuple[str, ...]) -> Span:
    """`span` up to the token that completes its first stop string (that whole token kept, as vLLM's
    `include_stop_str_in_output` keeps it), finish "stop"; `span` itself when it holds none."""
    ends = [span.text.index(s) + len(s) for s in stop if s and s in span.text]
    if not ends:
        return span
    end = min(ends)
    for i, offset in enumerate(span.offsets):
        if offset != -1 and offset >= end:
            return Span(span.ids[: i + 1], span.text[:offset], span.offsets[: i + 1], "stop",
                        span.prompt_tokens, span.cached_tokens)
    return span


def with_usage(span: Span, answer: dict) -> Span:
    """The prompt and cached-prompt token counts of the answer's `usage`, where the server gives them
    (vLLM gives cached tokens with --enable-prompt-tokens-details)."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            span.prompt_tokens = usage["prompt_tokens"]
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            span.cached_tokens = details["cached_tokens"]
    return span


class _Growing:
    """The span so far of an answer that arrives in pieces, built as `span_from_ids` builds it (each
    new token decoded with a few tokens of left context), so reading it after every event costs the
    new tokens only, not the whole span again."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.offsets: list[int] = []
        self.text = ""
        self._done = 0  # ids[:_done] end on a whole character

    def add(self, ids: list[int]) -> None:
        for token in ids:
            self.ids.append(token)
            start = max(0, self._done - DECODE_CONTEXT)
            head = self.tokenizer.decode(self.ids[start : self._done], skip_special_tokens=False)
            piece = self.tokenizer.decode(self.ids[start:], skip_special_tokens=False)
            if piece.endswith("\ufffd") or not piece.startswith(head):
                self.offsets.append(-1)
                continue
            self.text += piece[len(head) :]
            self._done = len(self.ids)
            self.offsets.append(len(self.text))

    def span(self, finish: str = "length") -> Span:
        return Span(list(self.ids), self.text, list(self.offsets), finish)


class _Reading:
    """One answer as it arrives, whole or event by event, in one mode: the sampled ids (ids and
    native modes) or text (text mode), how the server says it finished, and its prompt figures."""

    def __init__(self, backend: "OpenAIBackend", mode: str, n: int, stop: tuple[str, ...]):
        self.tokenizer, self.eos_ids = backend.tokenizer, backend.eos_ids
        self.mode, self.n = mode, n
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []  # as the server sent them (ids and native modes)
        self.text = ""  # text mode
        self.reason: str | None = None  # the server's word for how it finished; None until it says
        self.ended = False  # an EOS id arrived
        self.stopped = False  # a stop string arrived
        self.lost = False  # the server sampled more tokens than its stream carried
        self.usage: dict = {}  # ids and text modes: the answer's `usage`
        self.prompt_tokens: int | None = None  # native: from every event
        self.cached_tokens: int | None = None
        self.growing = _Growing(self.tokenizer) if mode != "text" else None

    @property
    def finished(self) -> bool:
        """The server said the answer is complete."""
        return self.reason is not None

    @property
    def complete(self) -> bool:
        """Nothing more will be added to the span: the server finished, or an EOS, a stop string or
        the last of the `n` tokens arrived."""
        written = len(self.growing.ids) if self.growing is not None else 0
        return self.finished or self.ended or self.stopped or written >= self.n

    def add(self, answer: dict, whole: bool) -> bool:
        """Read a whole answer, or one stream event; whether it added tokens to the span."""
        before = (len(self.growing.ids) if self.growing is not None else 0, len(self.text))
        if self.mode == "native":
            self._add_native(answer, whole)
        else:
            self._add_openai(answer, whole)
        if self.stop and not self.stopped:
            text = self.growing.text if self.growing is not None else self.text
            self.stopped = any(s in text for s in self.stop)
        return before != (len(self.growing.ids) if self.growing is not None else 0, len(self.text))

    def _add_ids(self, ids) -> None:
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise ValueError(f"token ids are not a list of ints: {str(ids)[:80]}")
        self.ids.extend(ids)
        if self.ended:
            return
        fresh = []
        for token in ids:  # the span so far stops at an EOS (a trailing one is never part of a span)
            if token in self.eos_ids:
                self.ended = True
                break
            fresh.append(token)
        self.growing.add(fresh)

    def _add_openai(self, answer: dict, whole: bool) -> None:
        if isinstance(answer.get("usage"), dict):
            self.usage = answer["usage"]
        choices = answer["choices"]
        if not choices and not whole:  # vLLM's last event: the usage alone
            sampled = self.usage.get("completion_tokens")
            if self.mode == "ids" and isinstance(sampled, int) and sampled != len(self.ids):
                self.lost = True  # the stream carried fewer ids than the server sampled
            return
        choice = choices[0]
        if self.mode == "ids":
            ids = choice.get("token_ids") if not whole else choice["token_ids"]
            self._add_ids([] if ids is None else ids)
        else:
            text = choice["text"]
            if not isinstance(text, str):
                raise TypeError(f"text is {type(text).__name__}, not a string")
            self.text += text
        if choice.get("finish_reason") is not None:
            self.reason = choice["finish_reason"]

    def _add_native(self, answer: dict, whole: bool) -> None:
        tokens = answer["tokens"] if whole else answer.get("tokens") or []
        self._add_ids(tokens)
        if isinstance(answer.get("tokens_evaluated"), int):
            self.prompt_tokens = answer["tokens_evaluated"]
        timings = answer.get("timings")
        if isinstance(timings, dict) and isinstance(timings.get("cache_n"), int):
            self.cached_tokens = timings["cache_n"]
        # llama.cpp leaves the ids of a token that ends inside a UTF-8 character out of its stream
        # (the next event carries only its own); its own count of sampled tokens shows the gap.
        predicted = answer.get("tokens_predicted")
        if not whole and isinstance(predicted, int) and predicted != len(self.ids):
            self.lost = True
        if answer.get("stop") is True or whole:
            reason = answer.get("stop_type")
            self.reason = reason if isinstance(reason, str) and reason != "none" else "limit"

    def so_far(self) -> Span:
        """The span so far, as a watch reads it."""
        if self.growing is not None:
            return self.growing.span()
        return span_from_ids(self.tokenizer, self._text_ids(self.text), "length")

    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def span(self, cut: bool = False) -> Span:
        """The answer's span: what a complete answer gives, or with `cut` the span so far with
        finish "cut"."""
        if cut:
            ids = self.growing.ids if self.growing is not None else self._text_ids(self.text)
            span = span_from_ids(self.tokenizer, list(ids[: self.n]), "cut")
        elif self.mode == "text":
            # No stop strings go to a text-mode server (it would drop the marker from the text and
            # report an end of turn the same way); the marker is found here instead.
            text, reason = self.text, self.reason
            cuts = [text.index(s) + len(s) for s in self.stop if s in text]
            if cuts:
                text, reason = text[: min(cuts)], "stop"
            span = server_span(self.tokenizer, self._text_ids(text), reason, self.stop, self.eos_ids)
        else:
            ids, reason = list(self.ids), self.reason
            if self.mode == "native":
                # The token that ended an "eos" answer is the server's end of generation, whether or
                # not the role's tokenizer calls it EOS; the backend knows it from now on (a stream's
                # span so far then stops before it too).
                # Only a special token is learned: an answer that ends "eos" on an ordinary token must
                # not make that token an end of generation for every later span.
                specials = getattr(self.tokenizer, "all_special_ids", None)
                if reason == "eos" and ids and ids[-1] not in self.eos_ids \
                        and (specials is None or ids[-1] in specials):
                    self.eos_ids.add(ids.pop())
                reason = "length" if reason == "limit" else "stop"
            if len(ids) > self.n:  # llama.cpp may finish a UTF-8 character past its n_predict
                ids, reason = ids[: self.n], "length"
            span = through_stop(server_span(self.tokenizer, ids, reason, self.stop, self.eos_ids), self.stop)
        if self.mode == "native":
            span.prompt_tokens, span.cached_tokens = self.prompt_tokens, self.cached_tokens
        else:
            with_usage(span, {"usage": self.usage})
        return span


@dataclass
class _Piece:
    """A run of a session's ids with its text (text mode sends the text)."""

    n: int
    text: str
    offsets: list[int] | None = None  # a sampled span's per-token offsets


@dataclass
class _Remote:
    endpoint: int
    pieces: list[_Piece]
    calls: int = 0


Watch = Callable[[Span], bool]


class OpenAIBackend:
    concurrent = True  # a server batches whatever is in flight: each sample goes on its own clock
    streams = True  # `submit` and `generate` take watches: a request stops once its watch says so

    def __init__(self, tokenizer, pool: EndpointPool, sampling: Sampling, model: str = "",
                 eos_ids: set[int] | None = None):
        self.tokenizer = tokenizer
        self.pool = pool
        self.sampling = sampling
        self.model = model  # the identity in the config; also the model name when the server won't say
        self.eos_ids = set(eos_ids) if eos_ids is not None else eos_ids_of(tokenizer)

    @classmethod
    def from_config(cls, config) -> "OpenAIBackend":
        api_key = None
        if config.api_key_env:
            api_key = os.environ.get(config.api_key_env)
            if not api_key:
                raise ValueError(f"api_key_env: the environment variable {config.api_key_env} is not set")
        tokenizer = load_tokenizer(config.model)
        pool = EndpointPool(config.urls, api_key, config.timeout_s, config.max_retries, config.concurrency)
        model_dir = Path(tokenizer.name_or_path) if Path(tokenizer.name_or_path).is_dir() else None
        return cls(tokenizer, pool, Sampling.of(config), config.model,
                   eos_ids_of(tokenizer, model_dir))

    def close(self) -> None:
        self.pool.close()

    def server_counters(self) -> dict[str, float] | None:
        """The engine's own counters (`SERVER_COUNTERS`) from each endpoint's `/metrics`, added up over
        the endpoints (and over a counter's labels); None where no endpoint publishes them (only vLLM
        does). They count every client of the servers, not only this run."""
        out: dict[str, float] = {}
        for ep in self.pool.endpoints:
            try:
                with urllib.request.urlopen(ep.root + "/metrics", timeout=5) as r:
                    text = r.read().decode(errors="replace")
            except (OSError, ValueError):
                return None
            found = {}
            for line in text.splitlines():
                name, _, value = line.rpartition(" ")
                key = SERVER_COUNTERS.get(name.split("{", 1)[0])
                if key:
                    try:
                        found[key] = found.get(key, 0.0) + float(value)
                    except ValueError:
                        continue
            if len(found) < len(SERVER_COUNTERS):
                return None
            for key, value in found.items():
                out[key] = out.get(key, 0.0) + value
        return out or None

    def throttling(self) -> dict:
        """How the servers held this role back (`EndpointPool.throttling`)."""
        return self.pool.throttling()

    # --- sessions (the same bookkeeping as the hf backend, plus the text) ------------------------
    def start(self, prompt: str, add_special_tokens: bool = False, key: str = "") -> Session:
        ids = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        # Text mode sends the prompt without the tokenizer's added specials: the server adds its BOS.
        return Session(ids=ids, state=_Remote(self.pool.assign(), [_Piece(len(ids), prompt)]),
                       seed=stream_seed(self.sampling.seed, key))

    def extend(self, session: Session, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False) if text else []
        session.ids.extend(ids)
        if ids:
            session.state.pieces.append(_Piece(len(ids), text))
        return len(ids)

    def rollback(self, session: Session, n_tokens: int) -> None:
        if n_tokens <= 0:
            return
        pieces, end, n = session.state.pieces, len(session.ids), n_tokens
        while n > 0 and pieces:
            piece = pieces[-1]
            if piece.n <= n:
                pieces.pop()
                n, end = n - piece.n, end - piece.n
                continue
            keep = piece.n - n
            if piece.offsets and piece.offsets[keep - 1] != -1:
                text = piece.text[: piece.offsets[keep - 1]]
            else:
                start = end - piece.n
                text = self.tokenizer.decode(session.ids[start : start + keep], skip_special_tokens=False)
            pieces[-1] = _Piece(keep, text, piece.offsets[:keep] if piece.offsets else None)
            n = 0
        del session.ids[-n_tokens:]

    def release(self, session: Session) -> None:
        if isinstance(session.state, _Remote):
            self.pool.unassign(session.state.endpoint)
        session.state = None

    def text_of(self, session: Session) -> str:
        return "".join(p.text for p in session.state.pieces)

    # --- generation -------------------------------------------------------------------------------
    def generate(self, sessions: list[Session], max_new_tokens: list[int], stop: list[tuple[str, ...]],
                 watch: list[Watch | None] | None = None) -> list[Span | SampleError]:
        """Up to `max_new_tokens[i]` tokens for each session, all requests in flight at once.

        Returns one `Span` per session (its ids appended to the session), or a `SampleError` for a
        row whose request failed for good (that session is left as it was). `watch[i]`, where given,
        streams row i's request and stops it early (see `submit`)."""
        watch = watch or [None] * len(sessions)
        return self.pool.run(self._generate_all(sessions, max_new_tokens, stop, watch))

    def submit(self, session: Session, max_new_tokens: int, stop: tuple[str, ...], watch: Watch | None = None):
        """One request, in flight at once; the future's result is a `Span` or a `SampleError`.

        With `watch`, the request streams and `watch(span so far)` is called (in the backend's
        event-loop thread: it must be cheap) after every event that adds tokens, until the answer is
        complete; when it returns True the stream is closed, so the server stops the sequence, and
        the span so far comes back with finish "cut". A watch that raises fails the future with
        its exception."""
        return self.pool.spawn(self._generate_one(session, max_new_tokens, stop, watch))

    def warm(self, session: Session):
        """Have the session's server compute its prompt now, so that its first request finds it in the
        prefix cache: one request for one token, whose answer is dropped (the session is unchanged).
        The future's result is that token's `Span` (its prompt figures count as any request's) or a
        `SampleError`. One try: a failed warm-up only leaves the prompt to the next request."""
        snapshot = Session(ids=list(session.ids), state=_Remote(session.state.endpoint, list(session.state.pieces)),
                           seed=session.seed)
        return self.pool.spawn(self._warm(snapshot))

    async def _warm(self, session: Session) -> Span | SampleError:
        ep = self.pool.endpoints[session.state.endpoint]
        try:
            return await self.pool.attempt(ep, lambda ep: self._complete(ep, session, 1, (), None))
        except (RequestFailed, KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            return SampleError(f"{ep.url}: warm-up: {e}", endpoint=ep.url)

    async def _generate_all(self, sessions, max_new_tokens, stop, watch):
        return await asyncio.gather(*(self._generate_one(s, n, st, w)
                                      for s, n, st, w in zip(sessions, max_new_tokens, stop, watch)))

    async def _generate_one(self, session: Session, n: int, stop: tuple[str, ...],
                            watch: Watch | None = None) -> Span | SampleError:
        if n <= 0:
            return span_from_ids(self.tokenizer, [], "length")
        state: _Remote = session.state
        try:
            span, _, used = await self.pool.call(state.endpoint,
                                                 lambda ep: self._complete(ep, session, n, stop, watch))
        except SampleError as e:
            return e
        except WatchFailed as e:
            raise e.__cause__ from None
        if used != state.endpoint:  # the session moves to the endpoint that answered
            self.pool.unassign(state.endpoint)
            self.pool.endpoints[used].sessions += 1
            state.endpoint = used
        state.calls += 1
        session.ids.extend(span.ids)
        state.pieces.append(_Piece(len(span.ids), span.text, list(span.offsets)))
        return span

    async def _complete(self, ep: Endpoint, session: Session, n: int, stop: tuple[str, ...],
                        watch: Watch | None) -> Span:
        await self._probe(ep)
        url, body = self._request(ep, session, n, stop, stream=watch is not None)
        reading = _Reading(self, ep.mode, n, stop)
        if watch is None:
            reading.add(await self.pool.post_url(url, body), whole=True)
            return reading.span()
        cut = False

        def on_event(event: dict) -> bool:
            nonlocal cut
            grew = reading.add(event, whole=False)
            if reading.lost:
                return True  # asked again whole, below
            if reading.stopped and not reading.finished:
                return True  # a stop string the server did not stop at (a special token it does not render)
            if grew and not reading.complete and ask(watch, reading.so_far()):
                cut = True
                return True
            return False

        closed = await self.pool.stream(url, body, on_event)
        if reading.lost or isinstance(closed, dict):
            # A gap in the stream: ask again whole (the same seed). A server that answered whole
            # (it does not stream): read that answer. Either way the watch reads its prefixes.
            answer = closed if isinstance(closed, dict) else \
                await self.pool.post_url(url, self._request(ep, session, n, stop, stream=False)[1])
            whole = _Reading(self, ep.mode, n, stop)
            whole.add(answer, whole=True)
            return self._replay(whole.span(), watch)
        if cut:
            return reading.span(cut=True)
        if not closed and not reading.finished:
            raise RequestFailed("the stream ended before its last event")
        return reading.span()

    def _replay(self, span: Span, watch: Watch) -> Span:
        """`span`, a complete answer asked for whole, cut where its watch would have cut the stream:
        the watch reads each prefix, one token more each time, while the answer is not complete."""
        growing = _Growing(self.tokenizer)
        for i in range(len(span.ids) if span.finish == "eos" else len(span.ids) - 1):
            growing.add(span.ids[i : i + 1])
            if ask(watch, growing.span()):
                cut = span_from_ids(self.tokenizer, span.ids[: i + 1], "cut")
                cut.prompt_tokens, cut.cached_tokens = span.prompt_tokens, span.cached_tokens
                return cut
        return span

    def _request(self, ep: Endpoint, session: Session, n: int, stop: tuple[str, ...], stream: bool) -> tuple[str, dict]:
        """The URL and body of one request in the endpoint's mode."""
        s = self.sampling
        # The session's seed stream at this position: a retried or resumed request samples the same.
        seed = request_seed(session.seed, len(session.ids))
        stops = [x for x in stop if x]
        if ep.mode == "native":
            body = {"prompt": list(session.ids), "n_predict": n, "temperature": s.temperature, "top_p": s.top_p,
                    "top_k": s.top_k, "min_p": s.min_p, "repeat_penalty": s.repetition_penalty,
                    # The penalty reads the whole context, as transformers and vLLM do (llama.cpp's
                    # default looks back 64 tokens).
                    "repeat_last_n": -1,
                    "samplers": NATIVE_SAMPLERS, "return_tokens": True, "cache_prompt": True,
                    "response_fields": NATIVE_FIELDS}
            if seed is not None:
                body["seed"] = seed
            if stops:
                # A stop string that is one special token (a think marker) is stopped at only where
                # the server renders it: `preserved_tokens` asks for that.
                body.update(stop=stops, preserved_tokens=stops)
            if stream:
                body.update(stream=True, timings_per_token=True)  # every event says what was cached
            return ep.root + "/completion", body
        body = {"model": ep.model, "max_tokens": n, "temperature": s.temperature, "top_p": s.top_p}
        if seed is not None:
            body["seed"] = seed
        if ep.mode == "ids":
            # vLLM and SGLang take these beside the OpenAI fields; sent only when set, so a server
            # that knows none of them still answers a config that uses none.
            if s.top_k > 0:
                body["top_k"] = s.top_k
            if s.min_p > 0:
                body["min_p"] = s.min_p
            if s.repetition_penalty != 1.0:
                body["repetition_penalty"] = s.repetition_penalty
            body.update(prompt=list(session.ids), stop=stops or None, return_token_ids=True,
                        include_stop_str_in_output=True, skip_special_tokens=False, add_special_tokens=False,
                        spaces_between_special_tokens=False)
            if stream:
                # Usage on every chunk: a stream closed at a cut never reads the last one.
                body.update(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
        else:
            # llama.cpp's own defaults (top_k 40, min_p 0.05, repeat penalty 1.1) would change the
            # role's sampling, so every knob is sent. Its repeat penalty looks back over the last 64
            # tokens only (`repeat_last_n`), where transformers and vLLM look at the whole context.
            body.update(top_k=s.top_k, min_p=s.min_p, repeat_penalty=s.repetition_penalty,
                        prompt=self.text_of(session))
            if stream:
                body["stream"] = True
        return ep.url + "/completions", body

    async def _probe(self, ep: Endpoint) -> None:
        """Learn once which mode this endpoint speaks (see the module's docstring)."""
        if ep.mode is not None:
            return
        async with ep.ready:
            if ep.mode is not None:
                return
            await self.pool.served_model(ep, self.model)
            probe = self.tokenizer.encode("Hello", add_special_tokens=False) or [0]
            body = {"model": ep.model, "prompt": probe, "max_tokens": 1, "temperature": 0.0, "return_token_ids": True}
            refused = False
            try:
                choice = (await self.pool.post(ep, "/completions", body))["choices"][0]
                if isinstance(choice.get("token_ids"), list):
                    ep.mode = "ids"
                    return
            except RequestFailed as e:
                if e.status is None or e.throttled:
                    raise  # no answer at all (down, timed out), or not now (429): decide on a later try
                refused = True  # llama-cpp-python's server answers 500 to a token-id prompt
            except (KeyError, IndexError, TypeError, AttributeError):
                pass
            if await self._answers_natively(ep, probe):
                ep.mode = "native"
                return
            if refused:
                # A refusal tells only if a text prompt goes through; otherwise the server is
                # failing: decide later.
                await self.pool.post(ep, "/completions", {**body, "prompt": "Hello"})
            ep.mode = "text"

    async def _answers_natively(self, ep: Endpoint, probe: list[int]) -> bool:
        """Whether llama.cpp's `/completion` at the server's root takes a token-id prompt and
        returns the sampled ids."""
        body = {"prompt": probe, "n_predict": 1, "temperature": 0.0, "return_tokens": True, "cache_prompt": False}
        try:
            answer = await self.pool.post_url(ep.root + "/completion", body)
        except RequestFailed as e:
            if e.status is None or e.status >= 500 or e.throttled:
                raise  # no answer, a failing server, or not now (429): decide on a later try
            return False  # no such route (404), or it refuses token ids
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        return isinstance(tokens, list) and all(isinstance(t, int) for t in tokens)


def ask(watch: Watch, span: Span) -> bool:
    """The watch's verdict on `span`; what it raises is the caller's bug, kept apart from the
    server's failures (which are retried)."""
    try:
        return bool(watch(span))
    except Exception as e:
        raise WatchFailed(f"the watch raised {type(e).__name__}: {e}") from e


class ChatClient:
    """A chat endpoint (`/v1/chat/completions`) for the style annotator and the teacher-score judge.

    `complete` sends every conversation at once (at most `concurrency` per endpoint) and returns one
    answer text per conversation, or a `SampleError` where it failed for good. Each request carries
    the sampling (`temperature`, `top_p`; `top_k` only where it is on, above 0, since OpenAI's own API
    has no such field), `max_tokens`, the `seed`, and `chat_template_kwargs` where given: vLLM and
    llama.cpp's server hand these to the model's chat template (Qwen3: {"enable_thinking": false}).
    """

    def __init__(self, urls: list[str], model: str = "", api_key_env: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 3, concurrency: int = 16, temperature: float = 0.0, max_tokens: int = 512,
                 seed: int | None = 0, backoff_s: float = BACKOFF_S, top_p: float = 1.0, top_k: int = 0,
                 chat_template_kwargs: dict | None = None):
        api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not api_key:
            raise ValueError(f"api_key_env: the environment variable {api_key_env} is not set")
        self.pool = EndpointPool(urls, api_key, timeout_s, max_retries, concurrency, backoff_s)
        self.model, self.temperature, self.max_tokens, self.seed = model, temperature, max_tokens, seed
        self.top_p, self.top_k, self.chat_template_kwargs = top_p, top_k, dict(chat_template_kwargs or {})
        self._next = 0

    @classmethod
    def from_config(cls, config, max_tokens: int) -> "ChatClient":
        """The chat endpoint of a model entry (`ModelConfig`): its servers, sampling and template
        arguments, with answers of up to `max_tokens`."""
        return cls(config.urls, model=config.model, api_key_env=config.api_key_env, timeout_s=config.timeout_s,
                   max_retries=config.max_retries, concurrency=config.concurrency, temperature=config.temperature,
                   max_tokens=max_tokens, seed=config.seed, top_p=config.top_p, top_k=config.top_k,
                   chat_template_kwargs=config.chat_template_kwargs)

    def body(self, messages: list[dict], served_model: str, extra: dict | None = None) -> dict:
        """The JSON body of one request (`extra` adds or replaces fields)."""
        body = {"model": served_model, "messages": messages, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens}
        if self.top_k > 0:
            body["top_k"] = self.top_k
        if self.chat_template_kwargs:
            body["chat_template_kwargs"] = dict(self.chat_template_kwargs)
        if self.seed is not None:
            body["seed"] = self.seed
        return {**body, **(extra or {})}

    def complete(self, conversations: list[list[dict]], **extra) -> list[str | SampleError]:
        return self.pool.run(self._all(conversations, extra))

    async def _all(self, conversations, extra):
        return await asyncio.gather(*(self._one(c, extra) for c in conversations))

    async def _one(self, messages: list[dict], extra: dict) -> str | SampleError:
        async def attempt(ep: Endpoint) -> str:
            body = self.body(messages, await self.pool.served_model(ep, self.model), extra)
            content = (await self.pool.post(ep, "/chat/completions", body))["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError(f"message content is {type(content).__name__}, not a string")
            return content

        start, self._next = self._next % len(self.pool.endpoints), self._next + 1
        try:
            return (await self.pool.call(start, attempt))[0]
        except SampleError as e:
            return e

    def throttling(self) -> dict:
        """How the servers held this client back (`EndpointPool.throttling`)."""
        return self.pool.throttling()

    def close(self) -> None:
        self.pool.close()
