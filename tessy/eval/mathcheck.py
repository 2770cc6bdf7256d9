"""Final answers of math problems: the last `\\boxed{}` of a reply, and whether it equals the
expected answer (paper, section 3.2: AIME-2024, AIME-2025, OlympiadBench).

Equivalence is decided by math-verify (Hugging Face, `pip install math-verify`): both sides are
parsed into SymPy and compared as numbers, expressions, sets, intervals or matrices, so
`\\frac{1}{\\sqrt 2}` equals `\\frac{\\sqrt 2}{2}`, `2, 1` equals `\\{1, 2\\}`, `033` equals `33`
and `50\\%` equals `0.5`.
"""

from __future__ import annotations

import re
import threading

TIMEOUT_S = 5  # math-verify's own limit on one parse or one comparison (10^{10^{10}} takes that long)


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unbalanced: the answer was cut off


def clean_answer(answer: str) -> str:
    """What tessy still does before math-verify, each because math-verify gets it wrong alone:
      - unwraps `\\text{}`, `\\textbf{}`, `\\textrm{}`, `\\mathrm{}`, `\\mathbf{}`: it reads `\\text{33}`
        as text, never as 33;
      - drops `$` around the answer and a trailing full stop: `5.` is a parse failure for it;
      - removes the spacing commands `\\,` `\\!` `\\;`: `1\\,000\\,000` (a thousands separator) parses as
        the product 1*0*0.
    """
    s = answer.strip().strip("$").strip()
    s = re.sub(r"\\(?:text|textbf|textrm|mathrm|mathbf)\{([^{}]*)\}", r"\1", s)
    for spacing in ("\\,", "\\!", "\\;"):
        s = s.replace(spacing, "")
    return re.sub(r"\s+", " ", s).strip().rstrip(".").strip()


_WORDS = re.compile(r"[A-Za-z]{2,}(?: [A-Za-z]+)*")


def math_equal(got: str, expected: str) -> bool:
    """Whether a model's final answer `got` equals `expected` (the benchmark's answer).

    Both go through `clean_answer`; equal text is equal. Answers that are words (`Monday`, `Yes`)
    are compared as text, ignoring case: math-verify would parse a word as a product of
    single-letter symbols, so `Monday` would equal `dynamo`. Everything else is math-verify's
    `verify(gold, target)` with the expected answer as gold.

    math-verify limits its own time with SIGALRM, which Python allows only in the main thread; called
    from another thread it runs without that limit (tessy eval grades math in the main thread)."""
    a, b = clean_answer(got), clean_answer(expected)
    if not a:
        return False
    if a == b:
        return True
    if _WORDS.fullmatch(a) or _WORDS.fullmatch(b):
        return a.casefold() == b.casefold()
    from math_verify import parse, verify

    timeout = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"\\boxed{{{b}}}", parsing_timeout=timeout)
    target = parse(f"\\boxed{{{a}}}", parsing_timeout=timeout)
    return bool(gold and target and verify(gold, target, timeout_seconds=timeout))
