"""Checkers: line by line (the default), tokens, floats within a tolerance, and special judges in
Python and C++ run in the sandbox. tests/data/checker_problems.jsonl holds one problem of each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tessy.eval import verdicts
from tessy.eval.checkers import check, parse_checker
from tessy.eval.evaluate import EvalConfig, evaluate, load_benchmark, score
from tessy.eval.sandbox import Limits

DATA = Path(__file__).parent / "data"
LIMITS = Limits(timeout_s=10)


def reply(code: str) -> str:
    return f"<think>\nok\n</think>\n\n```python\n{code}```"


@pytest.fixture(scope="module")
def problems():
    return {p.task_id: p for p in load_benchmark(str(DATA / "checker_problems.jsonl"))}


SOLUTIONS = {  # task id: (accepted, rejected, why the rejected one is rejected: a wrong answer's detail)
    "circle-area": ("import math\nr = float(input())\nprint(f'{math.pi * r * r:.9f}')\n",
                    "r = float(input())\nprint(f'{3.14 * r * r:.9f}')\n",
                    "test 0: token 1 is '3.140000000'"),
    "sorted-values": ("input()\nprint('\\n'.join(sorted(input().split(), key=int)))\n",  # one per line: same tokens
                      "input()\nprint(input())\n", "test 0: token 1 is '3', expected '1'"),
    "split-python-judge": ("n = int(input())\nprint(1, n - 1)\n",  # not the jury's 5 5, and still right
                           "n = int(input())\nprint(0, n)\n",
                           "test 0: checker says '0 + 10 is not a split of 10"),
    "split-cpp-judge": ("n = int(input())\nprint(n - 1, 1)\n", "n = int(input())\nprint(n, 0)\n",
                        "test 0: checker says '10 + 0 is not a split of 10"),
}


@pytest.mark.parametrize("task", list(SOLUTIONS))
def test_accepted_and_rejected_by_the_problems_checker(problems, task):
    good, bad, why = SOLUTIONS[task]
    graded = score(problems[task], reply(good), LIMITS)
    assert graded["passed"] and graded["verdict"] == "accepted" and graded["detail"] == "", graded
    graded = score(problems[task], reply(bad), LIMITS)
    assert not graded["passed"] and graded["verdict"] == "wrong answer" and graded["detail"].startswith(why), graded


@pytest.mark.parametrize("task", ["circle-area", "sorted-values", "split-python-judge"])
def test_the_default_line_comparison_would_reject_what_the_checker_accepts(problems, task):
    p = problems[task]
    plain = type(p)(p.task_id, p.kind, p.prompt, {**p.data, "checker": None})
    graded = score(plain, reply(SOLUTIONS[task][0]), LIMITS)
    assert not graded["passed"] and graded["verdict"] == "wrong answer" and "line" in graded["detail"], graded


@pytest.mark.parametrize(
    "output, answer, tolerance, accepted",
    [("1.0000005", "1", {"abs": 1e-6, "rel": 0}, True), ("1.000002", "1", {"abs": 1e-6, "rel": 0}, False),
     ("1000000.5", "1000000", {"abs": 1e-6, "rel": 1e-6}, True),  # relative error 5e-7: either tolerance is enough
     ("1000002", "1000000", {"abs": 1e-6, "rel": 1e-6}, False), ("1e-7", "0", {}, True),
     ("YES 0.5", "YES 0.5000001", {}, True), ("NO 0.5", "YES 0.5", {}, False), ("0.5", "0.5 0.5", {}, False),
     ("nan", "1", {}, False), ("inf", "inf", {}, True)],
)
def test_float_checker(output, answer, tolerance, accepted):
    checker = parse_checker({"type": "float", **tolerance})
    verdict = check(checker, "", output, answer, LIMITS)
    assert verdict.kind == (verdicts.ACCEPTED if accepted else verdicts.WRONG_ANSWER), verdict


@pytest.mark.parametrize(
    "checker, output, answer, verdict",
    [(None, "1\n2\n3\n", "1\n2", verdicts.Verdict("wrong answer", "3 lines, expected 2")),
     (None, "1\n2\n", "1 2\n", verdicts.Verdict("wrong answer", "line 1 is '1', expected '1 2'")),
     (None, "  3  \n\n", "3", verdicts.OK), ({"type": "tokens"}, "1\n2\n", "1 2\n", verdicts.OK),
     ({"type": "tokens"}, "1 2 3", "1 2", verdicts.Verdict("wrong answer", "3 tokens, expected 2"))],
)
def test_lines_and_tokens(checker, output, answer, verdict):
    assert check(parse_checker(checker), "", output, answer, LIMITS) == verdict


@pytest.mark.parametrize(
    "spec, message",
    [({"type": "regex"}, "type in"), ({"type": "float", "abs": -1}, "abs and rel"), ("tokens", "must be an object"),
     ({"type": "program", "language": "rust", "source": "fn main() {}"}, "python or cpp"),
     ({"type": "program", "language": "python"}, "python or cpp")],
)
def test_bad_checkers_are_refused_when_the_benchmark_loads(tmp_path, spec, message):
    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"task_id": "x", "question": "q", "checker": spec,
                                 "tests": [{"input": "", "output": "1"}]}) + "\n")
    with pytest.raises(ValueError, match=message):
        load_benchmark(str(bench))


@pytest.mark.parametrize(
    "language, source, why",
    [("cpp", "int main( {", "the checker does not build (compile error:"),
     ("python", "import sys\nsys.exit(3)", "runtime error: exit status 3"),
     ("python", "while True: pass", "time limit: ")],
)
def test_a_broken_checker_is_a_checker_error_not_a_wrong_answer(language, source, why):
    checker = parse_checker({"type": "program", "language": language, "source": source})
    verdict = check(checker, "1", "1", "1", Limits(timeout_s=2, cpu_s=1))
    assert verdict.kind == verdicts.CHECKER_ERROR and not verdict.graded and verdict.detail.startswith(why), verdict


def test_a_special_judge_runs_in_the_sandbox_too(tmp_path):
    target = Path(__file__).parent / ".checker-escape-test"
    source = f"import sys\nopen({str(target)!r}, 'w').write('pwned')\n"
    try:
        why = check(parse_checker({"type": "program", "language": "python", "source": source}), "1", "1", "1", LIMITS)
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)
    assert why.kind == verdicts.CHECKER_ERROR and why.detail.startswith("runtime error: exit status 1"), why
    # Read-only where the checkout is bound into the sandbox; absent where it lies under the sandbox's
    # own /tmp (a clone in /tmp): either way the write does not reach the checkout.
    assert any(s in why.detail for s in ("Read-only", "Permission denied", "No such file or directory")), why


def test_checkers_through_evaluate(tmp_path, problems):
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "completion": reply(c)}) + "\n"
                               for t, (good, bad, _) in SOLUTIONS.items() for c in (good, bad)))
    summary = evaluate(EvalConfig(benchmark=str(DATA / "checker_problems.jsonl"), samples=str(samples)))
    assert summary["pass@1"] == 0.5 and summary["samples"] == 8 and summary["failures"] == {"wrong answer": 4}
    assert summary["ungraded"] == 0 and summary["languages"] == {"python": 8}


def test_a_broken_checker_leaves_the_sample_ungraded(tmp_path):
    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"task_id": "x", "question": "q", "tests": [{"input": "", "output": "1"}],
                                 "checker": {"type": "program", "language": "python",
                                             "source": "import sys\nsys.exit(3)"}}) + "\n")
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "x", "completion": reply("print(1)\n")}) + "\n")
    summary = evaluate(EvalConfig(benchmark=str(bench), samples=str(samples)), out=tmp_path / "out")
    [row] = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert row["verdict"] == "checker error" and row["detail"].startswith("test 0: runtime error: exit status 3")
    assert summary["ungraded"] == 1 and summary["failures"] == {"checker error": 1} and summary["pass@1"] == 0
