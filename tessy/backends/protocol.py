"""The Backend protocol and what passes through it: sampling settings, sessions, spans, failures.
(tessy/backends/__init__.py says how the two shapes of writing serve the scheduler's two drivers.)
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Sampling:
    """A role's sampling. The defaults of a run live in `ModelSpec` (`Sampling.of`); these are the
    values that switch a knob off."""

    temperature: float  # 0 is greedy
    top_p: float = 1.0  # 1 is off
    seed: int | None = None  # None samples unseeded
    top_k: int = 0  # 0 is off
    min_p: float = 0.0  # 0 is off
    repetition_penalty: float = 1.0  # 1 is off; above 1 makes tokens already in the context less likely

    @classmethod
    def of(cls, config) -> "Sampling":
        """A role's sampling, from its `ModelSpec` (tessy.config)."""
        return cls(config.temperature, config.top_p, config.seed, config.top_k, config.min_p, config.repetition_penalty)


@dataclass
class Session:
    """One sample's transcript as one model sees it."""

    ids: list[int]
    n_cached: int = 0  # ids[:n_cached] have cached state in the engine
    state: Any = None  # engine-specific (the hf backend keeps per-layer key/value tensors)
    seed: int | None = None  # the session's seed stream (tessy/engine/seeds.py); None samples unseeded
    # The ids of this session's last request and what came back: what an engine's prefix cache may
    # hold of it when the next request comes (the scheduler keeps it, for `reusable_prompt_share`).
    seen: list[int] = field(default_factory=list, repr=False, compare=False)


@dataclass
class Span:
    """Up to k tokens a model wrote in one turn.

    `offsets[i]` is the length of the text of `ids[:i+1]`, or -1 where that prefix ends inside a
    character (a UTF-8 sequence cut by the k-token edge): no cut may land there.
    """

    ids: list[int]
    text: str
    offsets: list[int]
    finish: str  # "length" | "eos" | "stop" | "cut" (stopped at its final cut, tessy/engine/streaming.py)
    # What the engine reported for the request's prompt, where it reports it (servers): its tokens,
    # and how many of them came from the prefix cache.
    prompt_tokens: int | None = None
    cached_tokens: int | None = None

    def tokens_within(self, n_chars: int) -> int:
        """The most tokens whose text fits in the first `n_chars` characters."""
        n = 0
        for i, end in enumerate(self.offsets):
            if end == -1:
                continue
            if end > n_chars:
                break
            n = i + 1
        return n

    def text_of(self, n_tokens: int) -> str:
        return self.text[: self.offsets[n_tokens - 1]] if n_tokens else ""


class SampleError(Exception):
    """One row of a `generate` call that failed for good (a server backend gave up after its
    retries). A backend returns it in that row's place; the scheduler drops that sample and reports
    it, and the other rows go on."""

    def __init__(self, message: str, attempts: int = 1, endpoint: str = ""):
        super().__init__(message)
        self.attempts = attempts
        self.endpoint = endpoint


def failed(row) -> bool:
    """Whether a row that a backend (or `ChatClient`) returned is its failure, a `SampleError`, in
    the place of an answer: the one test every caller uses."""
    return isinstance(row, SampleError)


class Backend(Protocol):
    """Everything the scheduler and `tessy synth` call on a backend; every backend declares all of it.

    `watch` (only where `streams` is True): a callable per request that reads the span so far while
    it is written and says when to stop it (tessy/engine/streaming.py); the span then comes back with finish
    "cut". A backend whose `streams` is False is never handed one.

    What only a server has (`warm`, `server_counters`, `throttling`) answers None on a backend that
    has no such thing (an in-process engine): it does not warm, count or throttle."""

    tokenizer: Any
    sampling: Sampling
    concurrent: bool  # True: a server that batches whatever is in flight; drive it through `submit`
    streams: bool  # True: `generate` and `submit` take `watch` and stop a request when it says so

    def start(self, prompt: str, add_special_tokens: bool = False, key: str = "") -> Session:
        """A new session on `prompt`; `key` names it for its seed stream (tessy/engine/seeds.py)."""
        ...

    def extend(self, session: Session, text: str) -> int: ...

    def generate(self, sessions: list[Session], max_new_tokens: list[int], stop: list[tuple[str, ...]],
                 watch: list | None = None) -> list[Span | SampleError]: ...

    def submit(self, session: Session, max_new_tokens: int, stop: tuple[str, ...], watch=None) -> Future:
        """One request; the future's result is a `Span` or a `SampleError`."""
        ...

    def warm(self, session: Session) -> Future | None:
        """Have the engine compute the session's prompt now (a server's prefix cache), the session
        unchanged: a future whose result is the one-token `Span` or a `SampleError`; None where the
        backend has nothing to warm."""
        ...

    def server_counters(self) -> dict[str, float] | None:
        """The engine's own counters (a server's `/metrics`: prefix-cache hits and queries, prompt and
        generated tokens); None where the engine publishes none."""
        ...

    def throttling(self) -> dict | None:
        """How the servers held this role back (429/503 answers, Retry-After waits, concurrency); None
        where nothing throttles."""
        ...

    def rollback(self, session: Session, n_tokens: int) -> None: ...

    def release(self, session: Session) -> None: ...

    def close(self) -> None: ...


