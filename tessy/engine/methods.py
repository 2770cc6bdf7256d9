"""The baselines of the paper's section 3.4, each as one sample's generator of requests.

Like `tessy_sample` (tessy/engine/loop.py), a method yields `Generate` requests and receives `Span`s; the
scheduler batches them across samples. A method that needs a prompt of its own (the teacher's
reference answer, the student's candidates, the teacher's scoring prompt) opens a fresh session on
the same backend and names it in its `Generate` requests, so the scheduler stays generic.

Every record has the shape of a tessy record: the messages hold the original question and the
response in the student's think markers, and `segments` say which model wrote each span.
"""

from __future__ import annotations

import hashlib
import re

from tessy.engine.loop import (
    Generate,
    LoopSettings,
    first_repetition,
    stop_guard,
    tessy_sample,
    thinking_end,
    write_answer,
)
from tessy.engine.transcript import Party, Transcript
from tessy.roles import STUDENT, TEACHER

# Teacher-Reference (self-distillation, [SDFT]): the student sees the teacher's answer in its prompt.
REFERENCE_TEMPLATE = (
    "{question}\n\nHere is a reference answer written by another model:\n{reference}\n\n"
    "Solve the problem yourself. You may use the reference."
)
# Teacher-Score (reject sampling): the teacher grades each candidate; the best one is kept.
SCORE_TEMPLATE = (
    "Rate the response to the problem below for correctness and quality, from 1 (wrong) to 10 "
    "(fully correct). Reply with the number only.\n\nProblem:\n{question}\n\nResponse:\n{response}"
)
SCORE_PREFIX = "Score: "
SCORE_TOKENS = 8


# --- one model alone ----------------------------------------------------------------------------
def solo_sample(x: Transcript, s: LoopSettings, thinker: str, writer: str):
    """`thinker` writes the whole thinking, `writer` the final answer after its own close marker.

    No predictor acts here, so the thinking is one request up to the thinking budget, stopping at
    the close marker, and the answer is one more: a 20k-token sample costs two requests, not a
    thousand. The repetition guard then looks at the same k-token points as tessy's loop and trims
    the thinking at the first one that repeats, so lengths and stop reasons stay comparable.
    """
    close = x.close_marker(thinker)
    while x.stop_reason is None:
        budget = max(s.max_think_tokens - x.tokens("think"), 1)
        raw = yield Generate(thinker, budget, (close,), session=x.parties[thinker].session)
        end, closed = thinking_end(raw, close)
        n = raw.tokens_within(end)
        repeated = first_repetition(x.text("think"), raw, n, s.turn(thinker), s)
        x.accept(thinker, raw, n if repeated is None else repeated)
        x.rounds += 1
        if repeated is not None:
            x.close_thinking("repetition", writer)
        elif closed:
            x.close_thinking(f"{thinker}_closed", writer)
        elif guard := stop_guard(x, s):
            x.close_thinking(guard, writer)
    yield from write_answer(x, s, writer)


def mix_sources(ids: list[str], seed: int) -> dict[str, str]:
    """Teacher-Mix: exactly half the prompts (rounded down) go to the teacher, the rest to the
    student. The split depends only on the seed and the set of ids, not on their order."""
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    half = len(order) // 2
    return {i: (TEACHER if rank < half else STUDENT) for rank, i in enumerate(order)}


def teacher_mix(x: Transcript, s: LoopSettings, source: str):
    x.method_stats["mix_source"] = source
    yield from solo_sample(x, s, source, source)


# --- methods with prompts of their own ----------------------------------------------------------
def fresh_party(party: Party, messages: list[dict], key: str) -> Party:
    """The same model, profile and chat template arguments in a new session, on new chat messages;
    `key` names the session's seed stream (tessy/engine/seeds.py), so each candidate samples differently."""
    text, used_template = party.renderer.render(messages)
    session = party.backend.start(text, add_special_tokens=not used_template, key=key)
    return Party(party.backend, party.profile, session, party.renderer)


def side_transcript(x: Transcript, parties: dict[str, Party]) -> Transcript:
    """A transcript for one of a method's side prompts; its tokens are charged to `x`."""
    return Transcript(x.id, x.messages, parties)


def charge(x: Transcript, y: Transcript) -> None:
    for role, n in y.generated_tokens.items():
        x.generated_tokens[role] += n


