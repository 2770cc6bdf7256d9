import json

from tessy.engine.records import RecordWriter, done_ids, read_records


def test_half_written_last_line_is_repaired_and_not_counted(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "mess')  # killed mid-write
    assert done_ids(out) == {"a"}
    w = RecordWriter(out)
    w.write({"id": "b"})
    w.close()
    assert [r["id"] for r in read_records(out)] == ["a", "b"]


def test_malformed_lines_name_their_file_and_line(tmp_path):
    import pytest

    from tessy.engine.shards import merge
    from tessy.predictors.segments import read_segments
    from tessy.sft import load_examples

    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n\n" + '{"id": "b",\n' + json.dumps({"id": "a"}) + "\n")
    for read in (read_records, read_segments, load_examples, lambda p: merge(tmp_path / "m.jsonl", [p])):
        with pytest.raises(ValueError, match=r"bad.jsonl:3: malformed JSON"):
            read(bad)
    bad.write_text(json.dumps({"id": "a"}) + "\n" + "[1, 2]\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object, got list"):
        read_records(bad)
