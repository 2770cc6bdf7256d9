"""The baselines of section 3.4 (tessy/engine/methods.py): record shape, provenance, Teacher-Mix's split,
Teacher-Score's choice. Scripted backends drive the real scheduler and `synthesize`; the last
tests run every method on the real packaged models."""

import json
from collections import Counter, deque

import pytest
from scripted import EOS, ScriptedBackend

from tessy.backends import Session
from tessy.config import METHODS, load_config
from tessy.engine.methods import REFERENCE_TEMPLATE, STEPS, best_candidate, mix_sources, parse_score
from tessy.engine.records import read_records
from tessy.engine.synth import synthesize
from tessy.roles import STUDENT, TEACHER

THINK_CLOSE = "</think>"


class PromptScripted(ScriptedBackend):
    """A scripted model whose scripts depend on the prompt and on how many sessions that prompt
    has had: `script_for(prompt, i) -> (thinking spans, answer spans)`. A session reads its answer
    spans once its text holds the think-close marker (tessy wrote it: the thinking is over)."""

    def __init__(self, script_for, vocab):
        super().__init__([], vocab)
        self.script_for = script_for
        self.started: list[str] = []

    def start(self, prompt, add_special_tokens=False, key="") -> Session:
        i = self.started.count(prompt)
        self.started.append(prompt)
        think, answer = self.script_for(prompt, i)
        return Session(ids=self.tokenizer.encode(prompt), state={"think": deque(think), "answer": deque(answer)})

    def generate(self, sessions, max_new_tokens, stop):
        scripts = [s.state for s in sessions]
        for s in sessions:
            s.state = s.state["answer" if THINK_CLOSE in self.tokenizer.decode(s.ids) else "think"]
        try:
            return super().generate(sessions, max_new_tokens, stop)
        finally:
            for s, script in zip(sessions, scripts):
                s.state = script


def student_script(prompt, i):
    if "reference answer" in prompt:
        return ["Okay, so I use the reference. ", THINK_CLOSE], ["Student used ref.", EOS]
    return [f"Okay, so candidate{i} here. ", THINK_CLOSE], [f"Student answer {i}.", EOS]


def teacher_script(prompt, i):
    if "Rate the response" in prompt:
        # Session 0 is the sample's own, so the candidates are 1, 2, 3. The judge gives candidate1
        # a 4 and candidate2 a 9; candidate3's score is unreadable.
        reply = "9\n" if "candidate2" in prompt else "4\n" if "candidate1" in prompt else "excellent\n"
        return [], [reply]
    return ["x = 1 + 2 = 3. ", THINK_CLOSE], ["Teacher answer: 3.", EOS]


def make_backends():
    return {STUDENT: PromptScripted(student_script, "a"), TEACHER: PromptScripted(teacher_script, "b")}


def run(tmp_path, method, n_prompts=2, **overrides):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}: add 1 and 2."}) + "\n"
                               for i in range(n_prompts)))
    config = load_config(method=method, batch_size=4, **overrides)
    backends = make_backends()
    out = tmp_path / f"{method}.jsonl"
    synthesize(config, prompts, out, backends=backends, progress=False)
    return read_records(out), backends


def sources(record, part):
    return {s["source"] for s in record["segments"] if s["part"] == part}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_the_record_shape(tmp_path, method):
    records, _ = run(tmp_path, method)
    assert len(records) == 2
    for r in records:
        assert set(r) >= {"id", "prompt", "messages", "segments", "answer", "method", "stats", "config_hash"}
        assert r["method"] == method
        assert r["prompt"] == r["messages"][0]["content"] and r["prompt"].startswith("Question")
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        # The response is in the student's markers, and its text is exactly the segments' text.
        content = r["messages"][1]["content"]
        assert content.startswith("<think>\n") and THINK_CLOSE in content
        for s in r["segments"]:
            assert (s["source"] in (STUDENT, TEACHER) and s["part"] in ("think", "answer")
                    and s["text"].strip() in content)
        assert r["answer"] and r["stats"]["stop_reason"]


