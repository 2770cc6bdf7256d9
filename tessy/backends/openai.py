"""The `openai` backend: any OpenAI-compatible `/v1/completions` server (vLLM, SGLang, llama.cpp).

Only the generation moves to the server. The role's identity stays in tessy: its tokenizer (from the
config's `model`) counts and encodes, its profile renders the prompt, its sampling goes into every
request.

Each endpoint is probed once and then spoken to in one of two modes:
- **ids** (vLLM): the prompt is the session's own token ids and the answer carries the sampled ids
  (`return_token_ids`). A model's own span is kept as the exact ids it sampled, and the server's
  prefix cache (vLLM: full 16-token blocks) reuses everything up to the last rollback, so a
  sample's cost grows linearly with its length.
- **text** (llama.cpp's server takes string prompts only): the session keeps its text as well; the
  sampled text is encoded with the role's tokenizer for ids and per-token offsets. The server
  re-tokenizes the whole prompt, so its view of a model's own span may differ from what it sampled:
  a limit of such servers, not of tessy.

Special tokens are kept in both directions where the server allows (`add_special_tokens=false`,
`skip_special_tokens=false`), so think markers survive. `submit` sends one session's request and
returns a future at once (the scheduler's event driver keeps many in flight, both roles together);
`generate` sends one request per session, all at once, and waits for all. At most `concurrency`
requests are in flight per endpoint. A request that fails (no connection, a
timeout, HTTP 5xx or 429, a malformed answer) is tried again with exponential backoff, on the next
endpoint when there are several; after the last try that row is a `SampleError`, which the scheduler
writes as an error record while the run goes on.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tessy.backends.protocol import SampleError, Sampling, Session, Span, span_from_ids
from tessy.seeds import request_seed, stream_seed

BACKOFF_S = 0.5  # first wait before a retry; doubled each try, with jitter
compact_json = functools.partial(json.dumps, separators=(",", ":"))


class RequestFailed(Exception):
    """One request that failed; `retry` says whether trying again may help, `status` is the HTTP
    status when the server answered at all."""

    def __init__(self, message: str, retry: bool = True, status: int | None = None):
        super().__init__(message)
        self.retry = retry
        self.status = status


@dataclass
class Endpoint:
    url: str  # base URL ending in /v1
    limit: asyncio.Semaphore
    model: str | None = None  # the served model's name (GET /models)
    ids: bool | None = None  # takes token-id prompts and returns the sampled ids
    sessions: int = 0  # sessions assigned here
    ready: asyncio.Lock = field(default_factory=asyncio.Lock)


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
        return [Endpoint(u, asyncio.Semaphore(concurrency)) for u in urls]

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
        """POST `body` to one endpoint; the parsed JSON answer, or `RequestFailed`."""
        status, raw = await self._send("POST", ep.url + path, body)
        if status != 200:
            retry = status in (408, 429) or status >= 500
            raise RequestFailed(f"HTTP {status}: {raw[:300].decode(errors='replace')}", retry=retry, status=status)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestFailed(f"malformed answer (not JSON): {raw[:120]!r}") from e

    async def _send(self, method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
        """One HTTP exchange: (status, body bytes), or `RequestFailed` when no answer came."""
        import aiohttp

        try:
            async with self._client.request(method, url, json=body) as response:
                return response.status, await response.read()
        except TimeoutError as e:  # aiohttp's own timeouts are TimeoutErrors too
            raise RequestFailed(f"timed out after {self.timeout_s:g} s ({type(e).__name__})") from e
        except aiohttp.ClientError as e:
            raise RequestFailed(f"{type(e).__name__}: {e}") from e

    async def call(self, start: int, attempt_once: Callable[[Endpoint], Any]) -> tuple[Any, int, int]:
        """Run `attempt_once(endpoint)` with retries and backoff, moving to the next endpoint after
        each failure. Returns (result, attempts, endpoint index), or raises `SampleError`."""
        i, error = start, ""
        tries = self.max_retries + 1
        for attempt in range(1, tries + 1):
            ep = self.endpoints[i]
            try:
                async with ep.limit:
                    return await attempt_once(ep), attempt, i
            except RequestFailed as e:
                error = f"{ep.url}: {e}"
                if not e.retry or attempt == tries:
                    raise SampleError(error, attempts=attempt, endpoint=ep.url) from e
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
                error = f"{ep.url}: malformed answer ({type(e).__name__}: {e})"
                if attempt == tries:
                    raise SampleError(error, attempts=attempt, endpoint=ep.url) from e
            i = (i + 1) % len(self.endpoints)
            await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
        raise SampleError(error, attempts=tries)  # not reached

    async def served_model(self, ep: Endpoint, fallback: str) -> str:
        """The name the server serves its model under (vLLM checks it); `fallback` if it won't say."""
        if ep.model is None:
            try:
                status, raw = await self._send("GET", ep.url + "/models")
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


