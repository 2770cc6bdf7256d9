"""Control flow of Algorithm 1, pinned with scripted generators (tests/scripted.py)."""

import pytest
from scripted import EOS, run_scripted

from tessy.engine.loop import is_repeating
from tessy.predictors.lexicon import LexiconPredictor

ANSWER = ["The answer.", EOS]


def think(x):
    return [(s["source"], s["text"]) for s in x.segments if s["part"] == "think"]


def test_cut_switches_roles_and_student_writes_first():
    # The student's span is cut at "compute" (capability): the teacher takes over.
    [x], student, teacher = run_scripted(
        ["Okay, so compute it", EOS, *ANSWER], ["x = 1 + 2 = 3. ", "</think>"], same_vocab=True
    )
    assert think(x)[0] == ("student", "Okay, so ")
    assert think(x)[1][0] == "teacher" and think(x)[1][1].startswith("x = 1 + 2 = 3.")
    assert x.switches == 1
    assert x.stop_reason == "teacher_closed"


def test_no_cut_keeps_the_role():
    # Teacher spans without style phrases are not cut, so the teacher keeps writing.
    [x], _, teacher = run_scripted(
        ["compute", *ANSWER], ["x = 1 + 2 ", "y = x * 4 ", "</think>"], same_vocab=True
    )
    assert [src for src, _ in think(x)] == ["teacher"]  # merged: one uncut run of teacher spans
    assert think(x)[0][1] == "x = 1 + 2 y = x * 4 "
    assert x.switches == 1  # only the student's empty span was cut


def test_cut_on_teacher_span_returns_to_student():
    [x], _, _ = run_scripted(
        ["Okay, so x", "Wait, let me check x", "</think>", *ANSWER],
        ["x = 3. Wait, no", "y = 5 ", "</think>"],
        same_vocab=True,
    )
    sources = [src for src, _ in think(x)]
    assert sources[:3] == ["student", "teacher", "student"]
    assert think(x)[1] == ("teacher", "x = 3. ")


def test_empty_span_is_handled_and_two_in_a_row_force_one_word():
    # Student starts with capability (empty span), teacher starts with style (empty span):
    # the no-progress rule accepts the teacher's first word.
    [x], _, _ = run_scripted(["compute", *ANSWER], ["Wait x = 1 ", "</think>"], same_vocab=True)
    assert x.forced_progress == 1
    assert think(x)[0] == ("teacher", "Wait")


class CutAt:
    """A predictor that cuts a teacher span where `marker` starts ("abc|def": mid-word), and cuts
    like the lexicon elsewhere."""

    name = "cut-at"

    def __init__(self, marker="cdef"):
        self.marker, self.lexicon = marker, LexiconPredictor()

    def cuts(self, texts, contexts, role):
        return [t.find(self.marker) if self.marker in t else c
                for t, c in zip(texts, self.lexicon.cuts(texts, contexts, role))]


@pytest.mark.parametrize("same_vocab, handover, kept", [
    (False, "drop-partial-word", "x = 12 + "),  # paper, section 3.1: the partial word goes
    (True, "drop-partial-word", "x = 12 + ab"),  # one vocabulary: the cut stays where it is
    (False, "complete-word", "x = 12 + abcdef"),  # the release: the word runs on to the next space
    (True, "complete-word", "x = 12 + abcdef"),
])
def test_handover_modes_end_a_cut_span(same_vocab, handover, kept):
    [x], _, _ = run_scripted(["compute", "Hmm", EOS, *ANSWER], ["x = 12 + abcdef gh", "</think>"],
                             same_vocab=same_vocab, handover=handover, predictor=CutAt())
    spans = think(x)
    at = next(i for i, (source, _) in enumerate(spans) if source == "teacher")
    assert spans[at] == ("teacher", kept)
    assert spans[at + 1][0] == "student"  # the cut handed the turn over


def test_complete_word_stops_at_the_close_marker():
    [x], _, _ = run_scripted(["compute", "Hmm", EOS, *ANSWER], ["x = abcdef</think>"], same_vocab=True,
                             handover="complete-word", predictor=CutAt())
    assert ("teacher", "x = abcdef") in think(x)


class CutAtTheEnd:
    """Cuts every teacher span at its end: a switch that drops nothing."""

    name = "cut-at-the-end"

    def cuts(self, texts, contexts, role):
        return [len(t) if role == "teacher" else c
                for t, c in zip(texts, LexiconPredictor().cuts(texts, contexts, role))]


def test_a_cut_that_drops_nothing_still_switches():
    # The release's rule can switch with the whole span kept (its window ends on the other kind).
    [x], _, _ = run_scripted(["compute", "Hmm", EOS, *ANSWER], ["x = 12 ", "</think>"], same_vocab=True,
                             predictor=CutAtTheEnd())
    assert think(x)[:2] == [("teacher", "x = 12 "), ("student", "Hmm")]


def test_think_budget_closes_and_student_answers():
    [x], student, teacher = run_scripted(
        ["compute"] + ["Okay so " for _ in range(3)] + ["Final answer is 4.", EOS], ["a = b + c; " * 2] * 50,
        same_vocab=True, max_think_tokens=60,
    )
    assert x.stop_reason == "think_budget"
    assert x.tokens("think") >= 60
    answer = [s for s in x.segments if s["part"] == "answer"]
    assert answer and all(s["source"] == "student" for s in answer)


