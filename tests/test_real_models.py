"""The loop on the real packaged models (SmolLM2-135M student, Gemma 3 270M teacher).

Slow: the first run converts both GGUF files into the tessy cache (about a minute).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from provenance import Recording, splits_into_prefixes

from tessy.backends import Sampling
from tessy.backends.hf import HFBackend
from tessy.config import load_config
from tessy.engine.records import read_records
from tessy.engine.synth import load_backends, synthesize
from tessy.roles import STUDENT, TEACHER

pytestmark = pytest.mark.slow

PROMPTS = [
    {"id": "p1", "prompt": "Write a function that returns the sum of a list of integers."},
    {"id": "p2", "prompt": "Given a string, count how many times each letter appears."},
    {"id": "p3", "prompt": "Read n and print the first n square numbers."},
    {"id": "p4", "prompt": "Write a function that checks whether a number is prime."},
]


def small_config(**overrides):
    return load_config(max_think_tokens=64, max_answer_tokens=16, batch_size=4, **overrides)


@pytest.fixture(scope="module")
def backends():
    return load_backends(small_config())


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def test_provenance_is_true(backends, prompts_file, tmp_path):
    rec = {role: Recording(b) for role, b in backends.items()}
    sessions = {}
    import tessy.engine.synth as synth

    real_start = synth.start_sample

    def start(prompt, config, b, settings, predictors=None):
        x, steps = real_start(prompt, config, b, settings, predictors)
        sessions[x.id] = {role: p.session for role, p in x.parties.items()}
        return x, steps

    synth.start_sample = start
    try:
        summary = synthesize(small_config(), prompts_file, tmp_path / "out.jsonl", backends=rec, progress=False)
    finally:
        synth.start_sample = real_start
    records = read_records(tmp_path / "out.jsonl")
    assert summary["samples"] == len(records) == len(PROMPTS)
    for r in records:
        for role in (STUDENT, TEACHER):
            kept = "".join(s["text"] for s in r["segments"] if s["source"] == role)
            spans = sessions[r["id"]][role].sampled
            assert splits_into_prefixes(kept, spans), (r["id"], role)
        assert any(s["source"] == STUDENT and s["part"] == "answer" for s in r["segments"]) or r["answer"] == ""
        assert all(s["source"] == STUDENT for s in r["segments"] if s["part"] == "answer")
        assert r["stats"]["predictors"] == {STUDENT: "lexicon", TEACHER: "lexicon"}
        assert len(r["stats"]["cuts"]) == r["stats"]["switches"]
        assert all(c["predictor"] == "lexicon" for c in r["stats"]["cuts"])


@pytest.mark.parametrize("role", [STUDENT, TEACHER])
def test_cached_rollback_equals_fresh_prefill(backends, role):
    """Greedy: generate, roll back, append foreign text, generate again (batched, two lengths), and
    compare the final continuation with a fresh full prefill of the same ids."""
    inner = backends[role]
    greedy = HFBackend(inner.model, inner.tokenizer, Sampling(temperature=0.0))
    long_prompt = " ".join(f"item {i} costs {i * 7 % 13} coins;" for i in range(110))  # past Gemma's 512 window
    sessions = [greedy.start("Question: add two numbers in Python.\n\nAnswer:"), greedy.start(long_prompt)]
    for round_ in range(4):
        greedy.generate(sessions, [20, 20], [(), ()])
        greedy.rollback(sessions[0], 7)
        greedy.rollback(sessions[1], 3 + round_)
        greedy.extend(sessions[0], " so the result")
    final = greedy.generate(sessions, [12, 12], [(), ()])
    tolerance = 1e-3
    for s, span in zip(sessions, final):
        prefix = s.ids[: len(s.ids) - len(span.ids)]
        fresh = greedy.start("")
        fresh.ids = list(prefix)
        again = greedy.generate([fresh], [12], [()])[0]
        if again.ids != span.ids:  # allow a flipped near-tie, and say so
            with torch.no_grad():
                logits = inner.model(torch.tensor([s.ids])).logits[0]
            for j, tok in enumerate(span.ids):
                row = logits[len(prefix) - 1 + j]
                assert row.max() - row[tok] < tolerance, (f"step {j}: cached path chose a token "
                                                          f"{row.max() - row[tok]:.4f} below the best")
                if row.argmax().item() != tok:
                    break  # after a legitimate tie-flip the two continuations diverge
        assert s.n_cached == len(s.ids) - 1


def test_thinking_budget_closes_and_student_answers(backends, prompts_file, tmp_path):
    config = load_config(max_think_tokens=16, max_answer_tokens=12, batch_size=4, max_rounds=1000)
    synthesize(config, prompts_file, tmp_path / "out.jsonl", backends=backends, progress=False)
    records = read_records(tmp_path / "out.jsonl")
    budget = [r for r in records if r["stats"]["stop_reason"] == "think_budget"]
    assert budget, [r["stats"]["stop_reason"] for r in records]
    for r in budget:
        assert r["stats"]["think_tokens"] >= 16
        content = r["messages"][-1]["content"]
        assert content.startswith("<think>\n") and content.count("</think>") == 1
        answer = [s for s in r["segments"] if s["part"] == "answer"]
        assert answer and {s["source"] for s in answer} == {STUDENT}


def test_killed_run_resumes_with_each_id_once(prompts_file, tmp_path):
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text("max_think_tokens: 48\nmax_answer_tokens: 12\nbatch_size: 2\nin_flight: 2\n")
    cmd = [sys.executable, "-m", "tessy.cli", "synth", "--config", str(config), "--prompts", str(prompts_file),
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 1):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = out.read_text().count("\n")
    assert 1 <= first < len(PROMPTS), "the kill should land mid-run"
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = [r["id"] for r in read_records(out)]
    assert sorted(ids) == sorted(p["id"] for p in PROMPTS)  # each id exactly once
    assert (tmp_path / "out.config.yaml").exists()


def test_a_session_samples_from_its_own_seed_stream(backends):
    # The same prompt under two keys samples differently; under one key it samples the same, alone
    # or in a batch with other rows (each row draws from its own stream).
    student = backends[STUDENT]
    prompt = "Question: Tell me a story about a dragon.\n\nAnswer:"
    hot = HFBackend(student.model, student.tokenizer, Sampling(temperature=1.0, top_p=1.0, seed=0))
    a, b, a_again = (hot.start(prompt, key=k) for k in ("p1/student", "p2/student", "p1/student"))
    [span_a] = hot.generate([a], [12], [()])
    span_b, span_a_again = hot.generate([b, a_again], [12, 12], [(), ()])
    assert span_a.ids != span_b.ids
    assert span_a.ids == span_a_again.ids


@pytest.mark.parametrize("role", [STUDENT, TEACHER])
def test_span_offsets_decode_like_the_prefixes(backends, role, monkeypatch):
    # The linear decoding of a long span (one token with a little left context at a time) gives the
    # same offsets as decoding every prefix, multibyte characters included, without falling back.
    import tessy.backends.protocol as spans

    by_prefixes = spans._span_by_prefixes
    tokenizer = backends[role].tokenizer
    text = "Okay, so ünïcode — 漢字 and emoji 🙂🙂; def f(x):\n    return x ** 2  # ok\n" * 6
    ids = tokenizer.encode(text, add_special_tokens=False)
    monkeypatch.setattr(spans, "_span_by_prefixes", lambda *a: pytest.fail("the linear decoding fell back"))
    fast = spans.span_from_ids(tokenizer, ids, "length")
    slow = by_prefixes(tokenizer, ids, "length", tokenizer.decode(ids, skip_special_tokens=False))
    assert fast.offsets == slow.offsets and fast.text == slow.text