@pytest.mark.parametrize(
    "method, think, answer",
    [
        ("student-only", {STUDENT}, {STUDENT}),
        ("teacher-only", {TEACHER}, {TEACHER}),
        ("teacher-answer", {STUDENT}, {TEACHER}),
        ("teacher-think", {TEACHER}, {STUDENT}),
        ("teacher-reference", {STUDENT}, {STUDENT}),
        ("teacher-score", {STUDENT}, {STUDENT}),
    ],
)
def test_provenance(tmp_path, method, think, answer):
    records, _ = run(tmp_path, method)
    for r in records:
        assert sources(r, "think") == think and sources(r, "answer") == answer
        expected_share = 1.0 if think == {TEACHER} else 0.0
        assert r["stats"]["teacher_token_share"] == expected_share
        who = {"student": "Student", "teacher": "Teacher answer"}[next(iter(answer))]
        assert r["answer"].startswith(who)


def test_tessy_final_answer_teacher_variant(tmp_path):
    records, _ = run(tmp_path, "tessy", final_answer="teacher")
    for r in records:
        assert sources(r, "answer") == {TEACHER} and r["answer"] == "Teacher answer: 3."
        assert TEACHER in sources(r, "think")  # the thinking still alternates (the student's "Okay, so" was cut)
    (tmp_path / "default").mkdir()
    default, _ = run(tmp_path / "default", "tessy")
    assert all(sources(r, "answer") == {STUDENT} for r in default)


def test_teacher_reference_prompts_the_student_but_records_the_question(tmp_path):
    records, backends = run(tmp_path, "teacher-reference")
    for r in records:
        assert r["prompt"].startswith("Question") and "reference" not in r["prompt"]
        assert r["stats"]["reference"] == "Teacher answer: 3."
        assert r["answer"] == "Student used ref."
        assert r["stats"]["generated_tokens"][TEACHER] > 0  # the reference is charged to the sample
    seen = [p for p in backends[STUDENT].started if "reference answer" in p]
    assert len(seen) == 2 and all("Teacher answer: 3." in p for p in seen)
    assert REFERENCE_TEMPLATE.split("{reference}")[0].split("}")[-1].strip() in seen[0]


def test_teacher_score_keeps_the_best_candidate_and_records_all_scores(tmp_path):
    records, backends = run(tmp_path, "teacher-score", score_candidates=3)
    for r in records:
        assert r["stats"]["scores"] == [4.0, 9.0, None]
        assert r["stats"]["chosen"] == 1
        assert "candidate2" in r["messages"][1]["content"] and r["answer"] == "Student answer 2."
        assert len(r["stats"]["score_replies"]) == 3
    judged = [p for p in backends[TEACHER].started if "Rate the response" in p]
    assert len(judged) == 6  # 3 candidates x 2 prompts


@pytest.mark.parametrize(
    "scores, best",
    [([1, 2, 3], 2), ([5, 5, 1], 0), ([None, 2, None], 1), ([None, None], 0), ([0.0, None], 0), ([7, 7.5], 1)],
)
def test_best_candidate(scores, best):
    assert best_candidate(scores) == best


@pytest.mark.parametrize(
    "reply, score",
    [("7", 7.0), (" 8/10", 8.0), ("Score 8.5.", 8.5), ("", None), ("excellent", None), ("11", None), ("-3", None),
     ("10", 10.0)],
)
def test_parse_score(reply, score):
    assert parse_score(reply) == score


@pytest.mark.parametrize("n", [1, 2, 7, 20])
def test_teacher_mix_is_one_to_one_and_reproducible(n):
    ids = [f"id{i}" for i in range(n)]
    split = mix_sources(ids, seed=3)
    counts = Counter(split.values())
    assert counts[TEACHER] == n // 2 and counts[STUDENT] == n - n // 2
    assert mix_sources(list(reversed(ids)), seed=3) == split  # order of the file does not matter
    assert mix_sources(ids, seed=3) == split


