"""Algorithm 1 of the paper, for one sample.

`tessy_sample` is a generator: each `yield` asks for one model call (`Generate`) or one predictor
call (`Boundary`), and receives its result. The scheduler batches those requests across all the
samples in flight, so this file holds no batching, caching or engine details.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tessy.backends import Session, Span
from tessy.predictors import STUDENT
from tessy.transcript import Transcript, other


@dataclass(frozen=True)
class Generate:
    role: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    # The session to write in; None is the sample's own session for `role`. A baseline with a
    # prompt of its own (tessy/methods.py) names another session of the same model here.
    session: Session | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Boundary:
    role: str
    text: str


@dataclass(frozen=True)
class LoopSettings:
    k: int = 20  # tokens per turn (paper, section 3.1)
    max_think_tokens: int = 384
    max_answer_tokens: int = 256
    max_rounds: int = 200
    same_vocab: bool = False  # different vocabularies: a handed-over span ends on a whole word
    repetition_min_chars: int = 48
    final_answer: str = STUDENT  # who writes the answer; "teacher" is the paper's appendix A.1 variant


def tessy_sample(x: Transcript, s: LoopSettings):
    """Alternate student and teacher spans until the thinking ends, then the student answers."""
    role = STUDENT  # lines 5-6: the student writes first, with B_S
    empty_before = False
    while x.stop_reason is None:  # line 7
        raw: Span = yield Generate(role, s.k, (x.close_marker(role),))  # line 8
        end, closed = thinking_end(raw, x.close_marker(role))
        b = yield Boundary(role, raw.text[:end])  # line 9
        cut = b < end
        n = kept_tokens(raw, b, whole_words=cut and not s.same_vocab)  # line 10
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
    needs no k-token turns (an in-process driver still serves it in chunks, tessy/scheduler.py)."""
    span: Span = yield Generate(role, s.max_answer_tokens, session=x.parties[role].session)
    x.accept(role, span, len(span.ids), part="answer")


def thinking_end(raw: Span, close_marker: str) -> tuple[int, bool]:
    """Where the span's thinking text ends, and whether the model closed its thinking there."""
    at = raw.text.find(close_marker) if close_marker else -1
    if at != -1:
        return at, True
    return len(raw.text), raw.finish == "eos"  # a plain model ending its turn ends its thinking


def kept_tokens(raw: Span, b: int, whole_words: bool) -> int:
    """How many of the span's tokens fit before character `b`.

    With `whole_words` (a hand-over between different vocabularies, paper section 3.1), a span
    that would end inside a word drops that partial word.
    """
    n = raw.tokens_within(b)
    if whole_words:
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
    if is_repeating(x.text("think"), s.repetition_min_chars):
        return "repetition"
    return None


def first_repetition(before: str, raw: Span, n: int, k: int, min_chars: int) -> int | None:
    """The repetition guard over one long span: the first k-token point (the points a k-token loop
    would have checked) at which `before` plus the span's first tokens ends in a repetition, as a
    token count within `n`; None when it never does."""
    points = [*range(k, n, k), n]
    for j in points:
        while j > 0 and raw.offsets[j - 1] == -1:  # inside a character: the last whole one
            j -= 1
        if j and is_repeating(before + raw.text_of(j), min_chars):
            return j
    return None


def is_repeating(text: str, min_chars: int = 48, max_period: int = 200) -> bool:
    """True when the text ends in one unit repeated at least 3 times over `min_chars` or more."""
    for period in range(1, max_period + 1):
        need = -(-max(3 * period, min_chars) // period) * period  # round up to whole units
        if need > len(text):
            break
        tail = text[-need:]
        if tail == tail[-period:] * (need // period):
            return True
    return False
