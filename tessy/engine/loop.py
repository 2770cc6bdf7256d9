"""Algorithm 1 of the paper, for one sample.

`tessy_sample` is a generator: each `yield` asks for one model call (`Generate`) or one predictor
call (`Boundary`), and receives its result. The scheduler batches those requests across all the
samples in flight, so this file holds no batching, caching or engine details.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tessy.backends import Session, Span
from tessy.engine.transcript import Transcript
from tessy.roles import STUDENT, TEACHER, other


@dataclass(frozen=True)
class Generate:
    role: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    # The session to write in; None is the sample's own session for `role`. A baseline with a
    # prompt of its own (tessy/engine/methods.py) names another session of the same model here.
    session: Session | None = field(default=None, compare=False)
    # A turn that the role's predictor will cut: the thinking before it, which the predictor reads.
    # The scheduler may then stop the request as soon as the cut is final (tessy/engine/streaming.py).
    cut_context: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Boundary:
    role: str
    text: str
    context: str = ""  # the thinking before `text`, which a predictor may read but never cuts


CONTEXT_CHARS = 4000  # thinking handed to a predictor as left context: it reads what it needs of it


@dataclass(frozen=True)
class LoopSettings:
    """The loop's settings, taken from the run's config (`of`): the defaults live there, once."""

    k: dict[str, int]  # role -> tokens per turn (paper, section 3.1: 20 for both)
    max_think_tokens: int
    max_answer_tokens: int
    max_rounds: int
    same_vocab: bool  # different vocabularies: a handed-over span ends on a whole word
    handover: str  # how a cut span ends a word; see `kept_tokens`
    repetition_min_words: int  # the repetition guard, see `is_repeating`
    repetition_min_repeats: int
    repetition_window_chars: int
    final_answer: str  # who writes the answer; "teacher" is the paper's appendix A.1 variant
    context_chars: int = CONTEXT_CHARS

    @classmethod
    def of(cls, config, same_vocab: bool) -> "LoopSettings":
        """From a `SynthConfig`: a role's own `k`, else the top-level `k`."""
        return cls(
            k={role: getattr(config, role).turn.k or config.k for role in (STUDENT, TEACHER)},
            max_think_tokens=config.max_think_tokens,
            max_answer_tokens=config.max_answer_tokens,
            max_rounds=config.max_rounds,
            same_vocab=same_vocab,
            handover=config.handover,
            repetition_min_words=config.repetition_min_words,
            repetition_min_repeats=config.repetition_min_repeats,
            repetition_window_chars=config.repetition_window_chars,
            final_answer=config.final_answer,
        )

    def turn(self, role: str) -> int:
        """k for `role`."""
        return self.k[role]

    def longest_turn(self) -> int:
        return max(self.k.values())

    def repeating(self, text: str) -> bool:
        return is_repeating(text, self.repetition_min_words, self.repetition_min_repeats, self.repetition_window_chars)


def tessy_sample(x: Transcript, s: LoopSettings):
    """Alternate student and teacher spans until the thinking ends, then the student answers."""
    role = STUDENT  # lines 5-6: the student writes first, with B_S
    empty_before = False
    while x.stop_reason is None:  # line 7
        context = x.tail("think", s.context_chars)
        raw: Span = yield Generate(role, s.turn(role), (x.close_marker(role),), cut_context=context)  # line 8
        end, closed = thinking_end(raw, x.close_marker(role))
        b = yield Boundary(role, raw.text[:end], context)  # line 9: a cut, or None
        cut = b is not None
        n = kept_tokens(raw, b if cut else end, s.handover if cut else "", s.same_vocab, end)  # line 10
        if cut and n == 0 and empty_before:
            n = first_word_tokens(raw, end)  # no progress twice: accept at least one word
            x.forced_progress += 1
        empty_before = n == 0
        x.accept(role, raw, n)  # line 11
        x.rounds += 1
        if cut:  # lines 12-18: a cut means the other kind of token starts here
            x.cuts.append({"round": x.rounds, "role": role, "predictor": x.predictors.get(role, "")})
            role = other(role)
            x.switches += 1
        elif closed:  # a model closed its thinking (a cut would have rolled the marker back)
            x.close_thinking(f"{role}_closed", s.final_answer)
        if x.stop_reason is None and (guard := stop_guard(x, s)):
            x.close_thinking(guard, s.final_answer)
    yield from write_answer(x, s, s.final_answer)  # lines 21-22


def write_answer(x: Transcript, s: LoopSettings, role: str = STUDENT):
    """The final answer, after the writer's think-close marker (tessy has appended it): one request
    up to the answer budget, which ends at the writer's end of turn. No predictor acts on it, so it
    needs no k-token turns (an in-process driver still serves it in chunks, tessy/engine/scheduler.py)."""
    span: Span = yield Generate(role, s.max_answer_tokens, session=x.parties[role].session)
    x.accept(role, span, len(span.ids), part="answer")


