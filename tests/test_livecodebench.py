"""LiveCodeBench rows in their own format: private tests decoded without running anything, the
time windows, and problems whose public tests a wrong solution passes and whose private tests it fails.

tests/data/lcb_problems.jsonl holds four small problems written for these tests in LiveCodeBench's
format (stdin and functional), three with private tests in LiveCodeBench's compressed form
(base64 of zlib of a pickle of the JSON string) and one with plain JSON private tests.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import zlib
from datetime import date
from pathlib import Path

import pytest

import tessy.eval.sandbox
from tessy.eval.evaluate import EvalConfig, evaluate, load_benchmark
from tessy.eval.livecodebench import WINDOWS, date_range, decode_private_tests

DATA = Path(__file__).parent / "data"
LCB = DATA / "lcb_problems.jsonl"

SOLUTIONS = {  # task id: (right, wrong-but-passes-the-public-tests)
    "lcb-best-stretch": (
        "n = int(input())\na = list(map(int, input().split()))\nbest, cur = a[0], 0\n"
        "for x in a:\n    cur = max(x, cur + x)\n    best = max(best, cur)\nprint(best)\n",
        "input()\nprint(sum(map(int, input().split())))\n",  # every public test is all positive
    ),
    "lcb-count-pairs": (
        "class Solution:\n    def countPairs(self, nums, target):\n"
        "        return sum(nums[i] + nums[j] < target for i in range(len(nums)) for j in range(i + 1, len(nums)))\n",
        # <= where < is asked: no public pair sums to target
        "class Solution:\n    def countPairs(self, nums, target):\n"
        "        return sum(nums[i] + nums[j] <= target for i in range(len(nums)) for j in range(i + 1, len(nums)))\n",
    ),
    "lcb-distinct-letters": (
        "for _ in range(int(input())):\n    print(len(set(input().strip())))\n",
        "for _ in range(int(input())):\n    print(len(input().strip()))\n",  # the public strings repeat no letter
    ),
    "lcb-triangle": (
        "n = int(input())\nprint(n * (n + 1) // 2)\n",
        "n = int(input())\nprint(int(n * (n + 1) / 2))\n",  # float division: exact only below 2**53
    ),
}


def reply(code: str) -> str:
    return f"<think>\nLet me solve it.\n</think>\n\n```python\n{code}```\n"


def write_samples(path: Path, which: int) -> Path:
    path.write_text("".join(json.dumps({"task_id": t, "completion": reply(c[which])}) + "\n"
                            for t, c in SOLUTIONS.items()))
    return path


def test_rows_load_with_public_and_private_tests():
    problems = {p.task_id: p for p in load_benchmark(str(LCB))}
    assert {t: p.kind for t, p in problems.items()} == {"lcb-best-stretch": "stdio", "lcb-count-pairs": "functional",
                                                         "lcb-distinct-letters": "stdio",
                                                         "lcb-triangle": "stdio"}
    kinds = {t: [x["kind"] for x in p.data["tests"]] for t, p in problems.items()}
    assert kinds["lcb-best-stretch"] == ["public"] * 2 + ["private"] * 3
    # plain-JSON private tests, as older rows keep them
    assert kinds["lcb-triangle"] == ["public"] * 2 + ["private"] * 2
    assert problems["lcb-count-pairs"].data["fn_name"] == "countPairs"
    assert problems["lcb-best-stretch"].contest_date == date(2024, 9, 14)
    assert "class Solution" in problems["lcb-count-pairs"].prompt


def test_private_tests_decode_the_livecodebench_way():
    row = json.loads(LCB.read_text().splitlines()[0])
    tests = decode_private_tests(row["private_test_cases"])
    assert tests[0] == {"input": "4\n-1 -2 -3 -4\n", "output": "-1\n", "testtype": "stdin"} and len(tests) == 3
    # The same as LiveCodeBench's own decoding (json.loads(pickle.loads(zlib.decompress(b64decode(...))))),
    # which is safe to run here only because this is our own data file.
    assert tests == json.loads(pickle.loads(zlib.decompress(base64.b64decode(row["private_test_cases"]))))


def test_right_solutions_pass_and_wrong_ones_pass_public_but_fail_private(tmp_path):
    right = evaluate(EvalConfig(benchmark=str(LCB), samples=str(write_samples(tmp_path / "right.jsonl", 0))),
                     out=tmp_path / "r")
    assert right["pass@1"] == 1.0 and right["problems"] == 4
    wrong = evaluate(EvalConfig(benchmark=str(LCB), samples=str(write_samples(tmp_path / "wrong.jsonl", 1))),
                     out=tmp_path / "w")
    results = {json.loads(line)["task_id"]: json.loads(line)
               for line in (tmp_path / "w" / "results.jsonl").read_text().splitlines()}
    assert wrong["pass@1"] == 0.0
    # Every wrong solution got through the public tests and failed on a private one.
    assert all(r["verdict"] == "wrong answer" and r["detail"].startswith("private test")
               for r in results.values()), results
    assert wrong["failures"] == {"wrong answer": 4} and wrong["ungraded"] == 0
    # all negative
    assert results["lcb-best-stretch"]["detail"] == "private test 0: line 1 is '-10', expected '-1'"
    # exact in floats up to its first
    assert results["lcb-triangle"]["detail"].startswith("private test 1: ")
    pairs = results["lcb-count-pairs"]["detail"]  # functional: the harness says which test and what came back
    assert pairs.startswith("private test") and "returned" in pairs, pairs


@pytest.mark.parametrize(
    "window, since, until, ids",
    [("v5", None, None, {"lcb-best-stretch"}), ("v6", None, None, {"lcb-count-pairs"}),
     (None, "2024-08-01", "2025-05-01", {"lcb-best-stretch", "lcb-count-pairs"}),  # the leaderboard's cumulative v6
     (None, "2025-06-07", None, {"lcb-triangle"}),  # the first day is in
     (None, None, "2024-05-20", set()),  # the last day is out
     ("v5", "2024-05-01", None, {"lcb-distinct-letters", "lcb-best-stretch"})],  # an explicit end replaces the window's
)
def test_windows_and_dates_select_by_contest_date(window, since, until, ids):
    assert {p.task_id for p in load_benchmark(str(LCB), None, *date_range(window, since, until))} == ids


def test_window_through_the_cli(tmp_path):
    from tessy.cli import main

    samples = write_samples(tmp_path / "right.jsonl", 0)  # answers for all four; the window scores one
    assert main(["eval", "--benchmark", str(LCB), "--samples", str(samples), "--window", "v6",
                 "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["problems"] == 1 and summary["pass@1"] == 1.0
    assert summary["window"] == {"since": "2025-02-01", "until": "2025-05-01"}


def test_window_names_are_the_papers():
    assert WINDOWS == {"v5": ("2024-08-01", "2025-02-01"), "v6": ("2025-02-01", "2025-05-01")}
    with pytest.raises(ValueError, match="unknown LiveCodeBench window"):
        date_range("v7", None, None)


def test_a_window_on_a_benchmark_without_dates_is_an_error(capsys):
    from tessy.cli import main

    assert main(["eval", "--benchmark", "humaneval", "--samples", "x.jsonl", "--window", "v5"]) == 2
    assert "no problem has a contest_date" in capsys.readouterr().err


class _Payload:
    """What a poisoned dataset row could carry: unpickling it calls os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("inner", ["object", "inside-a-list"])
