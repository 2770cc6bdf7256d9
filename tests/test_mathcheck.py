"""Math answers through math-verify: equivalent and inequivalent forms (tests/data/math_answers.jsonl),
the clean-up tessy still does first, and the last \\boxed{} of a reply."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tessy.eval.evaluate import EvalConfig, evaluate
from tessy.eval.mathcheck import clean_answer, extract_boxed, math_equal

PAIRS = [json.loads(line) for line in (Path(__file__).parent / "data" / "math_answers.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("pair", PAIRS,
                         ids=[f"{p['got']} {'==' if p['equal'] else '!='} {p['expected']}" for p in PAIRS])
def test_equivalent_and_inequivalent_forms(pair):
    assert math_equal(pair["got"], pair["expected"]) is pair["equal"]


def test_the_paper_examples():
    assert math_equal("\\frac{1}{\\sqrt 2}", "\\frac{\\sqrt 2}{2}")  # one value, two forms
    assert math_equal("2, 1", "\\{1, 2\\}")  # a set answer in any order
    assert not math_equal("1, 2, 3", "\\{1, 2\\}")


@pytest.mark.parametrize(
    "raw, cleaned",
    [("$ \\text{33}. $", "33"), ("1\\,000\\,000", "1000000"), ("\\mathrm{e}", "e"), ("\\textbf{(C)}", "(C)"),
     ("x  =   3", "x = 3")],
)
def test_clean_answer_does_only_what_math_verify_does_not(raw, cleaned):
    assert clean_answer(raw) == cleaned


def test_a_huge_expression_gives_up_in_time():
    t = time.monotonic()
    assert not math_equal("10^{10^{10}}", "1")  # math-verify's own limit stops the comparison
    assert time.monotonic() - t < 20


@pytest.mark.parametrize(
    "text, boxed",
    [("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"), ("\\boxed{1} then \\boxed{2}", "2"), ("no box", None),
     ("\\boxed{unbalanced", None), ("\\fbox{7}", "7")],
)
def test_extract_boxed(text, boxed):
    assert extract_boxed(text) == boxed


def test_math_benchmark_through_evaluate(tmp_path):
    bench = tmp_path / "math.jsonl"
    bench.write_text("".join(json.dumps({"task_id": f"m{i}", "question": "?", "answer": p["expected"]}) + "\n"
                             for i, p in enumerate(PAIRS)))
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps({"task_id": f"m{i}",
                                           "completion": f"<think>\nhm\n</think>\n\nSo \\boxed{{{p['got']}}}."}) + "\n"
                               for i, p in enumerate(PAIRS)))
    evaluate(EvalConfig(benchmark=str(bench), samples=str(samples)), out=tmp_path / "out")
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in results] == [p["equal"] for p in PAIRS]
    assert [r["verdict"] for r in results] == ["accepted" if p["equal"] else "wrong answer" for p in PAIRS]
    assert all(r["isolation"] == "none (no code is run)" and r["language"] is None for r in results)
