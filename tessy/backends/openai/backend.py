"""The `openai` backend: any OpenAI-compatible completions server (vLLM, SGLang, llama.cpp).

Only the generation moves to the server. The role's identity stays in tessy: its tokenizer (from the
config's `model`) counts and encodes, its profile renders the prompt, its sampling goes into every
request. Each endpoint is probed once and then spoken to in its dialect
(tessy/backends/openai/dialects.py); requests go through the endpoint pool's retries and throttling
(tessy/backends/openai/pool.py).

`submit` sends one session's request and returns a future at once (the scheduler's event driver
keeps many in flight, both roles together); `generate` sends one request per session, all at once,
and waits for all. A request is retried with the same seed; after the last try that row is a
`SampleError`, which the scheduler writes as an error record while the run goes on. `throttling()`
reports the refusals, the time spent waiting on `Retry-After` and how low each endpoint's limit went.

**Streaming and early stops.** With a `watch` (a callable that takes the span so far and returns
True to stop), the request streams (server-sent events) and the backend calls the watch after every
event that adds tokens to the span, until the answer is complete. When the watch says True, the
backend closes the stream (the server aborts the sequence and frees its slot: the tokens after the
cut are never generated) and returns the span so far with `finish="cut"`. The watch runs in the
backend's event-loop thread, synchronously: it must be cheap (a learned predictor hands its spans to
a worker, tessy/engine/streaming.py). After a retry it sees the new attempt's spans from the first token.
llama.cpp leaves out of its stream the ids of a token that ends inside a UTF-8 character; where the
server's count of sampled tokens (llama.cpp's `tokens_predicted`, vLLM's usage) shows such a gap, the
answer is asked again whole (same seed) and the watch reads its prefixes one token at a time, as it
does for a server that answers a streaming request whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tessy.backends.openai.dialects import DIALECTS, Answer, Probe
from tessy.backends.openai.pool import Endpoint, EndpointPool, RequestFailed
from tessy.backends.protocol import SampleError, Sampling, Session, Span, SpanDecoder, span_from_ids
from tessy.engine.seeds import request_seed, stream_seed

# vLLM's `/metrics` counters that a run's summary reports beside tessy's own figures, by tessy's name.
# Its prefix-cache counters count prompt tokens: looked up, and found cached.
SERVER_COUNTERS = {"vllm:prefix_cache_queries_total": "prefix_cache_queries",
                   "vllm:prefix_cache_hits_total": "prefix_cache_hits",
                   "vllm:prompt_tokens_total": "prompt_tokens", "vllm:generation_tokens_total": "generated_tokens"}


class WatchFailed(Exception):
    """A watch raised: the caller's bug, not the server's, so it is not retried (`__cause__`)."""


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
    """The ids that end a model's generation: the tokenizer's EOS and those of the model's
    `generation_config.json`, where `model_dir` has one."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = model_dir / "generation_config.json" if model_dir else None
    if config and config.exists():
        eos = json.loads(config.read_text()).get("eos_token_id")
        ids |= {eos} if isinstance(eos, int) else set(eos or [])
    return ids


@dataclass
class _Piece:
    """A run of a session's ids with its text (the text dialect sends the text)."""

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
    def from_config(cls, spec, endpoint) -> "OpenAIBackend":
        """The backend of a role: its model (`ModelSpec`: tokenizer, sampling) served where its
        `Endpoint` (tessy.config) says."""
        api_key = None
        if endpoint.api_key_env:
            api_key = os.environ.get(endpoint.api_key_env)
            if not api_key:
                raise ValueError(f"api_key_env: the environment variable {endpoint.api_key_env} is not set")
        tokenizer = load_tokenizer(spec.model)
        pool = EndpointPool(endpoint.urls, api_key, endpoint.timeout_s, endpoint.max_retries, endpoint.concurrency)
        model_dir = Path(tokenizer.name_or_path) if Path(tokenizer.name_or_path).is_dir() else None
        return cls(tokenizer, pool, Sampling.of(spec), spec.model, eos_ids_of(tokenizer, model_dir))

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
        # The text dialect sends the prompt without the tokenizer's added specials: the server adds its BOS.
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
        answer = Answer.of(ep.dialect, self.tokenizer, self.eos_ids, n, stop)
        if watch is None:
            answer.add(await self.pool.post_url(url, body), whole=True)
            return answer.span()
        cut = False

        def on_event(event: dict) -> bool:
            nonlocal cut
            grew = answer.add(event, whole=False)
            if answer.lost:
                return True  # asked again whole, below
            if answer.stopped and not answer.finished:
                return True  # a stop string the server did not stop at (a special token it does not render)
            if grew and not answer.complete and ask(watch, answer.so_far()):
                cut = True
                return True
            return False

        closed = await self.pool.stream(url, body, on_event)
        if answer.lost or isinstance(closed, dict):
            # A gap in the stream: ask again whole (the same seed). A server that answered whole
            # (it does not stream): read that answer. Either way the watch reads its prefixes.
            reply = closed if isinstance(closed, dict) else \
                await self.pool.post_url(url, self._request(ep, session, n, stop, stream=False)[1])
            whole = Answer.of(ep.dialect, self.tokenizer, self.eos_ids, n, stop)
            whole.add(reply, whole=True)
            return self._replay(whole.span(), watch)
        if cut:
            return answer.span(cut=True)
        if not closed and not answer.finished:
            raise RequestFailed("the stream ended before its last event")
        return answer.span()

    def _replay(self, span: Span, watch: Watch) -> Span:
        """`span`, a complete answer asked for whole, cut where its watch would have cut the stream:
        the watch reads each prefix, one token more each time, while the answer is not complete."""
        growing = SpanDecoder(self.tokenizer)
        for i in range(len(span.ids) if span.finish == "eos" else len(span.ids) - 1):
            growing.add(span.ids[i : i + 1])
            if ask(watch, growing.span()):
                cut = span_from_ids(self.tokenizer, span.ids[: i + 1], "cut")
                cut.prompt_tokens, cut.cached_tokens = span.prompt_tokens, span.cached_tokens
                return cut
        return span

    def _request(self, ep: Endpoint, session: Session, n: int, stop: tuple[str, ...], stream: bool) -> tuple[str, dict]:
        """The URL and body of one request in the endpoint's dialect."""
        # The session's seed stream at this position: a retried or resumed request samples the same.
        seed = request_seed(session.seed, len(session.ids))
        prompt = session.ids if ep.dialect.ids else self.text_of(session)
        return ep.dialect.request(ep, prompt, self.sampling, seed, n, [x for x in stop if x], stream)

    async def _probe(self, ep: Endpoint) -> None:
        """Learn once which dialect this endpoint speaks: the first of `DIALECTS` whose probe says so
        (tessy/backends/openai/dialects.py). A probe that gets no answer raises, and decides nothing."""
        if ep.dialect is not None:
            return
        async with ep.ready:
            if ep.dialect is not None:
                return
            await self.pool.served_model(ep, self.model)
            probe = Probe(self.tokenizer.encode("Hello", add_special_tokens=False) or [0])
            for dialect in DIALECTS:
                if await dialect.probe(self.pool, ep, probe):
                    ep.dialect = dialect
                    return


def ask(watch: Watch, span: Span) -> bool:
    """The watch's verdict on `span`; what it raises is the caller's bug, kept apart from the
    server's failures (which are retried)."""
    try:
        return bool(watch(span))
    except Exception as e:
        raise WatchFailed(f"the watch raised {type(e).__name__}: {e}") from e
