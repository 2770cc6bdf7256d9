"""Run many samples at once. Each sample is a generator of requests (tessy/engine/loop.py); this file
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

`driver: auto` picks events when both roles' backends are concurrent, else ticks. Each driver is a
class (`EventsDriver`, `TicksDriver`); what both keep (admission, the run's counts) is a `Books`
they share. `Scheduler` is the entry point: it picks the driver and runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tessy.backends import SampleError, Span, failed, span_from_ids
from tessy.engine.loop import Boundary, Generate
from tessy.engine.streaming import CutWatch, WatchBatcher, role_streams
from tessy.engine.transcript import Transcript
from tessy.predictors import BoundaryPredictor
from tessy.roles import STUDENT, TEACHER


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
    stopped_at_cut: int = 0  # turns whose request stopped once its cut was final (tessy/engine/streaming.py)
    warm_ups: int = 0  # one-token requests that computed a new sample's prompt ahead of its first turn
    sent_prompt_tokens: int = 0  # every request's prompt, as tessy sent it
    reusable_tokens: int = 0  # of those, the ids the engine had seen just before (`Books.sent`)
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
    # Streamed cuts (tessy/engine/streaming.py): per role, True, False or None (on where the backend can).
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
        books = Books(self, iter(starts), on_done, on_error)
        try:
            if self.driver_name() == "events":
                EventsDriver(books, self.warm_roles).run()
            else:
                TicksDriver(books, self.chunk_tokens).run()
        finally:
            books.close()
        books.count_in_flight()

    def streams(self, role: str) -> bool:
        """Whether `role`'s turns stop at their final cut (`tessy.engine.streaming.role_streams`)."""
        backend = self.backends[role]
        return role_streams(role, self.stream_cuts.get(role), backend, self.predictors[role], type(backend).__name__)


class Books:
    """What both drivers keep, one run's worth: the queue of samples and their admission, advance and
    failure, the streamed cuts' watches, and the counts in `Timing`."""

    def __init__(self, scheduler: Scheduler, starts: Iterator, on_done: Callable, on_error: Callable | None):
        self.scheduler = scheduler
        self.backends, self.predictors, self.timing = scheduler.backends, scheduler.predictors, scheduler.timing
        self._starts, self._on_done, self._on_error = starts, on_done, on_error
        self._t_last = time.perf_counter()
        self._in_flight = {role: 0 for role in self.backends}
        self._opening: dict[str, list[int]] = {}  # role -> the last first request of a session it was sent
        self._streams: dict[str, bool] = {}  # role -> `Scheduler.streams`, asked once
        self._batcher: WatchBatcher | None = None

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self.timing.predict_s += self._batcher.busy_s

    # --- samples: admit, advance, fail ------------------------------------------------------------
    def admit(self, flying: list[_InFlight]) -> list[_InFlight]:
        """Open samples from the queue until `max_in_flight` are open; the new ones."""
        new = []
        while len(flying) < self.scheduler.max_in_flight:
            start = next(self._starts, None)
            if start is None:
                break
            transcript, steps = start()
            item = _InFlight(transcript, steps)
            if self.advance(item, None):
                flying.append(item)
                new.append(item)
        return new

    def advance(self, item: _InFlight, result) -> bool:
        """Send `result` to the sample; False when it has finished (and was written)."""
        try:
            item.request = item.steps.send(result)
            return True
        except StopIteration:
            item.request = None
            item.transcript.release()
            self._on_done(item.transcript)
            return False

    def fail(self, item: _InFlight, error: SampleError) -> None:
        item.request = None
        item.steps.close()  # a method's side sessions are released in its `finally`
        item.transcript.release()
        if self._on_error is None:
            raise error
        self._on_error(item.transcript, error)

    def session(self, item: _InFlight):
        r = item.request
        return item.transcript.parties[r.role].session if r.session is None else r.session

    def predict(self, role: str, requests: list[Boundary]) -> tuple[list[int | None], float]:
        """The predictor's cuts for `requests`, and the seconds it took (added up by the caller, in
        the driver's thread)."""
        t = time.perf_counter()
        cuts = self.predictors[role].cuts([r.text for r in requests], [r.context for r in requests], role)
        return cuts, time.perf_counter() - t

    def watch(self, item: _InFlight):
        """The watch of a turn that its predictor cuts (None for other requests): a `CutWatch`, or
        on a server backend (whose streams call it on their own thread, one span at a time) a learned
        predictor's micro-batched watch."""
        r = item.request
        if r.cut_context is None:
            return None
        if r.role not in self._streams:
            self._streams[r.role] = self.scheduler.streams(r.role)
        if not self._streams[r.role]:
            return None
        predictor = self.predictors[r.role]  # a StreamingPredictor, since the role streams
        every = 1 if predictor.inline else self.scheduler.stream_every
        watch = CutWatch(predictor, r.role, r.cut_context, r.stop[0] if r.stop else "", every)
        if self.backends[r.role].concurrent and not predictor.inline:
            self._batcher = self._batcher or WatchBatcher()
            return self._batcher.watch(watch)
        return watch

    # --- counts -----------------------------------------------------------------------------------
    def count_in_flight(self, role: str | None = None, change: int = 0) -> None:
        now = time.perf_counter()
        for r, n in self._in_flight.items():
            self.timing.roles[r].in_flight_s += n * (now - self._t_last)
        self._t_last = now
        if role is not None:
            self._in_flight[role] += change

    def sent(self, role: str, session) -> None:
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

    def record(self, role: str, span) -> None:
        stats = self.timing.roles[role]
        stats.requests += 1
        if isinstance(span, Span):
            stats.tokens += len(span.ids)
            stats.stopped_at_cut += span.finish == "cut"
            if span.cached_tokens is not None and span.prompt_tokens is not None:
                stats.reported += 1
                stats.prompt_tokens += span.prompt_tokens
                stats.cached_tokens += span.cached_tokens