def teacher_reference(x: Transcript, s: LoopSettings):
    """The teacher answers the question (thinking, then answer); the student then thinks and
    answers with that answer as a reference in its prompt. The record keeps the original question."""
    question = last_user(x.messages)
    teacher = x.parties.pop(TEACHER)  # the teacher's own session already holds the question
    y = side_transcript(x, {TEACHER: teacher})
    try:  # a failed sample is closed by the scheduler: the side session is released either way
        yield from solo_sample(y, s, TEACHER, TEACHER)
    finally:
        y.release()
    charge(x, y)
    reference = y.text("answer").strip()
    x.method_stats["reference"] = reference
    x.method_stats["reference_tokens"] = y.tokens("answer")
    student = x.parties[STUDENT]
    student.backend.release(student.session)
    prompted = [*x.messages[:-1],
                {"role": "user", "content": REFERENCE_TEMPLATE.format(question=question, reference=reference)}]
    x.parties[STUDENT] = fresh_party(student, prompted, f"{x.id}/{STUDENT}/reference")
    yield from solo_sample(x, s, STUDENT, STUDENT)


def parse_score(text: str) -> float | None:
    """The first number in the teacher's reply, if it lies in [0, 10]."""
    m = re.search(r"-?\d+(?:\.\d+)?", text)
    if m is None:
        return None
    value = float(m.group())
    return value if 0 <= value <= 10 else None


def best_candidate(scores: list[float | None]) -> int:
    """The highest score wins; an unreadable score counts below every number; ties go to the first."""
    return max(range(len(scores)), key=lambda i: (scores[i] if scores[i] is not None else float("-inf"), -i))


def teacher_score(x: Transcript, s: LoopSettings, n_candidates: int):
    """The student writes `n_candidates` responses; the teacher scores each; the best is kept.

    Candidates run one after another within a sample (the scheduler still batches across
    samples). The teacher judges without thinking: its think block is closed before `Score:`.
    """
    question = last_user(x.messages)
    student, teacher = x.parties[STUDENT], x.parties[TEACHER]
    candidates = []
    for c in range(n_candidates):
        y = side_transcript(x, {STUDENT: fresh_party(student, x.messages, f"{x.id}/{STUDENT}/candidate{c}")})
        try:
            yield from solo_sample(y, s, STUDENT, STUDENT)
        finally:
            y.release()
        charge(x, y)
        candidates.append(y)
    scores, replies = [], []
    for c, y in enumerate(candidates):
        response = student.profile.response(y.text("think"), y.text("answer"))
        judge = fresh_party(teacher,
                            [{"role": "user", "content": SCORE_TEMPLATE.format(question=question, response=response)}],
                            f"{x.id}/{TEACHER}/judge{c}")
        judge.backend.extend(judge.session, teacher.profile.think_close + teacher.profile.answer_open + SCORE_PREFIX)
        try:
            span = yield Generate(TEACHER, SCORE_TOKENS, ("\n",), session=judge.session)
        finally:
            judge.backend.release(judge.session)
        x.generated_tokens[TEACHER] += len(span.ids)
        replies.append(span.text)
        scores.append(parse_score(span.text))
    best = best_candidate(scores)
    adopt(x, candidates[best])
    x.method_stats.update({"scores": scores, "score_replies": replies, "chosen": best,
                           "candidate_think_tokens": [y.tokens("think") for y in candidates]})


def adopt(x: Transcript, y: Transcript) -> None:
    """Make `y`'s response the sample's response."""
    x.segments = y.segments
    x.rounds, x.switches, x.forced_progress = y.rounds, y.switches, y.forced_progress
    x.stop_reason, x.cuts = y.stop_reason, y.cuts


def last_user(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


# Every method of tessy.config.METHODS, as its generator over one sample: from the transcript, the
# loop settings, Teacher-Score's number of candidates and Teacher-Mix's source for this prompt.
STEPS = {
    "tessy": lambda x, s, candidates, source: tessy_sample(x, s),
    "student-only": lambda x, s, candidates, source: solo_sample(x, s, STUDENT, STUDENT),
    # Sequence-level distillation: the teacher writes all of it (the record still uses the student's
    # think markers, as SFT data for the student would).
    "teacher-only": lambda x, s, candidates, source: solo_sample(x, s, TEACHER, TEACHER),
    "teacher-mix": lambda x, s, candidates, source: teacher_mix(x, s, source),
    # The student thinks; the teacher, having seen that thinking, writes the answer.
    "teacher-answer": lambda x, s, candidates, source: solo_sample(x, s, STUDENT, TEACHER),
    # The teacher thinks; the student writes the answer after that thinking, in its own markers.
    "teacher-think": lambda x, s, candidates, source: solo_sample(x, s, TEACHER, STUDENT),
    "teacher-reference": lambda x, s, candidates, source: teacher_reference(x, s),
    "teacher-score": lambda x, s, candidates, source: teacher_score(x, s, candidates),
}