class OpenAIBackend:
    concurrent = True  # a server batches whatever is in flight: each sample goes on its own clock

    def __init__(self, tokenizer, pool: EndpointPool, sampling: Sampling, model: str = "",
                 eos_ids: set[int] | None = None):
        self.tokenizer = tokenizer
        self.pool = pool
        self.sampling = sampling
        self.model = model  # the identity in the config; also the model name when the server won't say
        self.eos_ids = eos_ids if eos_ids is not None else eos_ids_of(tokenizer)

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
    def generate(self, sessions: list[Session], max_new_tokens: list[int],
                 stop: list[tuple[str, ...]]) -> list[Span | SampleError]:
        """Up to `max_new_tokens[i]` tokens for each session, all requests in flight at once.

        Returns one `Span` per session (its ids appended to the session), or a `SampleError` for a
        row whose request failed for good (that session is left as it was)."""
        return self.pool.run(self._generate_all(sessions, max_new_tokens, stop))

    def submit(self, session: Session, max_new_tokens: int, stop: tuple[str, ...]):
        """One request, in flight at once; the future's result is a `Span` or a `SampleError`."""
        return self.pool.spawn(self._generate_one(session, max_new_tokens, stop))

    async def _generate_all(self, sessions, max_new_tokens, stop):
        return await asyncio.gather(*(self._generate_one(s, n, st) for s, n, st in zip(sessions, max_new_tokens, stop)))

    async def _generate_one(self, session: Session, n: int, stop: tuple[str, ...]) -> Span | SampleError:
        if n <= 0:
            return span_from_ids(self.tokenizer, [], "length")
        state: _Remote = session.state
        try:
            span, _, used = await self.pool.call(state.endpoint, lambda ep: self._complete(ep, session, n, stop))
        except SampleError as e:
            return e
        if used != state.endpoint:  # the session moves to the endpoint that answered
            self.pool.unassign(state.endpoint)
            self.pool.endpoints[used].sessions += 1
            state.endpoint = used
        state.calls += 1
        session.ids.extend(span.ids)
        state.pieces.append(_Piece(len(span.ids), span.text, list(span.offsets)))
        return span

    async def _complete(self, ep: Endpoint, session: Session, n: int, stop: tuple[str, ...]) -> Span:
        await self._probe(ep)
        body = self._body(ep, session, n)
        if ep.ids:
            body.update(prompt=list(session.ids), stop=[s for s in stop if s] or None, return_token_ids=True,
                        include_stop_str_in_output=True, skip_special_tokens=False, add_special_tokens=False,
                        spaces_between_special_tokens=False)
            answer = await self.pool.post(ep, "/completions", body)
            choice = answer["choices"][0]
            ids = choice["token_ids"]
            if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                raise ValueError(f"token_ids is not a list of ints: {str(ids)[:80]}")
            return with_usage(server_span(self.tokenizer, ids, choice.get("finish_reason"), stop, self.eos_ids), answer)
        # Text mode: no stop strings go to the server (it would drop the marker from the text and
        # report an end of turn the same way); the marker is found here instead.
        body.update(prompt=self.text_of(session))
        answer = await self.pool.post(ep, "/completions", body)
        choice = answer["choices"][0]
        text = choice["text"]
        if not isinstance(text, str):
            raise TypeError(f"text is {type(text).__name__}, not a string")
        reason = choice.get("finish_reason")
        cuts = [text.index(s) + len(s) for s in stop if s and s in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        ids = self.tokenizer.encode(text, add_special_tokens=False) if text else []
        return with_usage(server_span(self.tokenizer, ids, reason, stop, self.eos_ids), answer)

    def _body(self, ep: Endpoint, session: Session, n: int) -> dict:
        s = self.sampling
        body = {"model": ep.model, "max_tokens": n, "temperature": s.temperature, "top_p": s.top_p}
        seed = request_seed(session.seed, len(session.ids))
        if seed is not None:
            # The session's stream at this position: a retried or resumed request samples the same.
            body["seed"] = seed
        if ep.ids:
            # vLLM and SGLang take these beside the OpenAI fields; sent only when set, so a server
            # that knows none of them still answers a config that uses none.
            if s.top_k > 0:
                body["top_k"] = s.top_k
            if s.min_p > 0:
                body["min_p"] = s.min_p
            if s.repetition_penalty != 1.0:
                body["repetition_penalty"] = s.repetition_penalty
        else:
            # llama.cpp's own defaults (top_k 40, min_p 0.05, repeat penalty 1.1) would change the
            # role's sampling, so every knob is sent. Its repeat penalty looks back over the last 64
            # tokens only (`repeat_last_n`), where transformers and vLLM look at the whole context.
            body.update(top_k=s.top_k, min_p=s.min_p, repeat_penalty=s.repetition_penalty)
        return body

    async def _probe(self, ep: Endpoint) -> None:
        """Learn once whether this endpoint takes token-id prompts and returns token ids."""
        if ep.ids is not None:
            return
        async with ep.ready:
            if ep.ids is not None:
                return
            await self.pool.served_model(ep, self.model)
            probe = self.tokenizer.encode("Hello", add_special_tokens=False) or [0]
            body = {"model": ep.model, "prompt": probe, "max_tokens": 1, "temperature": 0.0, "return_token_ids": True}
            try:
                choice = (await self.pool.post(ep, "/completions", body))["choices"][0]
                ids = isinstance(choice.get("token_ids"), list)
            except RequestFailed as e:
                if e.status is None:
                    raise  # no answer at all (down, timed out): decide on a later try
                # A refusal (llama.cpp's server answers 500 to a token-id prompt) tells only if a
                # text prompt goes through; otherwise the server is failing: decide later.
                await self.pool.post(ep, "/completions", {**body, "prompt": "Hello"})
                ids = False
            except (KeyError, IndexError, TypeError, AttributeError):
                ids = False
            ep.ids = ids


class ChatClient:
    """A chat endpoint (`/v1/chat/completions`) for the style annotator and the teacher-score judge.

    `complete` sends every conversation at once (at most `concurrency` per endpoint) and returns one
    answer text per conversation, or a `SampleError` where it failed for good.
    """

    def __init__(self, urls: list[str], model: str = "", api_key_env: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 3, concurrency: int = 16, temperature: float = 0.0, max_tokens: int = 512,
                 seed: int | None = 0, backoff_s: float = BACKOFF_S):
        api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not api_key:
            raise ValueError(f"api_key_env: the environment variable {api_key_env} is not set")
        self.pool = EndpointPool(urls, api_key, timeout_s, max_retries, concurrency, backoff_s)
        self.model, self.temperature, self.max_tokens, self.seed = model, temperature, max_tokens, seed
        self._next = 0

    def complete(self, conversations: list[list[dict]], **extra) -> list[str | SampleError]:
        return self.pool.run(self._all(conversations, extra))

    async def _all(self, conversations, extra):
        return await asyncio.gather(*(self._one(c, extra) for c in conversations))

    async def _one(self, messages: list[dict], extra: dict) -> str | SampleError:
        async def attempt(ep: Endpoint) -> str:
            body = {"model": await self.pool.served_model(ep, self.model), "messages": messages,
                    "temperature": self.temperature, "max_tokens": self.max_tokens, **extra}
            if self.seed is not None:
                body.setdefault("seed", self.seed)
            content = (await self.pool.post(ep, "/chat/completions", body))["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError(f"message content is {type(content).__name__}, not a string")
            return content

        start, self._next = self._next % len(self.pool.endpoints), self._next + 1
        try:
            return (await self.pool.call(start, attempt))[0]
        except SampleError as e:
            return e

    def close(self) -> None:
        self.pool.close()
