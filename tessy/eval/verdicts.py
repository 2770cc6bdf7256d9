"""What became of one graded sample, or of one sandboxed run: a `Verdict`, a kind and a detail.

The kind is data, decided where the thing happened (the sandbox, a checker, the grader); the detail
is for people and nothing reads it back. The kinds:

  - `accepted`: every test passed (for one sandboxed run: exit status 0 within every limit);
  - `wrong answer`: the program ran and its output, return value or final answer is not the expected one;
  - `time limit`: wall clock or CPU time ran out;
  - `memory limit`: the address-space limit stopped it;
  - `output limit`: it wrote more than the file-size limit;
  - `runtime error`: an exception, a non-zero exit, a signal, the process limit;
  - `compile error`: g++ refused the source (or ran out of its own limits on it);
  - `no answer`: nothing to grade: the thinking never closed, no code, no `\\boxed{}`;
  - `sandbox refusal`: the sandbox could not run it (no g++, a process that did not start, tessy's own disk);
  - `checker error`: the problem's special judge failed, so the output was never judged;
  - `generation error`: the backend gave up on the sample (or the synth record has an error).

The last three are not a judgement of the answer: such a sample is `ungraded` (`UNGRADED`).
"""

from __future__ import annotations

from dataclasses import dataclass

ACCEPTED = "accepted"
WRONG_ANSWER = "wrong answer"
TIME_LIMIT = "time limit"
MEMORY_LIMIT = "memory limit"
OUTPUT_LIMIT = "output limit"
RUNTIME_ERROR = "runtime error"
COMPILE_ERROR = "compile error"
NO_ANSWER = "no answer"
SANDBOX_REFUSAL = "sandbox refusal"
CHECKER_ERROR = "checker error"
GENERATION_ERROR = "generation error"

KINDS = (ACCEPTED, WRONG_ANSWER, TIME_LIMIT, MEMORY_LIMIT, OUTPUT_LIMIT, RUNTIME_ERROR, COMPILE_ERROR, NO_ANSWER,
         SANDBOX_REFUSAL, CHECKER_ERROR, GENERATION_ERROR)
UNGRADED = frozenset({SANDBOX_REFUSAL, CHECKER_ERROR, GENERATION_ERROR})


@dataclass(frozen=True)
class Verdict:
    kind: str  # one of KINDS
    detail: str = ""  # for people: which test, what was printed, the compiler's first error line

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown verdict kind {self.kind!r} (known: {', '.join(KINDS)})")

    @property
    def passed(self) -> bool:
        return self.kind == ACCEPTED

    @property
    def graded(self) -> bool:
        """Whether this judges the answer (else the sample could not be graded)."""
        return self.kind not in UNGRADED

    def within(self, name: str) -> Verdict:
        """The same verdict with `name` (the test it happened on) in front of its detail."""
        return Verdict(self.kind, f"{name}: {self.detail}" if self.detail else name)

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


OK = Verdict(ACCEPTED)
