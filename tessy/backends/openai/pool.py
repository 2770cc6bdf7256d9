"""The endpoint pool: a role's server URLs, one async HTTP client on a background event loop, and
the retry policy every request goes through.

A request that fails (no connection, a timeout, HTTP 5xx or 429, a malformed answer, a stream that
breaks off) is tried again from the start, on the next endpoint when there are several; after the
last try it is a `SampleError`. Before a retry the pool waits with exponential backoff, or where a
429 or 503 says `Retry-After` (seconds or an HTTP date), as long as that says, at most `timeout_s`.
At most `concurrency` requests are in flight per endpoint, and fewer while its server refuses them
as overloaded (AIMD, tessy/backends/limit.py). Streams arrive as server-sent events (`SSEDecoder`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from tessy.backends.limit import AdaptiveLimit, retry_after
from tessy.backends.protocol import SampleError

BACKOFF_S = 0.5  # first wait before a retry; doubled each try, with jitter
compact_json = functools.partial(json.dumps, separators=(",", ":"))

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



@dataclass
class Endpoint:
    url: str  # base URL ending in /v1
    limit: AdaptiveLimit  # how many requests may be in flight here now
    model: str | None = None  # the served model's name (GET /models)
    dialect: Any = None  # the server dialect it speaks (tessy/backends/openai/dialects.py) once probed
    sessions: int = 0  # sessions assigned here
    ready: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def mode(self) -> str | None:
        """The name of the dialect it speaks ("ids", "native" or "text"); None before the probe."""
        return None if self.dialect is None else self.dialect.name

    @property
    def ids(self) -> bool | None:
        """Whether the endpoint takes token-id prompts and returns the sampled ids (the ids and native
        dialects); None before the probe."""
        return None if self.dialect is None else self.dialect.ids

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
