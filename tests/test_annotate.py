import json

import pytest
from scripted import ScriptedBackend

from tessy.annotate import (
    ANNOTATION_PROMPT,
    AnnotationParseError,
    Segment,
    align_spans,
    annotate_llm,
    annotation_messages,
    backend_asker,
    parse_spans,
    read_segments,
    sample_windows,
    thinking_texts,
)


# --- parser --------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, expected", [
    ('["well", "so"]', ["well", "so"]),
    ("```json\n[\"okay\", \"let's see\"]\n```", ["okay", "let's see"]),
    ('Sure! Here are the spans:\n["Hmm"]\nHope this helps.', ["Hmm"]),
    ("[]", []),
    ('{"spans": ["well", "so"]}', ["well", "so"]),  # an object around the array: text around it
    ('draft: ["a"] final answer: ["b", "c"]', ["b", "c"]),  # a thinking annotator: the last array wins
    ('["unicode: “quoted” — ok", "naïve"]', ["unicode: “quoted” — ok", "naïve"]),
    ('[1, 2] then ["x"]', ["x"]),
])
def test_parser_finds_the_array(answer, expected):
    assert parse_spans(answer) == expected


@pytest.mark.parametrize("answer", [
    "",
    "   \n ",
    "There are no filler phrases in this text.",                 # prose
    '"well"',                                                    # a single string instead of a list
    '[["well", "so"], ["okay"]]',                                # nested arrays
    '[{"span": "well"}]',                                        # nested objects
    '["well", "so", "okay"',                                     # cut off by the token limit
    "['well', 'so']",                                            # Python, not JSON
    "[" * 100_000,                                               # very long garbage
    "blah " * 50_000 + '["well", "so"',                          # very long, array never closed
])
def test_parser_rejects_hostile_answers(answer):
    with pytest.raises(AnnotationParseError):
        parse_spans(answer)


def test_parser_very_long_valid_output():
    phrases = [f"phrase {i}" for i in range(5000)]
    assert parse_spans("noise " * 10_000 + json.dumps(phrases)) == phrases


# --- alignment -----------------------------------------------------------------------------------
def test_repeated_phrases_take_the_next_occurrence():
    text = "So x is 1. So y is 2. So done."
    spans, unfound = align_spans(text, ["So", "So", "So"])
    assert spans == [(0, 2), (11, 13), (22, 24)] and unfound == []


def test_repeated_phrase_skips_earlier_occurrences():
    text = "so a, well b, so c"
    spans, _ = align_spans(text, ["well", "so"])
    assert [text[s:e] for s, e in spans] == ["well", "so"] and spans[1] == (14, 16)


def test_unicode_offsets_are_characters():
    text = "Ну, хорошо — давайте посмотрим: 数学 ✓ well"
    spans, unfound = align_spans(text, ["Ну, хорошо", "давайте посмотрим", "well"])
    assert unfound == []
    assert [text[s:e] for s, e in spans] == ["Ну, хорошо", "давайте посмотрим", "well"]


@pytest.mark.parametrize("phrase", ["let's  see", "let's\nsee", " let's see ", "let's\u00a0see", "let's\t see"])
def test_whitespace_tolerant_match(phrase):
    text = "Okay, let's \n see what happens."
    spans, unfound = align_spans(text, [phrase])
    assert unfound == [] and text[spans[0][0]:spans[0][1]] == "let's \n see"


def test_exact_match_preferred_over_tolerant():
    text = "let's  see, then let's see"
    spans, _ = align_spans(text, ["let's see"])
    assert spans == [(17, 26)]  # the exact copy, not the earlier whitespace variant


def test_unfound_spans_are_reported_not_guessed():
    text = "Well, the sum is 3. Then done."
    spans, unfound = align_spans(text, ["Well", "I think", "Well", "", "Then"])
    assert [text[s:e] for s, e in spans] == ["Well", "Then"]
    assert unfound == ["I think", "Well", ""]  # the second "Well" has no occurrence after the first


def test_touching_spans_are_merged_and_overlaps_go_unfound():
    assert align_spans("okay, so then", ["okay", ", so"]) == ([(0, 8)], [])
    # In order of appearance, "so then" would have to start after "okay so" ends.
    assert align_spans("okay so then", ["okay so", "so then"]) == ([(0, 7)], ["so then"])


