"""Control flow of Algorithm 1, pinned with scripted generators (tests/scripted.py)."""

import pytest
from scripted import EOS, run_scripted

from tessy.loop import is_repeating

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


@pytest.mark.parametrize("same_vocab, kept", [(False, "x = 12 + "), (True, "x = 12 + ab")])
def test_partial_word_dropped_only_across_vocabularies(same_vocab, kept, monkeypatch):
    # A predictor that cuts the teacher mid-word ("abc|def"): only a hand-over between different
    # vocabularies drops the partial word.
    import tessy.scheduler as scheduler

    real = scheduler.boundary
    monkeypatch.setattr(scheduler, "boundary", lambda text, spans, role: text.find("cdef") if "cdef" in text else real(text, spans, role))
    [x], _, _ = run_scripted(["compute", "Hmm", EOS, *ANSWER], ["x = 12 + abcdef", "</think>"], same_vocab=same_vocab)
    assert think(x)[0] == ("teacher", kept)


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
    for seg in x.segments:
        sampled = "".join((student if seg["source"] == "student" else teacher).sampled)
        assert seg["text"] in sampled


@pytest.mark.parametrize("text, expected", [
    ("abc " * 20, True), ("\n" * 60, True), ("a varied sentence that does not repeat at all, ok.", False), ("xyxy", False),
])
def test_is_repeating(text, expected):
    assert is_repeating(text) is expected
