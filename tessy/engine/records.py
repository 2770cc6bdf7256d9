"""The output file: one JSON line per prompt, appended as each sample finishes, so that a killed
run started again skips what is done and loses nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path


def json_lines(path: str | Path, complete_only: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file. A line that is not a JSON
    object raises ValueError naming the file and the line. `complete_only` skips a last line with no
    newline: the half-written tail of a killed run."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or (complete_only and not line.endswith("\n")):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


def repair_tail(path: Path) -> None:
    """Cut a half-written last line (the run was killed mid-write) so appends stay valid JSONL."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)


def done_ids(path: Path) -> set[str]:
    """Ids that already have a complete record in `path`."""
    if not path.exists():
        return set()
    return {str(record["id"]) for _, record in json_lines(path, complete_only=True)}


def read_records(path: str | Path) -> list[dict]:
    return [record for _, record in json_lines(path)]


class RecordWriter:
    """Appends records one at a time; each is flushed and synced before the next sample."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(path)
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def errors_path_for(out: Path) -> Path:
    """The errors file beside an output: `<stem>.errors.jsonl`."""
    out = Path(out)
    return out.with_name(out.stem + ".errors.jsonl")


def filter_path_for(out: Path) -> Path:
    """`tessy filter`'s report beside its output: `<stem>.filter.json`."""
    out = Path(out)
    return out.with_name(out.stem + ".filter.json")


def read_errors(path: Path) -> dict[str, dict]:
    """The error records in `path`, the last one for each id (a retry appends a newer one)."""
    if not Path(path).exists():
        return {}
    return {str(record["id"]): record for _, record in json_lines(path, complete_only=True)}


def compact_errors(path: Path, done: set[str]) -> dict[str, dict]:
    """Rewrite the errors file without the ids that are done now; return what is left."""
    path = Path(path)
    left = {i: r for i, r in read_errors(path).items() if i not in done}
    if path.exists():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in left.values()), encoding="utf-8")
        os.replace(tmp, path)
    return left