# --- segments -------------------------------------------------------------------------------------
def test_windows_are_whole_words_with_context_and_source():
    docs = [("d1", "student", "Okay so the answer is forty two because six times seven."),
            ("d2", "teacher", "Compute 6*7 = 42. Done.")]
    segs = sample_windows(docs, 20, min_words=2, max_words=5, context_chars=10, seed=1)
    assert len(segs) == 20 and {s.source for s in segs} == {"student", "teacher"}
    for s in segs:
        full = dict((d, t) for d, _, t in docs)[s.doc]
        start = full.index(s.context + s.text) + len(s.context) if s.context else full.index(s.text)
        assert full[start:start + len(s.text)] == s.text
        assert 2 <= len(s.text.split()) <= 5 or len(full.split()) < 2
        assert len(s.context) <= 10


def test_thinking_texts_from_synth_records_and_generations():
    synth = {"id": "a", "segments": [{"source": "student", "part": "think", "text": "Okay so"},
                                     {"source": "teacher", "part": "think", "text": "x = 1"},
                                     {"source": "student", "part": "answer", "text": "1"}]}
    gen = {"id": "b", "messages": [{"role": "user", "content": "q"},
                                   {"role": "assistant", "content": "<think>\nhmm fine\n</think>\n\n1"}]}
    out = thinking_texts([synth, gen], source="teacher")
    assert out == [("a/0", "student", "Okay so"), ("a/1", "teacher", "x = 1"), ("b", "teacher", "\nhmm fine\n")]
    with pytest.raises(ValueError, match="--source"):
        thinking_texts([gen])


def test_read_segments_rejects_spans_outside_text(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "1", "source": "student", "text": "ok", "style_spans": [[0, 5]]}) + "\n")
    with pytest.raises(ValueError, match="outside"):
        read_segments(path)


def test_prompt_is_table_2():
    [message] = annotation_messages("Well, x = 1.")
    assert message["role"] == "user"
    assert message["content"].startswith("You are a text analysis expert.")
    assert message["content"].endswith("<input_text>Well, x = 1.</input_text>")
    assert "Output only the JSON array — no explanation or extra text." in ANNOTATION_PROMPT


# --- the LLM annotator, scripted ------------------------------------------------------------------
class ChatTokenizerBackend(ScriptedBackend):
    """A scripted annotator: every session pops the next answer from one shared script."""

    def start(self, prompt, add_special_tokens=False, key=""):
        session = super().start(prompt)
        session.state = self.answers
        return session


def test_llm_annotator_retries_and_records_failures():
    backend = ChatTokenizerBackend([])
    # seg0: valid at once; seg1: prose, then valid; seg2: invalid every time (1 + 2 retries).
    from collections import deque
    backend.answers = deque(['["Okay"]', "no idea", '["bad" ', '["so", "missing"]', "still prose", "[oops"])
    segs = [Segment("s0", "student", "Okay, x."), Segment("s1", "teacher", "so x = 2"), Segment("s2", "student", "y")]
    done, report = annotate_llm(segs, backend_asker(backend, 1000), "teacher:scripted", retries=2, batch_size=8)
    assert [s.id for s in done] == ["s0", "s1"]
    assert done[0].style_spans == [(0, 4)] and done[0].annotator == "teacher:scripted"
    assert done[1].style_spans == [(0, 2)] and done[1].unfound == ["missing"]
    assert report.parse_failures == 4 and report.unfound == 1 and report.spans == 2
    assert [f["id"] for f in report.failed] == ["s2"] and len(report.failed[0]["errors"]) == 3


def test_failed_requests_count_as_failures():
    from tessy.backends import SampleError

    answers = iter([[SampleError("HTTP 500"), '["so"]'], ['["x"]']])
    segs = [Segment("a", "student", "x y"), Segment("b", "student", "so z")]
    done, report = annotate_llm(segs, lambda chats: next(answers), "t", retries=1, batch_size=8)
    assert [s.id for s in done] == ["b", "a"][::-1] and report.parse_failures == 1
    assert done[0].style_spans == [(0, 1)] and done[1].style_spans == [(0, 2)]
