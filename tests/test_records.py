import json

from tessy.records import RecordWriter, done_ids, read_records


def test_half_written_last_line_is_repaired_and_not_counted(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "mess')  # killed mid-write
    assert done_ids(out) == {"a"}
    w = RecordWriter(out)
    w.write({"id": "b"})
    w.close()
    assert [r["id"] for r in read_records(out)] == ["a", "b"]
