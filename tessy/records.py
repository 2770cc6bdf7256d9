"""The output file: one JSON line per prompt, appended as each sample finishes, so that a killed
run started again skips what is done and loses nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path


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
    ids = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n") and line.strip():
                ids.add(str(json.loads(line)["id"]))
    return ids


def read_records(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


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
