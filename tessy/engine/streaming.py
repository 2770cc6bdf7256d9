"""Cuts made while a span streams: a turn's request stops as soon as its cut is final.

A turn asks for up to k tokens, and the boundary predictor keeps those before its cut (Algorithm 1,
lines 8-10). Every token after the cut is generated, thrown away and paid for. When the predictor
reads the span while it arrives, the request can stop at the first cut: the stream is closed (a
server then aborts the sequence and frees its slot) or, in process, the row leaves the batch.

What is kept must be what the whole turn would have kept for the same seed: the same seed gives the
same tokens, so the span that stopped early is a prefix of the whole one, and the cut must not
depend on anything after that prefix. A cut at character `b` of the span so far is final when:
- the model closed its thinking within the span so far (the predictor then reads exactly the text
  the whole turn's predictor reads), or
- the predictor's own reading of `b` is settled: its `cut_settled(text, b)` says so (the lexicon:
  no phrase may still be growing over `b`; a causal token classifier: always, once the word at `b`
  is whole). A predictor that is no `StreamingPredictor` (tessy/predictors/__init__.py) cannot
  promise this (its window slides as the span grows), and its role's turns run to k; and
- the loop's own reading of the cut is settled (tessy/engine/loop.py, `kept_tokens` and
  `first_word_tokens`): a whole word and a whitespace have arrived after `b`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tessy.backends import Backend, Span
from tessy.predictors import StreamingPredictor

WHOLE_WORD = re.compile(r"\w+(?=\W)")  # a word that something after it has ended


def can_stream(predictor) -> bool:
    """Whether `predictor` can say when its cut is final before the span ends."""
    return isinstance(predictor, StreamingPredictor)


def role_streams(role: str, wanted: bool | None, backend: Backend, predictor, backend_name: str) -> bool:
    """Whether `role`'s turns stop at their final cut: its `stream_cuts` setting (`wanted`: True,
    False, or None for wherever it can) where its backend streams and its predictor can promise a
    final cut. The one place this is decided (`tessy synth` checks the setting with it; the
    scheduler streams by it).

    Raises ValueError where `wanted` is True and the backend (named `backend_name`) cannot stream."""
    if wanted and not backend.streams:
        raise ValueError(f"{role}.stream_cuts is true, but the {backend_name} backend cannot stop "
                         "a request while it streams; set it to null or false")
    return wanted is not False and backend.streams and can_stream(predictor)


def settled(text: str, b: int) -> bool:
    """The loop's own rule: a whole word and a whitespace have arrived after `b`."""
    tail = text[b:]
    return WHOLE_WORD.search(tail) is not None and any(c.isspace() for c in tail)


@dataclass
class CutWatch:
    """One turn's request, watched while it streams: `__call__(span so far)` is True once the cut
    is final, and the backend then stops the request.

    `every`: tokens between two readings of the span (a learned predictor's forward pass is not
    free; the lexicon reads every token). `check` reads many watches' spans with one predictor call
    per predictor, which is how a batched backend asks."""

    predictor: object
    role: str
    context: str  # the thinking before the span, as the loop hands it to the predictor
    close_marker: str
    every: int = 1
    read_at: int = -1  # the span's length in tokens at the last reading
    final_text: str | None = None  # the text on which the cut was found final

    def __call__(self, span: Span) -> bool:
        return self.check([self], [span])[0]

    def stops(self, span: Span) -> bool:
        """Whether `span` continues the text the cut was found final on. A request tried again (or
        asked again whole) starts a new span: a verdict on another text does not hold for it."""
        if self.final_text is None:
            return False
        if span.text.startswith(self.final_text):
            return True
        self.final_text, self.read_at = None, -1
        return False

    def due(self, span: Span) -> bool:
        if len(span.ids) < self.read_at:  # a new attempt: read it afresh
            self.read_at = -1
        return self.due_after(len(span.ids))

    def due_after(self, n_tokens: int) -> bool:
        """Whether a span of `n_tokens` is read: a caller that holds ids skips decoding the others."""
        return self.final_text is None and n_tokens > 0 and n_tokens - self.read_at >= self.every

    @staticmethod
    def check(watches: list[CutWatch], spans: list[Span]) -> list[bool]:
        """Read every due watch's span (one `cuts` call per predictor); each watch's verdict."""
        due = [(w, s) for w, s in zip(watches, spans) if w.due(s)]
        groups: dict[int, list[tuple[CutWatch, Span]]] = {}
        for w, s in due:
            w.read_at = len(s.ids)
            groups.setdefault(id(w.predictor), []).append((w, s))
        for group in groups.values():
            texts, closed = [], []
            for w, s in group:
                at = s.text.find(w.close_marker) if w.close_marker else -1
                texts.append(s.text if at == -1 else s.text[:at])
                closed.append(at != -1)
            first = group[0][0]
            cuts = first.predictor.cuts(texts, [w.context for w, _ in group], first.role)
            for (w, s), text, b, done in zip(group, texts, cuts, closed):
                if b is not None and (done or settled(text, b) and w.predictor.cut_settled(text, b)):
                    w.final_text = s.text
        return [w.stops(s) for w, s in zip(watches, spans)]


class WatchBatcher:
    """A predictor that is not cheap (a learned one) on streamed spans, in micro-batches.

    A stream's watch hands over its span and returns at once with the verdict so far; one worker
    thread reads every span handed over since its last pass in one `CutWatch.check` whenever it is
    free. A verdict found a few tokens late stops the request a few tokens late: the cut itself is
    the same, since it was final."""

    def __init__(self):
        self._waiting: dict[int, tuple[CutWatch, Span]] = {}
        self._wake = threading.Condition()
        self._closed = False
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._run, name="tessy-stream-cuts", daemon=True)
        self._thread.start()

    def watch(self, w: CutWatch) -> Callable[[Span], bool]:
        def call(span: Span) -> bool:
            if w.stops(span):
                return True
            if w.due(span):
                with self._wake:
                    self._waiting[id(w)] = (w, span)
                    self._wake.notify()
            return False

        return call

    def _run(self) -> None:
        import time

        while True:
            with self._wake:
                while not self._waiting and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                batch, self._waiting = list(self._waiting.values()), {}
            t = time.perf_counter()
            CutWatch.check([w for w, _ in batch], [s for _, s in batch])
            self.busy_s += time.perf_counter() - t

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)