def test_max_rounds_guard():
    # Endless, non-repeating capability from the teacher is stopped by the round limit.
    [x], _, _ = run_scripted(["compute", *ANSWER], [f"v{i} = {i}; " for i in range(100)], same_vocab=True,
                             max_rounds=5, max_think_tokens=10_000)
    assert x.stop_reason == "max_rounds" and x.rounds == 5


def test_repetition_guard():
    [x], _, _ = run_scripted(["compute", *ANSWER], ["abc = 1;\n"] * 40, same_vocab=True, max_think_tokens=10_000)
    assert x.stop_reason == "repetition"


@pytest.mark.parametrize("closer", ["student", "teacher"])
def test_either_model_closing_its_thinking_ends_it(closer):
    student = ["Okay so </think>", *ANSWER] if closer == "student" else ["compute", *ANSWER]
    [x], _, _ = run_scripted(student, ["x = 1 </think> junk"], same_vocab=True)
    assert x.stop_reason == f"{closer}_closed"
    assert "</think>" not in "".join(t for _, t in think(x))


def test_eos_of_a_plain_model_closes_its_thinking():
    [x], _, _ = run_scripted(["compute", *ANSWER], ["x = 1 ", EOS], same_vocab=True)
    assert x.stop_reason == "teacher_closed"


def test_samples_are_batched_across_the_scheduler():
    done, student, teacher = run_scripted(["Okay, so compute", EOS, *ANSWER], ["x = 1. ", "</think>"],
                                          n_samples=4, same_vocab=True)
    assert len(done) == 4
    assert max(student.calls) == 4 and max(teacher.calls) == 4


def test_provenance_of_scripted_run():
    [x], student, teacher = run_scripted(["Okay, so compute", "Hmm right x", "</think>", *ANSWER],
                                         ["x = 3. Wait", "done"], same_vocab=False)
    # Each segment is the start of its source's next sampled span, in turn order: the student's first
    # span cut before "compute", the teacher's before "Wait", and so on.
    spans = {"student": iter(student.sampled), "teacher": iter(teacher.sampled)}
    for seg in x.segments:
        span = next(spans[seg["source"]])
        assert span.startswith(seg["text"]), (seg, span)
    assert [(seg["source"], seg["part"], seg["text"]) for seg in x.segments] == [
        ("student", "think", "Okay, so "), ("teacher", "think", "x = 3. "), ("student", "think", "Hmm right "),
        ("teacher", "think", "done"), ("student", "answer", "</think>")]


# --- the repetition guard ------------------------------------------------------------------------
REASONING = "We need the sum of the first n odd numbers. Try small cases: 1, 1+3=4, 1+3+5=9. "
TABLE = "| n | sum |\n| --- | --- |\n" + "".join(f"| {i} | {i * i} |\n" for i in range(1, 30))
LEGITIMATE = {
    "rule of dashes": REASONING + "-" * 120 + "\nSo the answer is n^2.",
    "rules between sections": (REASONING + "\n" + "-" * 60 + "\n") * 6,
    "rows of zeros": REASONING + "The matrix is\n" + "0 0 0 0 0 0 0 0 0 0 0 0\n" * 12 + "so its rank is 0.",
    "a table": REASONING + TABLE,
    "a table rule": REASONING + "| " + " | ".join(["---"] * 40) + " |\n",
    "rows of a zero table": REASONING + "| 0 | 0 | 0 |\n" * 20 + "All zero.",
    "short repeated code lines": (REASONING + "```python\n"
                                  + "".join(f"class E{i}(Exception):\n    pass\n" for i in range(12)) + "```"),
    "the same short line": REASONING + "```python\n" + "    pass\n" * 30 + "```",
    "a long list of zeros": "dp = [" + "0, " * 150 + "0]",
    "a recap that repeats a phrase a few times": REASONING + "Check n=1: ok. Check n=2: ok. "
                                                             "Check n=3: ok. Check n=4: ok. ",
}
LOOPS = {
    "a sentence repeated": REASONING + "Wait, let me check that again. " * 10,
    "a base model echoing its prompt": "Question: add two numbers. Answer: 3\n" * 9,
    "a numbered loop": REASONING + "So the answer is 4. Let me verify. " * 12,
    "a tag over the whole window": "Answer: <input>\n" + "<input>\n" * 200,
    "a word over the whole window": REASONING + "the " * 400,
    "a loop that stops inside a word": "Answer: 3\n" + "<input>\n<output>\n" * 70 + "<out",
}


@pytest.mark.parametrize("name", LEGITIMATE)
def test_legitimate_text_does_not_trip_the_repetition_guard(name):
    assert not is_repeating(LEGITIMATE[name])


@pytest.mark.parametrize("name", LOOPS)
def test_loops_trip_the_repetition_guard(name):
    assert is_repeating(LOOPS[name])


def test_repetition_thresholds_are_settings():
    text = REASONING + "Wait, let me check that again. " * 5
    assert not is_repeating(text)  # five repeats: fewer than the default eight
    assert is_repeating(text, min_repeats=5)
    assert not is_repeating(LOOPS["a sentence repeated"], window_chars=100)  # the window holds too few repeats
    assert is_repeating("ab " * 20, min_words=1, min_repeats=8)
