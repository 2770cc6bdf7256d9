import json

import pytest

from tessy.cli import main
from tessy.engine.transcript import Party, Transcript
from tessy.profiles import QWEN3
from tessy.prompts import read_prompts

datasets = pytest.importorskip("datasets")

SYSTEM = {"role": "system", "content": "Think step by step."}


def record(rid, messages, **stats) -> dict:
    """A record made by the real `Transcript.record()`, so these tests follow the record's shape
    when it changes; `stats` takes a baseline's extra numbers."""
    x = Transcript(rid, messages, {"student": Party(None, QWEN3, None)})
    x.segments = [{"source": "student", "part": "think", "text": "Add them.", "n_tokens": 3},
                  {"source": "teacher", "part": "think", "text": " 2+2=4.", "n_tokens": 5},
                  {"source": "student", "part": "answer", "text": "4", "n_tokens": 1}]
    x.stop_reason = stats.pop("stop_reason", "student_closed")
    x.cuts = stats.pop("cuts", [])
    x.predictors = stats.pop("predictors", {})
    x.method_stats.update(stats)
    return x.record("tessy", "abc123")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def records(tmp_path):
    """Three records (one with a system prompt, one multi-turn, one plain) and one failed sample."""
    rows = [
        record("a", [SYSTEM, {"role": "user", "content": "2+2?"}]),
        record("b", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                     {"role": "user", "content": "2+2?"}],
               cuts=[{"round": 1, "role": "student", "predictor": "lexicon"}], predictors={"student": "lexicon"}),
        {"id": "c-failed", "error": "server gave up", "attempts": 3},
        record("d", [{"role": "user", "content": "Add 2 and 2."}], stop_reason=None, scores=[None, 7.0], chosen=1),
    ]
    return write_jsonl(tmp_path / "records.jsonl", rows), [r for r in rows if "error" not in r]


def load_json(path, tmp_path):
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))


def export(path, fmt, out, capsys) -> str:
    assert main(["export", str(path), "--format", fmt, "--out", str(out)]) == 0
    return capsys.readouterr().out


def test_records_file_loads_with_datasets(tmp_path, records):
    """Records differ in their stats (no cuts, a stop reason of null, a baseline's scores): the
    loader must still take the file as it is."""
    path, rows = records
    write_jsonl(path, rows)  # the failed sample lives in the errors file, not among records
    ds = load_json(path, tmp_path)
    assert ds["id"] == ["a", "b", "d"]
    assert ds[0]["messages"] == rows[0]["messages"]
    assert ds[0]["messages"][-1]["content"] == "<think>\nAdd them. 2+2=4.\n</think>\n\n4"
    assert ds[2]["stats"]["scores"] == [None, 7.0]


def test_dialogs_is_the_release_format_and_reads_back_as_prompts(tmp_path, records, capsys):
    path, rows = records
    out = tmp_path / "out" / "dialogs.jsonl"
    summary = export(path, "dialogs", out, capsys)
    assert f"wrote 3 records to {out} (dialogs); skipped 1 with an error: c-failed" in summary
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(line) == {"id_ddm", "dialogs"} for line in lines)
    ds = load_json(out, tmp_path)
    assert ds["id_ddm"] == ["a", "b", "d"] and ds["dialogs"] == [r["messages"] for r in rows]
    assert [(p.id, list(p.messages)) for p in read_prompts(out)] == [(r["id"], r["messages"]) for r in rows]


def test_sharegpt_follows_llama_factory(tmp_path, records, capsys):
    path, rows = records
    out = tmp_path / "sharegpt.jsonl"
    export(path, "sharegpt", out, capsys)
    ds = load_json(out, tmp_path)
    assert ds["id"] == ["a", "b", "d"] and ds["system"] == ["Think step by step.", "", ""]
    a, b, _ = ds["conversations"]
    assert a == [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": rows[0]["messages"][-1]["content"]}]
    assert [t["from"] for t in b] == ["human", "gpt", "human", "gpt"]


def test_parquet_has_a_messages_column_for_trl(tmp_path, records, capsys):
    path, rows = records
    out = tmp_path / "train.parquet"
    assert "wrote 3 records" in export(path, "parquet", out, capsys)
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == ["id", "messages", "prompt", "answer", "method"]
    assert ds["messages"] == [r["messages"] for r in rows]
    assert ds["prompt"] == ["2+2?", "2+2?", "Add 2 and 2."] and ds["answer"] == ["4"] * 3


@pytest.mark.parametrize("fmt", ["dialogs", "sharegpt", "parquet"])
def test_integer_ids_become_strings(tmp_path, fmt, capsys):
    rows = [{**record("x", [{"role": "user", "content": "q"}]), "id": 7},
            record("y", [{"role": "user", "content": "q"}])]
    out = tmp_path / f"out.{fmt}"
    export(write_jsonl(tmp_path / "r.jsonl", rows), fmt, out, capsys)
    if fmt == "parquet":
        ds = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    else:
        ds = load_json(out, tmp_path)
    assert ds["id_ddm" if fmt == "dialogs" else "id"] == ["7", "y"]


@pytest.mark.parametrize("fmt, bad, message", [
    ("dialogs", {"id": "z", "messages": [{"role": "user", "content": "q"}]},
     "r.jsonl:2: `messages` must end with the assistant's reply"),
    ("parquet", {"id": "z"}, "r.jsonl:2: `messages` must end with the assistant's reply"),
    ("dialogs", {"messages": []}, "r.jsonl:2: missing field 'id'"),
    ("sharegpt", record("z", [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]),
     "r.jsonl:2: sharegpt needs alternating user/assistant turns after an optional system message; "
     "message 1 is 'user'"),
    ("sharegpt", record("z", [{"role": "tool", "content": "{}"}]), "message 0 is 'tool'"),
])
def test_bad_records_name_their_line(tmp_path, fmt, bad, message, capsys):
    path = write_jsonl(tmp_path / "r.jsonl", [record("ok", [{"role": "user", "content": "q"}]), bad])
    assert main(["export", str(path), "--format", fmt, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
