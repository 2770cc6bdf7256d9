"""Run many samples at once. Each sample is a generator of requests (tessy/loop.py); this file
decides who waits for whom, and never what a sample does.

Two drivers, one per kind of backend:
- **events** (server backends, `Backend.concurrent`: `openai`). Every sample is on its own clock: it
  sends its next request as soon as its last one returns, so student and teacher requests are in
  flight together and no sample waits for another's straggler. A server batches whatever is in
  flight (vLLM's continuous batching), so this keeps every replica busy. A finished sample's place
  is filled from the prompt queue at once. Boundary predictors run in worker threads on whatever
  boundary requests are waiting when they are free (micro-batches), so model requests keep flowing
  while a learned predictor computes.
- **ticks** (in-process backends: `hf`, `vllm`). One tick answers every waiting `Boundary` with one
  predictor call per role, then every waiting `Generate` with one batched call per role. One
  process gains nothing from overlap, and a batch is what makes a CPU or GPU efficient. A request
  longer than `chunk_tokens` (a final answer, a baseline's whole thinking) is served in chunks of
  that size, so one long row does not hold up a batch of k-token turns.

`driver: auto` picks events when both roles' backends are concurrent, else ticks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from tessy.backends import SampleError, Span, failed, span_from_ids
from tessy.loop import Boundary, Generate
from tessy.predictors import BoundaryPredictor
from tessy.roles import STUDENT, TEACHER
from tessy.streaming import CutWatch, WatchBatcher, can_stream
from tessy.transcript import Transcript


@dataclass
class _InFlight:
    transcript: Transcript
    steps: Any  # the sample's generator
    request: Any = None
    chunks: list[Span] = field(default_factory=list)  # ticks: a long request's spans so far
    warming: dict = field(default_factory=dict)  # events: role -> the future of its prompt's warm-up
    held: bool = False  # events: its request waits for that role's warm-up to end


@dataclass
class RoleStats:
    """One role's model requests in a run."""

    requests: int = 0
    tokens: int = 0
    prompt_tokens: int = 0  # where the engine reports them
    cached_tokens: int = 0
    reported: int = 0  # requests whose answer said how much of the prompt was cached
    stopped_at_cut: int = 0  # turns whose request stopped once its cut was final (tessy/streaming.py)
    warm_ups: int = 0  # one-token requests that computed a new sample's prompt ahead of its first turn
    sent_prompt_tokens: int = 0  # every request's prompt, as tessy sent it
    reusable_tokens: int = 0  # of those, the ids the engine had seen just before (`Scheduler._sent`)
    in_flight_s: float = 0.0  # the integral of requests in flight over time

    def summary(self, wall_s: float) -> dict:
        out = {"requests": self.requests, "generated_tokens": self.tokens,
               "mean_in_flight": round(self.in_flight_s / wall_s, 2) if wall_s else 0.0}
        if self.stopped_at_cut:
            out["stopped_at_cut"] = self.stopped_at_cut
        if self.warm_ups:
            out["warm_ups"] = self.warm_ups
        if self.sent_prompt_tokens:
            # The hit rate of a prefix cache that keeps each session's last request and reply: a reference
            # for the engine's own rate (which may pass it a little, matching other sessions' prompts).
            out["reusable_prompt_share"] = round(self.reusable_tokens / self.sent_prompt_tokens, 3)
        if self.reported:
            out["prefix_cache_hit_rate"] = round(self.cached_tokens / max(self.prompt_tokens, 1), 3)
            computed = self.prompt_tokens - self.cached_tokens
            out["prompt_tokens_computed_per_request"] = round(computed / self.reported, 1)
        return out


@dataclass
class Timing:
    generate_s: float = 0.0  # ticks: time inside batched model calls
    predict_s: float = 0.0  # time inside predictor calls (busy time of the predictors)
    calls: int = 0
    batch_rows: int = 0
    roles: dict[str, RoleStats] = field(default_factory=lambda: {STUDENT: RoleStats(), TEACHER: RoleStats()})