class EventsDriver:
    """Every sample on its own clock (server backends). Each future in flight maps to the method that
    takes its result: a model's reply (`_replied`), a predictor's cuts (`_cut`), a warm-up (`_warmed`)."""

    def __init__(self, books: Books, warm_roles: tuple[str, ...] = ()):
        self.books = books
        self.warm_roles = warm_roles
        self.flying: list[_InFlight] = []
        self.pending: dict[Future, Callable[[Any], None]] = {}  # future -> what to do with its result
        self.waiting: dict[str, list[_InFlight]] = {STUDENT: [], TEACHER: []}  # samples asking for a cut
        self.predicting: dict[str, bool] = {STUDENT: False, TEACHER: False}

    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tessy-predictor") as workers:
            self._refill()
            while self.pending or any(self.waiting.values()):
                for role, items in self.waiting.items():  # a free predictor takes every waiting request
                    if items and not self.predicting[role]:
                        self.waiting[role] = []
                        self.predicting[role] = True
                        future = workers.submit(self.books.predict, role, [f.request for f in items])
                        self.pending[future] = partial(self._cut, role, items)
                done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
                for future in done:
                    self.pending.pop(future)(future.result())
                self._refill()

    def _refill(self) -> None:
        for item in self.books.admit(self.flying):
            self._warm(item)
            self._dispatch(item)

    def _dispatch(self, item: _InFlight) -> None:
        """Send the sample's request: a cut waits for its role's predictor, a model request goes to its
        backend (or waits for its role's warm-up to end)."""
        r = item.request
        if isinstance(r, Boundary):
            self.waiting[r.role].append(item)
            return
        if r.role in item.warming:  # sent when the warm-up ends: its prompt is cached by then
            item.held = True
            return
        books = self.books
        books.count_in_flight(r.role, +1)
        books.sent(r.role, books.session(item))
        watch = books.watch(item)
        extra = {"watch": watch} if watch is not None else {}
        future = books.backends[r.role].submit(books.session(item), r.max_new_tokens, r.stop, **extra)
        self.pending[future] = partial(self._replied, item)

    def _step(self, item: _InFlight, result) -> None:
        if self.books.advance(item, result):
            self._dispatch(item)
        else:
            self.flying.remove(item)

    def _replied(self, item: _InFlight, span) -> None:
        books, role = self.books, item.request.role
        books.count_in_flight(role, -1)
        books.record(role, span)
        if failed(span):
            self.flying.remove(item)
            books.fail(item, span)
        else:
            books.session(item).seen = list(books.session(item).ids)  # the reply included
            self._step(item, span)

    def _cut(self, role: str, batch: list[_InFlight], result: tuple[list[int | None], float]) -> None:
        self.predicting[role] = False
        cuts, seconds = result
        self.books.timing.predict_s += seconds
        for item, cut in zip(batch, cuts):
            self._step(item, cut)

    def _warm(self, item: _InFlight) -> None:
        """Warm up the prompt of a new sample's `warm_roles` other than the one its first request goes
        to, where the backend warms (`Backend.warm`, a server's prefix cache)."""
        first = item.request.role if isinstance(item.request, Generate) else None
        for role in self.warm_roles:
            if first is None or role == first:
                continue
            session = item.transcript.parties[role].session
            sent = list(session.ids)
            future = self.books.backends[role].warm(session)
            if future is None:  # this backend has nothing to warm
                continue
            self.books.sent(role, session)
            item.warming[role] = future
            self.pending[future] = partial(self._warmed, item, role, sent)

    def _warmed(self, item: _InFlight, role: str, sent: list[int], span) -> None:
        books = self.books
        books.record(role, span)
        if not failed(span):  # the engine saw the prompt as sent (the session may have grown since)
            item.transcript.parties[role].session.seen = sent
        books.timing.roles[role].warm_ups += 1
        del item.warming[role]
        if item.held and item in self.flying and item.request is not None and item.request.role == role:
            item.held = False
            self._dispatch(item)