def answered(result) -> Future:
    """A future that is already done: `submit` of an in-process backend, which computes at once."""
    future: Future = Future()
    future.set_result(result)
    return future


DECODE_CONTEXT = 8  # tokens of left context when decoding one token's text (see SpanDecoder)


class SpanDecoder:
    """The text and per-token offsets (see `Span`) of ids that arrive a few at a time.

    Each new token's text is decoded with a few tokens of left context (SentencePiece drops a leading
    space at the start of a decode), so n tokens cost O(n) decodes, not O(n^2): reading the span after
    every event of a stream costs the new tokens only, and a single-model baseline's thinking is one
    request of up to its whole budget. A token that ends inside a character gets offset -1.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.offsets: list[int] = []
        self.text = ""
        self._done = 0  # ids[:_done] end on a whole character
        self._head_at, self._head = -1, ""  # the decode of the context before ids[_done:]

    def add(self, ids: list[int]) -> None:
        for token in ids:
            self.ids.append(token)
            start = max(0, self._done - DECODE_CONTEXT)
            if self._head_at != self._done:
                self._head_at = self._done
                self._head = self.tokenizer.decode(self.ids[start : self._done], skip_special_tokens=False)
            piece = self.tokenizer.decode(self.ids[start:], skip_special_tokens=False)
            if piece.endswith("\ufffd") or not piece.startswith(self._head):
                self.offsets.append(-1)
                continue
            self.text += piece[len(self._head) :]
            self._done = len(self.ids)
            self.offsets.append(len(self.text))

    def span(self, finish: str = "length") -> Span:
        """The span of the ids so far: `Span(ids, text, offsets, finish)`."""
        return Span(list(self.ids), self.text, list(self.offsets), finish)


def span_from_ids(tokenizer, ids: list[int], finish: str) -> Span:
    """Decode `ids` with per-token character offsets (see `Span`), as `SpanDecoder` does, checked
    against the decode of the whole: where the pieces do not add up to it, the exact
    prefix-by-prefix decode is used instead. Returns a `Span` with `finish`."""
    full = tokenizer.decode(ids, skip_special_tokens=False)
    decoder = SpanDecoder(tokenizer)
    decoder.add(ids)
    offsets, length = decoder.offsets, len(decoder.text)
    if length > len(full) or not _consistent(tokenizer, ids, offsets, full):
        return _span_by_prefixes(tokenizer, ids, finish, full)
    return Span(ids=list(ids), text=full[:length], offsets=offsets, finish=finish)


def _consistent(tokenizer, ids: list[int], offsets: list[int], full: str) -> bool:
    """The last whole-character prefix decodes to the text the offsets claim."""
    last = max((i for i, o in enumerate(offsets) if o != -1), default=-1)
    if last == -1:
        return True
    return tokenizer.decode(ids[: last + 1], skip_special_tokens=False) == full[: offsets[last]]


def _span_by_prefixes(tokenizer, ids: list[int], finish: str, full: str) -> Span:
    offsets, text = [], ""
    for i in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:i], skip_special_tokens=False)
        if prefix.endswith("\ufffd") or not full.startswith(prefix):
            offsets.append(-1)
        else:
            offsets.append(len(prefix))
            text = prefix
    return Span(ids=list(ids), text=text, offsets=offsets, finish=finish)
