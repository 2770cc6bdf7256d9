"""How the output of a stdin/stdout test is judged: the problem's `checker` field.

  - absent, or {"type": "lines"}: line by line, whitespace at the ends of each line and of the
    whole output ignored (LiveCodeBench's stdin tests compare this way);
  - {"type": "tokens"}: the whitespace-separated tokens are equal (how line breaks fall does not matter);
  - {"type": "float", "abs": 1e-6, "rel": 1e-6}: token by token; where both tokens are numbers they
    are equal when they differ by at most `abs`, or by at most `rel` times the jury's value (either
    tolerance is enough, as in testlib's doubleCompare); other tokens must be equal;
  - {"type": "program", "language": "python" | "cpp", "source": "..."}: a special judge, called as
    testlib calls one, `checker INPUT OUTPUT ANSWER` (three files: the test's input, the
    contestant's output, the jury's answer); exit status 0 accepts, 1 or 2 (testlib's wrong answer
    and presentation error) rejects, anything else is the checker failing. It runs in the sandbox
    like the solution (a C++ checker is compiled there once per process).

`check` returns a `Verdict`: accepted, wrong answer, or checker error (the special judge did not
build or failed: the output was never judged); a sandbox that refused to run the judge says so.
"""

from __future__ import annotations

import functools
import math

from tessy.eval.sandbox import LANGUAGE_ALIASES, Limits, Program, Result, build, compile_limits
from tessy.eval.verdicts import CHECKER_ERROR, OK, SANDBOX_REFUSAL, WRONG_ANSWER, Verdict

TYPES = ("lines", "tokens", "float", "program")


def parse_checker(spec) -> dict | None:
    """A problem's `checker` field, checked: None (line by line) or a dict as in the module docstring,
    with the float tolerances filled in and the language named canonically. Raises ValueError."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise ValueError(f"checker must be an object with a type in {', '.join(TYPES)}; got {spec!r}")
    kind = spec["type"]
    if kind == "float":
        tolerances = {k: spec.get(k, 1e-6) for k in ("abs", "rel")}
        if not all(isinstance(v, (int, float)) and v >= 0 for v in tolerances.values()):
            raise ValueError(f"float checker: abs and rel must be numbers >= 0; got {spec!r}")
        return {"type": "float", **{k: float(v) for k, v in tolerances.items()}}
    if kind == "program":
        language = LANGUAGE_ALIASES.get(str(spec.get("language", "")).lower())
        if language is None or not isinstance(spec.get("source"), str) or not spec["source"].strip():
            raise ValueError("program checker: needs `language` (python or cpp) and its `source`")
        return {"type": "program", "language": language, "source": spec["source"]}
    return {"type": kind}


def check(checker: dict | None, test_input: str, output: str, answer: str, limits: Limits,
          compile_timeout_s: float = 30.0) -> Verdict:
    """Judge one test: accepted, wrong answer (the detail says where), or checker error when a
    special judge itself failed."""
    kind = (checker or {}).get("type", "lines")
    if kind == "lines":
        got, want = _lines(output), _lines(answer)
        return OK if got == want else Verdict(WRONG_ANSWER, _first_difference(got, want, "line"))
    if kind == "tokens":
        got, want = output.split(), answer.split()
        return OK if got == want else Verdict(WRONG_ANSWER, _first_difference(got, want, "token"))
    if kind == "float":
        return _float_tokens(output.split(), answer.split(), checker["abs"], checker["rel"])
    return _special_judge(checker, test_input, output, answer, limits, compile_timeout_s)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines()]


def _first_difference(got: list[str], want: list[str], unit: str) -> str:
    if got[: len(want)] == want or want[: len(got)] == got:  # one is the other cut short
        return f"{len(got)} {unit}s, expected {len(want)}"
    i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
    return f"{unit} {i + 1} is {got[i][:40]!r}, expected {want[i][:40]!r}"


def _float_tokens(got: list[str], want: list[str], abs_tol: float, rel_tol: float) -> Verdict:
    if len(got) != len(want):
        return Verdict(WRONG_ANSWER, f"{len(got)} tokens, expected {len(want)}")
    for i, (a, b) in enumerate(zip(got, want)):
        x, y = _number(a), _number(b)
        if x is None or y is None:
            ok = a == b
        elif math.isnan(y) or math.isinf(y):
            ok = x == y or math.isnan(x) and math.isnan(y)
        else:
            ok = abs(x - y) <= abs_tol or abs(x - y) <= rel_tol * abs(y)
        if not ok:
            return Verdict(WRONG_ANSWER, f"token {i + 1} is {a[:40]!r}, expected {b[:40]!r} "
                                         f"(abs {abs_tol:g}, rel {rel_tol:g})")
    return OK


def _number(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


@functools.lru_cache(maxsize=64)
def _judge_program(language: str, source: str, compile_timeout_s: float) -> Program | Result:
    # One compile per checker and process: every sample of a problem is judged by the same program.
    return build(language, source, compile_limits(compile_timeout_s))


def _special_judge(checker: dict, test_input: str, output: str, answer: str, limits: Limits,
                   compile_timeout_s: float) -> Verdict:
    judge = _judge_program(checker["language"], checker["source"], compile_timeout_s)
    if isinstance(judge, Result):
        if judge.verdict.kind == SANDBOX_REFUSAL:
            return Verdict(SANDBOX_REFUSAL, f"the checker: {judge.verdict.detail}")
        return Verdict(CHECKER_ERROR, f"the checker does not build ({judge.verdict})")
    files = {"input.txt": test_input, "output.txt": output, "answer.txt": answer}
    result = judge.run(limits=limits, args=("input.txt", "output.txt", "answer.txt"), files=files)
    if result.passed:
        return OK
    if result.verdict.kind == SANDBOX_REFUSAL:
        return Verdict(SANDBOX_REFUSAL, f"the checker: {result.verdict.detail}")
    said = next((line.strip() for line in reversed((result.stderr + "\n" + result.stdout).splitlines())
                 if line.strip()), "")
    # testlib's exit codes: 1 wrong answer, 2 presentation error; anything else is the checker failing,
    # and so is a Python checker that dies of an exception (that too exits with 1).
    if result.returncode in (1, 2) and "Traceback (most recent call last)" not in result.stderr:
        return Verdict(WRONG_ANSWER, f"checker says {said[:200]!r}" if said else "")
    return Verdict(CHECKER_ERROR, str(result.verdict))