class TicksDriver:
    """Batched calls in lock-step (in-process backends): each tick answers every waiting `Boundary`,
    then every waiting `Generate`, with one call per role."""

    def __init__(self, books: Books, chunk_tokens: int):
        self.books = books
        self.chunk_tokens = chunk_tokens

    def run(self) -> None:
        flying: list[_InFlight] = []
        self.books.admit(flying)
        while flying:
            self._answer_boundaries(flying)
            for role in (STUDENT, TEACHER):
                self._answer_generates(role, flying)
            flying[:] = [f for f in flying if f.request is not None]
            self.books.admit(flying)

    def _answer_boundaries(self, flying: list[_InFlight]) -> None:
        for role in (STUDENT, TEACHER):
            group = [f for f in flying if isinstance(f.request, Boundary) and f.request.role == role]
            if group:
                cuts, seconds = self.books.predict(role, [f.request for f in group])
                self.books.timing.predict_s += seconds
                for f, cut in zip(group, cuts):
                    self.books.advance(f, cut)

    def _answer_generates(self, role: str, flying: list[_InFlight]) -> None:
        group = [f for f in flying if isinstance(f.request, Generate) and f.request.role == role]
        if not group:
            return
        books, timing = self.books, self.books.timing
        wants = [f.request.max_new_tokens - sum(len(c.ids) for c in f.chunks) for f in group]
        asks = [min(n, self.chunk_tokens) for n in wants]
        t = time.perf_counter()
        books.count_in_flight(role, len(group))
        for f in group:
            books.sent(role, books.session(f))
        # A turn served whole in this tick may stop at its final cut; a longer request is served in pieces.
        watches = [books.watch(f) if ask == want else None for f, ask, want in zip(group, asks, wants)]
        extra = {"watch": watches} if any(w is not None for w in watches) else {}
        spans = books.backends[role].generate([books.session(f) for f in group], asks,
                                              [f.request.stop for f in group], **extra)
        books.count_in_flight(role, -len(group))
        timing.generate_s += time.perf_counter() - t
        timing.calls += 1
        timing.batch_rows += len(group)
        for f, span, want, ask in zip(group, spans, wants, asks):
            books.record(role, span)
            if failed(span):
                books.fail(f, span)
                continue
            books.session(f).seen = list(books.session(f).ids)  # the reply included
            f.chunks.append(span)
            if ask < want and span.finish == "length" and len(span.ids) == ask:
                continue  # the rest of this request in the next tick
            whole = self._join(role, f, f.chunks)
            f.chunks = []
            books.advance(f, whole)

    def _join(self, role: str, item: _InFlight, chunks: list[Span]) -> Span:
        """One span from a long request's chunks, cut after a stop string that spans two chunks."""
        if len(chunks) == 1:
            return chunks[0]
        backend = self.books.backends[role]
        ids = [t for c in chunks for t in c.ids]
        span = span_from_ids(backend.tokenizer, ids, chunks[-1].finish)
        for marker in item.request.stop:
            at = span.text.find(marker) if marker else -1
            if at != -1 and span.finish != "stop":
                end = at + len(marker)
                keep = next(i + 1 for i, o in enumerate(span.offsets) if o >= end)
                backend.rollback(self.books.session(item), len(ids) - keep)
                span = span_from_ids(backend.tokenizer, ids[:keep], "stop")
        return span