def test_teacher_mix_seed_changes_the_split():
    ids = [f"id{i}" for i in range(20)]
    assert mix_sources(ids, seed=0) != mix_sources(ids, seed=1)


def test_teacher_mix_records_follow_the_split(tmp_path):
    records, _ = run(tmp_path, "teacher-mix", n_prompts=6, mix_seed=5)
    split = mix_sources([f"p{i}" for i in range(6)], 5)
    assert Counter(r["stats"]["mix_source"] for r in records) == {STUDENT: 3, TEACHER: 3}
    for r in records:
        assert r["stats"]["mix_source"] == split[r["id"]]
        assert sources(r, "think") == sources(r, "answer") == {split[r["id"]]}


def test_every_method_the_config_accepts_has_one_entry_in_the_table():
    assert list(STEPS) == list(METHODS)


@pytest.mark.parametrize("overrides", [{"method": "teacher_only"}, {"method": ""}, {"final_answer": "both"}])
def test_bad_method_settings_are_refused_before_any_work(tmp_path, overrides):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": 1, "prompt": "q"}) + "\n")
    with pytest.raises(ValueError):
        synthesize(load_config(**overrides), prompts, tmp_path / "o.jsonl", backends=make_backends(), progress=False)


def test_cli_method_flag(tmp_path, capsys):
    from tessy.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": 1, "prompt": "q"}) + "\n")
    with pytest.raises(SystemExit) as e:  # the flag's choices are the config field's
        main(["synth", "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"), "--method", "nope"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


# --- the real packaged models ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_backends():
    from tessy.engine.synth import load_backends

    return load_backends(load_config())


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_the_real_models(real_backends, tmp_path, method):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "Write a Python function that returns the sum of a list."})
                       + "\n")
    # Tiny budgets: this checks the wiring on real tokenizers and caches, not the text.
    config = load_config(method=method, max_think_tokens=16, max_answer_tokens=8, score_candidates=2, batch_size=2)
    summary = synthesize(config, prompts, tmp_path / "out.jsonl", backends=real_backends, progress=False)
    records = read_records(tmp_path / "out.jsonl")
    assert summary["samples"] == len(records) == 1
    for r in records:
        assert r["method"] == method and r["segments"]
        content = r["messages"][1]["content"]
        assert all(s["text"].strip() in content for s in r["segments"])
        think, answer = sources(r, "think"), sources(r, "answer")
        if method == "student-only" or method in ("teacher-reference", "teacher-score"):
            assert think <= {STUDENT} and answer <= {STUDENT}
        elif method == "teacher-only":
            assert think <= {TEACHER} and answer <= {TEACHER}
        elif method == "teacher-answer":
            assert think <= {STUDENT} and answer <= {TEACHER}
        elif method == "teacher-think":
            assert think <= {TEACHER} and answer <= {STUDENT}
        if method == "teacher-score":
            assert len(r["stats"]["scores"]) == 2 and 0 <= r["stats"]["chosen"] < 2
        if method == "teacher-reference":
            assert "reference" in r["stats"] and r["prompt"].startswith("Write")


def test_the_summary_gives_generated_tokens_per_kept_token_per_role(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}"}) + "\n" for i in range(3)))
    summary = synthesize(load_config(batch_size=4), prompts, tmp_path / "o.jsonl", backends=make_backends(),
                         progress=False)
    records = read_records(tmp_path / "o.jsonl")
    for role in (STUDENT, TEACHER):
        generated = sum(r["stats"]["generated_tokens"][role] for r in records)
        kept = sum(s["n_tokens"] for r in records for s in r["segments"] if s["source"] == role)
        assert kept and summary["generated_per_kept"][role] == round(generated / kept, 3)
        assert summary["generated_per_kept"][role] >= 1.0
    assert summary["generated_per_kept"]["all"] >= 1.0