def _common_prefix(a: list[int], b: list[int], most: int) -> int:
    """How many leading ids `a` and `b` share, at most `most`: a bisection over slice comparisons, which
    run in C, so a long session costs the driver thread little on every request."""
    lo, hi = 0, min(len(a), len(b), most)  # a[:lo] == b[:lo] holds; more than hi cannot
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class Scheduler:
    backends: dict  # role -> Backend
    predictors: dict[str, BoundaryPredictor]
    max_in_flight: int = 8
    driver: str = "auto"  # one of tessy.config.DRIVERS
    chunk_tokens: int = 20  # ticks: the longest piece of one request served in one tick
    # Streamed cuts (tessy/streaming.py): per role, True, False or None (on where the backend can).
    stream_cuts: dict[str, bool | None] = field(default_factory=dict)
    stream_every: int = 4  # tokens between two readings of a streamed span by a learned predictor
    # events: the roles whose prompt a new sample warms up on its server (`Backend.warm`) while another
    # role writes its first turn, so that the prompt is computed before that role's first request.
    warm_roles: tuple[str, ...] = ()
    timing: Timing = field(default_factory=Timing)

    def driver_name(self) -> str:
        if self.driver != "auto":
            return self.driver
        return "events" if all(b.concurrent for b in self.backends.values()) else "ticks"

    def run(self, starts: Iterator[Callable[[], tuple[Transcript, Any]]], on_done: Callable[[Transcript], None],
            on_error: Callable[[Transcript, SampleError], None] | None = None) -> None:
        """Drive every sample that `starts` yields to its end; call `on_done` as each finishes.

        A sample whose backend call failed for good (a `SampleError`) is dropped and given to
        `on_error` (raised when there is none); the other samples go on."""
        self._on_done, self._on_error = on_done, on_error
        self._starts = iter(starts)
        self._t_last = time.perf_counter()
        self._in_flight = {role: 0 for role in self.backends}
        self._opening: dict[str, list[int]] = {}  # role -> the last first request of a session it was sent
        self._batcher = None
        try:
            if self.driver_name() == "events":
                self._run_events()
            else:
                self._run_ticks()
        finally:
            if self._batcher is not None:
                self._batcher.close()
                self.timing.predict_s += self._batcher.busy_s
        self._count_in_flight()

    def streams(self, role: str) -> bool:
        """Whether `role`'s turns stop at their final cut: its setting, where its backend can stream
        and its predictor can promise a final cut."""
        wanted = self.stream_cuts.get(role)
        return wanted is not False and getattr(self.backends[role], "streams", False) \
            and can_stream(self.predictors[role])

    def _watch(self, item: _InFlight):
        """The watch of a turn that its predictor cuts (None for other requests): a `CutWatch`, or
        on a server backend (whose streams call it on their own thread, one span at a time) a learned
        predictor's micro-batched watch."""
        r = item.request
        if r.cut_context is None or not self.streams(r.role):
            return None
        predictor = self.predictors[r.role]
        inline = getattr(predictor, "inline", False)
        every = 1 if inline else self.stream_every
        watch = CutWatch(predictor, r.role, r.cut_context, r.stop[0] if r.stop else "", every)
        if getattr(self.backends[r.role], "concurrent", False) and not inline:
            self._batcher = self._batcher or WatchBatcher()
            return self._batcher.watch(watch)
        return watch

    # --- shared: admit, advance, finish, fail -----------------------------------------------------
    def _admit(self, flying: list[_InFlight]) -> list[_InFlight]:
        """Open samples from the queue until `max_in_flight` are open; the new ones."""
        new = []
        while len(flying) < self.max_in_flight:
            start = next(self._starts, None)
            if start is None:
                break
            transcript, steps = start()
            item = _InFlight(transcript, steps)
            if self._advance(item, None):
                flying.append(item)
                new.append(item)
        return new

    def _advance(self, item: _InFlight, result) -> bool:
        """Send `result` to the sample; False when it has finished (and was written)."""
        try:
            item.request = item.steps.send(result)
            return True
        except StopIteration:
            item.request = None
            item.transcript.release()
            self._on_done(item.transcript)
            return False

    def _fail(self, item: _InFlight, error: SampleError) -> None:
        item.request = None
        item.steps.close()  # a method's side sessions are released in its `finally`
        item.transcript.release()
        if self._on_error is None:
            raise error
        self._on_error(item.transcript, error)

    def _session(self, item: _InFlight):
        r = item.request
        return item.transcript.parties[r.role].session if r.session is None else r.session

    def _count_in_flight(self, role: str | None = None, change: int = 0) -> None:
        now = time.perf_counter()
        for r, n in self._in_flight.items():
            self.timing.roles[r].in_flight_s += n * (now - self._t_last)
        self._t_last = now
        if role is not None:
            self._in_flight[role] += change

    def _sent(self, role: str, session) -> None:
        """Count a request's prompt and how much of it this role's engine has seen before: the common
        prefix with the session's last request and its reply (`Session.seen`), or for a session's
        first request, with the last first request the role was sent (the chat template's shared
        beginning). An engine computes at least the prompt's last token, so that one never counts."""
        stats = self.timing.roles[role]
        ids, seen = session.ids, session.seen or self._opening.get(role, [])
        if not session.seen:
            self._opening[role] = list(ids)
        stats.sent_prompt_tokens += len(ids)
        stats.reusable_tokens += _common_prefix(ids, seen, max(len(ids) - 1, 0))

    def _record(self, role: str, span) -> None:
        stats = self.timing.roles[role]
        stats.requests += 1
        if isinstance(span, Span):
            stats.tokens += len(span.ids)
            stats.stopped_at_cut += span.finish == "cut"
            if span.cached_tokens is not None and span.prompt_tokens is not None:
                stats.reported += 1
                stats.prompt_tokens += span.prompt_tokens
                stats.cached_tokens += span.cached_tokens

    def _predict(self, role: str, requests: list[Boundary]) -> tuple[list[int | None], float]:
        """The predictor's cuts for `requests`, and the seconds it took (added up by the caller, in
        the driver's thread)."""
        t = time.perf_counter()
        cuts = self.predictors[role].cuts([r.text for r in requests], [r.context for r in requests], role)
        return cuts, time.perf_counter() - t

    # --- events: every sample on its own clock ----------------------------------------------------
    def _run_events(self) -> None:
        flying: list[_InFlight] = []
        pending: dict[Future, tuple] = {}  # future -> ("generate", item) | ("boundary", role, items)
        waiting: dict[str, list[_InFlight]] = {STUDENT: [], TEACHER: []}  # boundary requests
        predicting: dict[str, bool] = {STUDENT: False, TEACHER: False}

        def dispatch(item: _InFlight) -> None:
            r = item.request
            if isinstance(r, Boundary):
                waiting[r.role].append(item)
                return
            if r.role in item.warming:  # sent when the warm-up ends: its prompt is cached by then
                item.held = True
                return
            self._count_in_flight(r.role, +1)
            self._sent(r.role, self._session(item))
            watch = self._watch(item)
            extra = {"watch": watch} if watch is not None else {}
            pending[self.backends[r.role].submit(self._session(item), r.max_new_tokens, r.stop, **extra)] = \
                ("generate", item)

        def refill() -> None:
            for item in self._admit(flying):
                self._warm(item, pending)
                dispatch(item)

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tessy-predictor") as workers:
            refill()
            while pending or any(waiting.values()):
                for role, items in waiting.items():  # a free predictor takes every waiting request
                    if items and not predicting[role]:
                        batch, waiting[role] = items, []
                        predicting[role] = True
                        future = workers.submit(self._predict, role, [f.request for f in batch])
                        pending[future] = ("boundary", role, batch)
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for future in done:
                    kind, *what = pending.pop(future)
                    if kind == "warm":
                        item, role, sent = what
                        span = future.result()
                        self._record(role, span)
                        if not failed(span):  # the engine saw the prompt as sent (the session may have grown since)
                            item.transcript.parties[role].session.seen = sent
                        self.timing.roles[role].warm_ups += 1
                        del item.warming[role]
                        if item.held and item in flying and item.request is not None and item.request.role == role:
                            item.held = False
                            dispatch(item)
                    elif kind == "boundary":
                        role, batch = what
                        predicting[role] = False
                        cuts, seconds = future.result()
                        self.timing.predict_s += seconds
                        for item, cut in zip(batch, cuts):
                            self._step(item, cut, flying, dispatch)
                    else:
                        [item] = what
                        role = item.request.role
                        self._count_in_flight(role, -1)
                        span = future.result()
                        self._record(role, span)
                        if failed(span):
                            flying.remove(item)
                            self._fail(item, span)
                        else:
                            self._session(item).seen = list(self._session(item).ids)  # the reply included
                            self._step(item, span, flying, dispatch)
                refill()

    def _warm(self, item: _InFlight, pending: dict) -> None:
        """Warm up the prompt of a new sample's `warm_roles` other than the one its first request goes
        to, where the backend can (`Backend.warm`, a server's prefix cache)."""
        first = item.request.role if isinstance(item.request, Generate) else None
        for role in self.warm_roles:
            backend = self.backends[role]
            if first is not None and role != first and hasattr(backend, "warm"):
                session = item.transcript.parties[role].session
                self._sent(role, session)
                future = backend.warm(session)
                item.warming[role] = future
                pending[future] = ("warm", item, role, list(session.ids))

    def _step(self, item: _InFlight, result, flying: list[_InFlight], dispatch) -> None:
        if self._advance(item, result):
            dispatch(item)
        else:
            flying.remove(item)

    # --- ticks: batched calls in lock-step ----------------------------------------------------------
    def _run_ticks(self) -> None:
        flying: list[_InFlight] = []
        self._admit(flying)
        while flying:
            self._answer_boundaries(flying)
            for role in (STUDENT, TEACHER):
                self._answer_generates(role, flying)
            flying[:] = [f for f in flying if f.request is not None]
            self._admit(flying)

    def _answer_boundaries(self, flying: list[_InFlight]) -> None:
        for role in (STUDENT, TEACHER):
            group = [f for f in flying if isinstance(f.request, Boundary) and f.request.role == role]
            if group:
                cuts, seconds = self._predict(role, [f.request for f in group])
                self.timing.predict_s += seconds
                for f, cut in zip(group, cuts):
                    self._advance(f, cut)

    def _answer_generates(self, role: str, flying: list[_InFlight]) -> None:
        group = [f for f in flying if isinstance(f.request, Generate) and f.request.role == role]
        if not group:
            return
        wants = [f.request.max_new_tokens - sum(len(c.ids) for c in f.chunks) for f in group]
        asks = [min(n, self.chunk_tokens) for n in wants]
        t = time.perf_counter()
        self._count_in_flight(role, len(group))
        for f in group:
            self._sent(role, self._session(f))
        # A turn served whole in this tick may stop at its final cut; a longer request is served in pieces.
        watches = [self._watch(f) if ask == want else None for f, ask, want in zip(group, asks, wants)]
        extra = {"watch": watches} if any(w is not None for w in watches) else {}
        spans = self.backends[role].generate([self._session(f) for f in group], asks, [f.request.stop for f in group],
                                             **extra)
        self._count_in_flight(role, -len(group))
        self.timing.generate_s += time.perf_counter() - t
        self.timing.calls += 1
        self.timing.batch_rows += len(group)
        for f, span, want, ask in zip(group, spans, wants, asks):
            self._record(role, span)
            if failed(span):
                self._fail(f, span)
                continue
            self._session(f).seen = list(self._session(f).ids)  # the reply included
            f.chunks.append(span)
            if ask < want and span.finish == "length" and len(span.ids) == ask:
                continue  # the rest of this request in the next tick
            whole = self._join(role, f, f.chunks)
            f.chunks = []
            self._advance(f, whole)

    def _join(self, role: str, item: _InFlight, chunks: list[Span]) -> Span:
        """One span from a long request's chunks, cut after a stop string that spans two chunks."""
        if len(chunks) == 1:
            return chunks[0]
        backend = self.backends[role]
        ids = [t for c in chunks for t in c.ids]
        span = span_from_ids(backend.tokenizer, ids, chunks[-1].finish)
        for marker in item.request.stop:
            at = span.text.find(marker) if marker else -1
            if at != -1 and span.finish != "stop":
                end = at + len(marker)
                keep = next(i + 1 for i, o in enumerate(span.offsets) if o >= end)
                backend.rollback(self._session(item), len(ids) - keep)
                span = span_from_ids(backend.tokenizer, ids[:keep], "stop")
        return span