def test_a_pickle_naming_a_class_is_refused_and_nothing_runs(tmp_path, monkeypatch, inner):
    marker = tmp_path / "pwned"
    payload = _Payload(f"touch {marker}")
    blob = pickle.dumps(payload if inner == "object" else [json.dumps([]), payload])
    row = json.loads(LCB.read_text().splitlines()[0])
    row["private_test_cases"] = base64.b64encode(zlib.compress(blob)).decode()
    bench = tmp_path / "poisoned.jsonl"
    bench.write_text(json.dumps(row) + "\n")
    ran = []  # every sandboxed process goes through _run: none may start, the row is refused first
    monkeypatch.setattr(tessy.eval.sandbox, "_run", lambda *a, **k: ran.append(a))
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": row["question_id"],
                                   "completion": reply(SOLUTIONS[row["question_id"]][0])}) + "\n")

    with pytest.raises(ValueError, match=r"refused: the pickle names (posix|os)\.system"):
        evaluate(EvalConfig(benchmark=str(bench), samples=str(samples)))
    assert not marker.exists() and ran == []


@pytest.mark.parametrize(
    "field, message",
    [(base64.b64encode(zlib.compress(pickle.dumps([1, 2]))).decode(), "holds a list, not a JSON string"),
     (base64.b64encode(zlib.compress(b"not a pickle")).decode(), "not a pickle"),
     (base64.b64encode(b"not zlib").decode(), "not zlib data"),
     ("%%% not base64 %%%", "neither JSON nor base64")],
)
def test_private_tests_that_are_not_a_pickled_string_are_refused(field, message):
    with pytest.raises(ValueError, match=message):
        decode_private_tests(field)


def test_a_zlib_bomb_stops_at_the_cap(monkeypatch):
    import tessy.eval.livecodebench as lcb

    monkeypatch.setattr(lcb, "MAX_DECODED_BYTES", 1 << 20)
    bomb = base64.b64encode(zlib.compress(b"\0" * (8 << 20))).decode()  # 8 MiB of zeros in a few KiB
    with pytest.raises(ValueError, match="more than 1 MiB once inflated"):
        decode_private_tests(bomb)
