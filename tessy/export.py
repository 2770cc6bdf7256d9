"""Records into the files other training tools read.

- `dialogs`: JSONL of `{"id_ddm", "dialogs"}`, the shape of the TESSY authors' released client (and
  chat messages, which XTuner reads). Only those two fields: the line reads back as a prompts file
  with the same id, and a second `id` would only repeat it.
- `sharegpt`: JSONL in LLaMA-Factory's sharegpt format: `conversations` of human/gpt turns, the system
  prompt in a top-level `system` (empty when there is none) and the record's `id`.
- `parquet`: columns id, messages (role/content structs), prompt, answer, method; TRL's SFTTrainer
  trains on the `messages` column.

Every record's id is written as a string, so a loader sees one type. Records with an `error` field
are skipped. `stats` and `segments` are left out: they describe how a sample was made, not what to
train on.
"""

from __future__ import annotations

import json
from pathlib import Path

from tessy.records import json_lines

FORMATS = ("dialogs", "sharegpt", "parquet")
SHAREGPT_ROLES = {"user": "human", "assistant": "gpt"}


def chat(record: dict, where: str) -> list[dict]:
    """The record's messages as plain role/content dicts; they must end with the assistant's reply."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages or messages[-1].get("role") != "assistant":
        raise ValueError(f"{where}: `messages` must end with the assistant's reply")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def dialogs_row(record: dict, where: str) -> dict:
    return {"id_ddm": str(record["id"]), "dialogs": chat(record, where)}


def sharegpt_row(record: dict, where: str) -> dict:
    """LLaMA-Factory wants human turns at odd positions and gpt turns at even ones, and skips a
    conversation that breaks this with only a warning; so it is checked here, loudly."""
    messages = chat(record, where)
    system = messages.pop(0)["content"] if messages[0]["role"] == "system" else ""
    turns = []
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"{where}: sharegpt needs alternating user/assistant turns after an optional "
                             f"system message; message {i} is {m['role']!r}")
        turns.append({"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]})
    return {"conversations": turns, "system": system, "id": str(record["id"])}


def table_row(record: dict, where: str) -> dict:
    return {"id": str(record["id"]), "messages": chat(record, where), "prompt": record.get("prompt", ""),
            "answer": record.get("answer", ""), "method": record.get("method", "")}


def write_parquet(rows: list[dict], out: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("--format parquet needs pyarrow (pip install pyarrow; `datasets` brings it)") from None
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    # A fixed schema: an empty file still has its columns, and no type is left to inference.
    schema = pa.schema([("id", pa.string()), ("messages", pa.list_(message)), ("prompt", pa.string()),
                        ("answer", pa.string()), ("method", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out)


def export(records: str | Path, fmt: str, out: str | Path) -> dict:
    """Write the records of `records` (tessy synth JSONL) to `out` in format `fmt`.
    Returns {"written": n, "skipped": ids with an error, "format": fmt, "out": path}."""
    if fmt == "dialogs":
        convert = dialogs_row
    elif fmt == "sharegpt":
        convert = sharegpt_row
    elif fmt == "parquet":
        convert = table_row
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    rows, skipped = [], []
    for n, record in json_lines(records):
        if "error" in record:
            skipped.append(str(record.get("id", f"line {n}")))
            continue
        if "id" not in record:
            raise ValueError(f"{records}:{n}: missing field 'id'")
        rows.append(convert(record, f"{records}:{n}"))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        write_parquet(rows, out)
    else:
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return {"written": len(rows), "skipped": skipped, "format": fmt, "out": str(out)}
