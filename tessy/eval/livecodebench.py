"""LiveCodeBench problems in their own format, and its time windows (paper, section 3.2).

A row of LiveCodeBench's code-generation dataset (`livecodebench/code_generation_lite`) has
`question_id`, `question_title`, `question_content`, `platform`, `contest_id`, `contest_date` (ISO
date-time), `starter_code`, `difficulty`, `public_test_cases` (a JSON string), `private_test_cases`
and `metadata` (a JSON string; `func_name` for LeetCode's functional problems). Each test is
`{"input", "output", "testtype": "stdin" | "functional"}`.

`private_test_cases` is either that JSON string or, for most rows, the string compressed:
base64 of zlib of a *pickle* of the JSON string (lcb_runner/benchmarks/code_generation.py,
LiveCodeBench/LiveCodeBench). Unpickling runs whatever the data names, so the pickle layer is read
here by an unpickler that loads no class or function at all: a pickle that is not a plain string
is refused before anything in it can run.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zlib
from datetime import date, datetime

# The paper's windows on `contest_date` (section 3.2: "LiveCodeBench-V5 (2024/08/01–2025/02/01) and
# LiveCodeBench-V6 (2025/02/01–2025/05/01)"). The leaderboard's cumulative "v6" (2024-08 to 2025-05,
# 454 problems; LiveCodeBench/LiveCodeBench issue #145) is --since 2024-08-01 --until 2025-05-01.
# Each window includes its first day and excludes its last, so v5 and v6 do not overlap; that matches
# LiveCodeBench's releases (release_v5 ends with January 2025, release_v6 with April 2025; its README).
WINDOWS = {"v5": ("2024-08-01", "2025-02-01"), "v6": ("2025-02-01", "2025-05-01")}
MAX_DECODED_BYTES = 512 * 1024 * 1024  # a zlib bomb stops here


class _Refused(pickle.UnpicklingError):
    pass


class _PlainDataOnly(pickle.Unpickler):
    """Builds strings, numbers and containers, and refuses every class and function a pickle names
    (os.system through __reduce__, or anything else)."""

    def find_class(self, module: str, name: str):
        raise _Refused(f"refused: the pickle names {module}.{name}; private tests must be a pickled string")

    def persistent_load(self, pid):
        raise _Refused("refused: the pickle holds a persistent id; private tests must be a pickled string")


def decode_private_tests(field: str) -> list[dict]:
    """`private_test_cases` as LiveCodeBench stores it: a JSON string, or base64 -> zlib -> pickle
    -> JSON string. Returns the list of tests. Raises ValueError for anything else, including a
    pickle that is not a plain string (nothing in it is run)."""
    text = field.strip()
    if not text:
        return []
    if text.startswith("["):
        return parse_tests(text, "private_test_cases")
    try:
        packed = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error) as e:
        raise ValueError(f"private_test_cases: neither JSON nor base64 ({e})") from None
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(packed, MAX_DECODED_BYTES)
    except zlib.error as e:
        raise ValueError(f"private_test_cases: not zlib data ({e})") from None
    if inflate.unconsumed_tail:
        raise ValueError(f"private_test_cases: more than {MAX_DECODED_BYTES >> 20} MiB once inflated")
    try:
        value = _PlainDataOnly(io.BytesIO(raw)).load()
    except _Refused as e:
        raise ValueError(f"private_test_cases: {e}") from None
    except Exception as e:  # a malformed pickle fails in many ways; none of them ran anything
        raise ValueError(f"private_test_cases: not a pickle ({type(e).__name__}: {e})") from None
    if not isinstance(value, str):
        raise ValueError(f"private_test_cases: the pickle holds a {type(value).__name__}, not a JSON string")
    return parse_tests(value, "private_test_cases")


def parse_tests(value, where: str = "tests") -> list[dict]:
    """A list of tests (or its JSON string), checked: each `{"input": str, "output": str,
    "testtype": "stdin" | "functional"}` (testtype defaults to stdin). Raises ValueError."""
    tests = json.loads(value) if isinstance(value, str) else value
    if not isinstance(tests, list):
        raise ValueError(f"{where}: expected a list of tests, got {type(tests).__name__}")
    out = []
    for i, t in enumerate(tests):
        if not isinstance(t, dict) or not isinstance(t.get("input"), str) or not isinstance(t.get("output"), str):
            raise ValueError(f"{where}[{i}]: a test needs string `input` and `output`")
        testtype = t.get("testtype", "stdin")
        if testtype not in ("stdin", "functional"):
            raise ValueError(f"{where}[{i}]: testtype {testtype!r} is neither stdin nor functional")
        out.append({"input": t["input"], "output": t["output"], "testtype": testtype})
    return out


def row_tests(row: dict) -> list[dict]:
    """A row's tests: `tests` (tessy's short form) or LiveCodeBench's public then private tests,
    each marked `"kind": "public" | "private"` where the row says which."""
    if "tests" in row:
        return parse_tests(row["tests"])
    public = [{**t, "kind": "public"} for t in parse_tests(row.get("public_test_cases") or [], "public_test_cases")]
    private = row.get("private_test_cases") or []
    private = decode_private_tests(private) if isinstance(private, str) else parse_tests(private, "private_test_cases")
    return public + [{**t, "kind": "private"} for t in private]


def parse_day(text: str) -> date:
    """YYYY-MM-DD (or a whole ISO date-time) as a date. Raises ValueError."""
    try:
        return datetime.fromisoformat(str(text)).date()
    except ValueError:
        raise ValueError(f"not a date: {text!r} (use YYYY-MM-DD)") from None


def date_range(window: str | None, since: str | None, until: str | None) -> tuple[date | None, date | None]:
    """The [since, until) range of contest dates asked for: a named window (`WINDOWS`), whose ends
    an explicit `since` or `until` replaces. (None, None) when nothing is asked."""
    if window is not None:
        if window not in WINDOWS:
            raise ValueError(f"unknown LiveCodeBench window {window!r} (known: {', '.join(WINDOWS)})")
        since, until = since or WINDOWS[window][0], until or WINDOWS[window][1]
    return (parse_day(since) if since else None), (parse_day(until) if until else None)


def in_range(day: date | None, since: date | None, until: date | None) -> bool:
    """Whether a problem of contest date `day` is in [since, until); a problem without a date is
    in no range but the unbounded one."""
    if since is None and until is None:
        return True
    return day is not None and (since is None or since <= day) and (until is None or day < until)
