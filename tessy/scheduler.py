"""Run many samples at once: collect their requests and batch them per model and per predictor.

Each sample is a generator (see `tessy.loop`). One tick answers every pending `Boundary` request
with one predictor call per role, then every pending `Generate` request with one backend call per
role. A finished sample is written out and a new prompt takes its place (continuous batching).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tessy.backends import SampleError
from tessy.loop import Boundary, Generate
from tessy.predictors import STUDENT, TEACHER, BoundaryPredictor, boundary
from tessy.transcript import Transcript


@dataclass
class _InFlight:
    transcript: Transcript
    steps: Any  # the sample's generator
    request: Any = None


@dataclass
class Timing:
    generate_s: float = 0.0
    predict_s: float = 0.0
    calls: int = 0
    batch_rows: int = 0


@dataclass
class Scheduler:
    backends: dict  # role -> Backend
    predictors: dict[str, BoundaryPredictor]
    max_in_flight: int = 8
    timing: Timing = field(default_factory=Timing)

    def run(self, starts: Iterator[Callable[[], tuple[Transcript, Any]]], on_done: Callable[[Transcript], None],
            on_error: Callable[[Transcript, SampleError], None] | None = None) -> None:
        """Drive every sample that `starts` yields to its end; call `on_done` as each finishes.

        A sample whose backend call failed for good (a `SampleError` in its row) is dropped and
        given to `on_error` (raised when there is none); the other samples go on."""
        self._on_error = on_error
        flying: list[_InFlight] = []
        starts = iter(starts)

        def admit() -> None:
            while len(flying) < self.max_in_flight:
                start = next(starts, None)
                if start is None:
                    return
                transcript, steps = start()
                item = _InFlight(transcript, steps)
                if self._advance(item, None, on_done):
                    flying.append(item)

        admit()
        while flying:
            self._answer_boundaries(flying, on_done)
            for role in (STUDENT, TEACHER):
                self._answer_generates(role, flying, on_done)
            flying[:] = [f for f in flying if f.request is not None]
            admit()

    def _advance(self, item: _InFlight, result, on_done) -> bool:
        try:
            item.request = item.steps.send(result)
            return True
        except StopIteration:
            item.request = None
            item.transcript.release()
            on_done(item.transcript)
            return False

    def _answer_boundaries(self, flying: list[_InFlight], on_done) -> None:
        for role in (STUDENT, TEACHER):
            group = [f for f in flying if isinstance(f.request, Boundary) and f.request.role == role]
            if not group:
                continue
            t = time.perf_counter()
            spans = self.predictors[role].style_spans([f.request.text for f in group])
            self.timing.predict_s += time.perf_counter() - t
            for f, style in zip(group, spans):
                self._advance(f, boundary(f.request.text, style, role), on_done)

    def _answer_generates(self, role: str, flying: list[_InFlight], on_done) -> None:
        group = [f for f in flying if isinstance(f.request, Generate) and f.request.role == role]
        if not group:
            return
        t = time.perf_counter()
        spans = self.backends[role].generate(
            [f.transcript.parties[role].session if f.request.session is None else f.request.session for f in group],
            [f.request.max_new_tokens for f in group],
            [f.request.stop for f in group],
        )
        self.timing.generate_s += time.perf_counter() - t
        self.timing.calls += 1
        self.timing.batch_rows += len(group)
        for f, span in zip(group, spans):
            if isinstance(span, SampleError):
                self._fail(f, span)
            else:
                self._advance(f, span, on_done)

    def _fail(self, item: _InFlight, error: SampleError) -> None:
        item.request = None  # leaves the flight at the end of this tick
        item.steps.close()  # a method's side sessions are released in its `finally`
        item.transcript.release()
        if self._on_error is None:
            raise error
        self._on_error(item.transcript, error)
