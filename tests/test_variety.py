import pytest

from tessy.engine.synth import summarize
from tessy.engine.variety import compression_ratio, thinking_text

VARIED = (
    "To find the two indices, walk the list once and keep a map from each value to where it was seen. "
    "For every number, the partner it needs is the target minus that number; if the map already holds "
    "the partner, both indices are known and the search stops. Otherwise store the number and move on. "
    "This takes linear time and at most one pass, and the map never holds more than n entries."
)


@pytest.mark.parametrize("loop", [
    "Question: Write a function.\n\nAnswer: ",
    "<input>",
    "the the the ",
    "Let me think. ",
])
def test_looped_text_compresses_better_than_varied_text(loop):
    looped = (loop * (len(VARIED) // len(loop) + 1))[:len(VARIED)]
    assert compression_ratio(looped) < compression_ratio(VARIED)
    assert compression_ratio(VARIED) > 0.45


def test_empty_text_has_ratio_zero():
    assert compression_ratio("") == 0.0


def test_summary_reports_the_median_variety_of_the_thinking():
    def record(think: str) -> dict:
        stats = {"think_tokens": 1, "answer_tokens": 1, "generated_tokens": {"student": 2}, "teacher_token_share": 0.0,
                 "switches": 0, "stop_reason": "student_closed"}
        segments = [{"source": "student", "part": "think", "text": think, "n_tokens": 1},
                    {"source": "student", "part": "answer", "text": VARIED, "n_tokens": 1}]
        return {"segments": segments, "stats": stats}

    records = [record(VARIED), record("ab " * 100), record(VARIED[:200])]
    assert thinking_text(records[1]) == "ab " * 100  # the answer is not thinking
    ratios = sorted(compression_ratio(thinking_text(r)) for r in records)
    assert summarize(records, 1.0)["thinking_variety"] == round(ratios[1], 3)