def thinking_end(raw: Span, close_marker: str) -> tuple[int, bool]:
    """Where the span's thinking text ends, and whether the model closed its thinking there."""
    at = raw.text.find(close_marker) if close_marker else -1
    if at != -1:
        return at, True
    return len(raw.text), raw.finish == "eos"  # a plain model ending its turn ends its thinking


def kept_tokens(raw: Span, b: int, handover: str = "", same_vocab: bool = True, limit: int | None = None) -> int:
    """How many of the span's tokens fit before character `b`, and how a cut span ends a word.

    - `drop-partial-word` (paper, section 3.1): between different vocabularies, a span that would
      end inside a word drops that partial word; with one vocabulary the cut stays where it is.
    - `complete-word` (the authors' release): the kept text runs on to the next whitespace of the
      same model's span (never past `limit`, where its thinking ends), so the word the cut landed in
      is completed rather than dropped. Applied whatever the vocabularies. The kept text is whole
      tokens of the span, so where that whitespace falls inside a token it ends at the token before.
    - "" (no cut): the tokens within `b`.
    """
    if handover == "complete-word":
        limit = len(raw.text) if limit is None else limit
        while b < limit and not raw.text[b].isspace():
            b += 1
    n = raw.tokens_within(b)
    if handover == "drop-partial-word" and not same_vocab:
        end = raw.offsets[n - 1] if n else 0
        if 0 < end < len(raw.text) and raw.text[end - 1].isalnum() and raw.text[end].isalnum():
            while end > 0 and raw.text[end - 1].isalnum():
                end -= 1
            n = raw.tokens_within(end)
    return n


def first_word_tokens(raw: Span, end: int) -> int:
    """Tokens that cover the span's first word (at least one token when there is any)."""
    i = 0
    while i < end and not raw.text[i].isalnum():
        i += 1
    while i < end and raw.text[i].isalnum():
        i += 1
    n = raw.tokens_within(i)
    if n == 0:
        n = next((j + 1 for j, off in enumerate(raw.offsets) if off != -1 and off <= end), 0)
    return n


def stop_guard(x: Transcript, s: LoopSettings) -> str | None:
    """The guards that keep a sample from looping forever; each names its stop reason."""
    if x.tokens("think") >= s.max_think_tokens:
        return "think_budget"
    if x.rounds >= s.max_rounds:
        return "max_rounds"
    if s.repeating(x.tail("think", s.repetition_window_chars)):
        return "repetition"
    return None


def first_repetition(before: str, raw: Span, n: int, k: int, s: LoopSettings) -> int | None:
    """The repetition guard over one long span: the first k-token point (the points a k-token loop
    would have checked) at which `before` plus the span's first tokens ends in a repetition, as a
    token count within `n`; None when it never does."""
    window = s.repetition_window_chars + 1  # one more: whether the window starts inside a word
    before = before[-window:]
    points = [*range(k, n, k), n]
    for j in points:
        while j > 0 and raw.offsets[j - 1] == -1:  # inside a character: the last whole one
            j -= 1
        end = raw.offsets[j - 1] if j else 0
        if j and s.repeating((before + raw.text[max(0, end - window):end])[-window:]):
            return j
    return None


def is_repeating(text: str, min_words: int = 3, min_repeats: int = 8, window_chars: int = 1000) -> bool:
    """True when the text ends in a loop: one unit of at least `min_words` words, repeated at least
    `min_repeats` times in a row, within the last `window_chars` characters (words are compared
    whitespace-insensitively).

    A unit that is itself a shorter unit repeated (`0 0 0`, `| --- | --- |`, `pass pass pass`) is
    that shorter unit: rules of dashes, rows of zeros, table rules and short repeated code lines are
    ordinary text. Such a short unit is a loop only when it fills the whole window.
    """
    tail = text[-window_chars:]
    words = tail.split()
    if len(tail) == window_chars and len(text) > window_chars and not text[-window_chars - 1].isspace():
        words = words[1:]  # the window starts inside a word
    if words and not tail[-1:].isspace():
        words = words[:-1]  # the text may end inside a word (a turn ends anywhere): judge what is whole
    for period in range(1, len(words) // 2 + 1):
        copies = _copies(words, period)
        if copies < 2:
            continue
        if period < min_words:
            if copies * period == len(words) and len(text) >= window_chars:
                return True  # a short unit over the whole window
            continue
        if copies >= min_repeats and not any(period % q == 0 and _copies(words[-period:], q) == period // q
                                             for q in range(1, min_words)):
            return True
    return False


def _copies(words: list[str], period: int) -> int:
    """How many times the last `period` words repeat back to back at the end of `words`."""
    unit, n = words[-period:], 1
    while (n + 1) * period <= len(words) and words[-(n + 1) * period:-n * period] == unit:
        n += 1
    return n
