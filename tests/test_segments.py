"""tessy/predictors/segments.py: both line formats, tessy's and the authors' release's."""

import json

import pytest

from tessy.predictors.segments import Segment, read_segments, segment_line

# A line as the release's annotator.py writes it (Boundary_Predictor/annotator.py: id_ddm, think_text,
# pred_result with each span, start and end; the span is think_text[start:end]).
RELEASE_LINE = {"id_ddm": "code-17", "think_text": "Okay, so the loop runs n times. Hmm, wait.",
                "pred_result": [{"span": "Okay, so", "start": 0, "end": 8}, {"span": "Hmm, wait.", "start": 32,
                                                                              "end": 42}]}


def write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_hand_written_release_line_reads_as_the_named_source(tmp_path):
    path = write(tmp_path / "release.jsonl", [RELEASE_LINE])
    [row] = read_segments(path, source="student")
    assert row["text"] == RELEASE_LINE["think_text"] and row["source"] == "student"
    assert [row["text"][s:e] for s, e in row["style_spans"]] == ["Okay, so", "Hmm, wait."]
    assert row["doc"] == "code-17" and row["context"] == "" and row["annotator"] == "release"


def test_a_release_window_without_annotations_is_skipped_as_the_releases_trainer_skips_it(tmp_path):
    # train_predictor.py drops samples whose pred_result is None before it splits them.
    path = write(tmp_path / "release.jsonl", [{**RELEASE_LINE, "id_ddm": "dropped", "pred_result": None}, RELEASE_LINE])
    assert [r["doc"] for r in read_segments(path, source="teacher")] == ["code-17"]


def test_a_release_line_without_a_source_is_refused(tmp_path):
    path = write(tmp_path / "release.jsonl", [RELEASE_LINE])
    with pytest.raises(ValueError, match="release.jsonl:1: .*--source student\\|teacher"):
        read_segments(path)


def test_tessy_lines_are_filtered_by_source_and_release_lines_take_it(tmp_path):
    tessy_rows = [Segment("s1", "student", "so x", style_spans=[(0, 2)]).to_dict(),
                  Segment("t1", "teacher", "well y", style_spans=[(0, 4)]).to_dict()]
    path = write(tmp_path / "mixed.jsonl", [*tessy_rows, RELEASE_LINE])
    rows = read_segments(path, source="teacher")
    assert [r["id"] for r in rows] == ["t1", "code-17#3"] and {r["source"] for r in rows} == {"teacher"}


@pytest.mark.parametrize("line, message", [
    ({**RELEASE_LINE, "pred_result": [{"span": "Okay", "start": 0, "end": 8}]}, "is not think_text"),
    ({**RELEASE_LINE, "pred_result": [{"span": "x", "start": 40, "end": 99}]}, "outside"),
    ({**RELEASE_LINE, "pred_result": [{"span": "Okay"}]}, "integer `start` and `end`"),
    ({"id_ddm": 1, "think_text": 3, "pred_result": []}, "must be a string"),
    ({"id": "x", "spans": []}, "`think_text` and `pred_result`"),
])
def test_bad_lines_are_refused_with_their_line(tmp_path, line, message):
    path = write(tmp_path / "bad.jsonl", [line])
    with pytest.raises(ValueError, match=message):
        read_segments(path, source="teacher")


def test_the_release_writer_round_trips(tmp_path):
    """Touching spans stay two (as the release's parser leaves them); an empty list is a window with
    no style; a span's text is the text at its offsets."""
    segs = [Segment("a", "teacher", "okay, so then", doc="d1", style_spans=[(0, 4), (4, 8)]),
            Segment("b", "teacher", "x = 2 because y", doc="d1"),
            Segment("c", "teacher", "Ну, хорошо — 数学", doc="d2", style_spans=[(0, 10)])]
    path = write(tmp_path / "out.jsonl", [segment_line(s, "release") for s in segs])
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert lines[0] == {"id_ddm": "d1", "think_text": "okay, so then",
                        "pred_result": [{"span": "okay", "start": 0, "end": 4}, {"span": ", so", "start": 4, "end": 8}]}
    rows = read_segments(path, source="teacher")
    assert [(r["doc"], r["text"], [tuple(s) for s in r["style_spans"]]) for r in rows] == [
        (s.doc, s.text, s.style_spans) for s in segs]
    with pytest.raises(ValueError, match="unknown segment format"):
        segment_line(segs[0], "csv")
