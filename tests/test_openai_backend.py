"""The `openai` backend.

Fast tests drive a tiny fake server (tests/fake_server.py) for the request shapes and the fault
shapes; the slow tests start a real `llama_cpp.server` on 127.0.0.1 with the packaged SmolLM2 GGUF.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from provenance import Recording, splits_into_prefixes
from scripted import CharTokenizer

from tessy.backends import SampleError, Sampling, Span
from tessy.backends.openai import ChatClient, EndpointPool, OpenAIBackend
from tessy.config import load_config
from tessy.records import errors_path_for, read_errors, read_records
from tessy.roles import STUDENT, TEACHER
from tessy.synth import synthesize


def backend_on(*servers, vocab="a", timeout_s=5.0, max_retries=2, concurrency=8) -> OpenAIBackend:
    pool = EndpointPool([s.url for s in servers], None, timeout_s, max_retries, concurrency, backoff_s=0.01)
    return OpenAIBackend(CharTokenizer(vocab), pool, Sampling(temperature=0.6, top_p=1.0, seed=0), model="char",
                         eos_ids={0})


# --- request shapes ------------------------------------------------------------------------------
def test_text_mode_sends_the_session_text_and_cuts_at_the_marker(servers):
    srv = servers(ids=False, alphabet="xy</think>zz")
    b = backend_on(srv)
    s = b.start("Q")
    [span] = b.generate([s], [12], [("</think>",)])
    assert b.pool.endpoints[0].ids is False  # it refused a token-id prompt, so it gets text
    assert span.text == "y</think>" and span.finish == "stop"
    assert s.ids == CharTokenizer("a").encode("Qy</think>")
    body = srv.completions()[-1]
    assert body["prompt"] == "Q" and "stop" not in body  # the marker is found here, not by the server
    assert (body["top_k"], body["min_p"], body["repeat_penalty"]) == (0, 0.0, 1.0)  # only temperature and top_p act
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.6, 1.0, 12)

    b.rollback(s, 7)  # keep "y<"
    b.extend(s, "ab")
    b.generate([s], [3], [()])
    assert srv.completions()[-1]["prompt"] == "Qy<ab"


def test_ids_mode_sends_token_ids_keeps_specials_and_drops_eos(servers):
    srv = servers(ids=True, alphabet="abc\x00")  # id 0 is the tokenizer's EOS
    b = backend_on(srv)
    s = b.start("Q: a")  # 4 characters: the fake model starts at "a"
    prompt_ids = list(s.ids)
    [span] = b.generate([s], [4], [("</think>",)])
    assert b.pool.endpoints[0].ids is True
    body = srv.completions()[-1]
    assert body["prompt"] == prompt_ids and body["model"] == "fake-model"
    assert body["return_token_ids"] is True and body["include_stop_str_in_output"] is True
    assert body["skip_special_tokens"] is False and body["add_special_tokens"] is False
    assert body["stop"] == ["</think>"]
    assert span.ids == [97, 98, 99] and span.text == "abc" and span.finish == "eos"
    assert s.ids == prompt_ids + [97, 98, 99]


def test_many_sessions_share_a_pool_of_places_and_send_compact_json(servers):
    # 24 sessions at once through 8 places: every one answered, never more than 8 at the server at a
    # time, and each body compact (a session's ids are most of every request).
    srv = servers()
    srv.slow_if, srv.slow_if_s = "Q", 0.05
    b = backend_on(srv, concurrency=8)
    sessions = [b.start(f"Q{i}", key=f"p{i}/student") for i in range(24)]
    spans = b.generate(sessions, [3] * 24, [()] * 24)
    assert all(not isinstance(s, SampleError) and len(s.ids) == 3 for s in spans)
    assert 1 < srv.max_in_flight <= 8
    body = next(r for r in srv.raw if b'"prompt":[' in r)
    assert b", " not in body and b'": ' not in body


def test_seed_comes_from_the_session_and_its_position(servers):
    srv = servers()
    b = backend_on(srv)
    s1, s2, again = b.start("Q", key="p1/student"), b.start("Q", key="p2/student"), b.start("Q", key="p1/student")
    b.generate([s1, s2, again], [3, 3, 3], [(), (), ()])
    seeds = sorted(r["seed"] for r in srv.completions())  # concurrent requests arrive in any order
    assert len(set(seeds)) == 2  # the same prompt under two ids differs; the same id repeats its seed
    twice = next(s for s in seeds if seeds.count(s) == 2)
    b.generate([s1], [3], [()])
    assert srv.completions()[-1]["seed"] not in seeds  # the next request of a session moves on
    b.generate([b.start("Q", key="p1/student")], [3], [()])
    assert srv.completions()[-1]["seed"] == twice  # p1's stream at position 0


def test_a_retried_request_sends_the_same_seed(servers):
    srv = servers()
    srv.faults.extend(["500", "ok"])
    b = backend_on(srv)
    [span] = b.generate([b.start("Q", key="p1/student")], [4], [()])
    first, retry = srv.completions()
    assert isinstance(span, Span) and first["seed"] == retry["seed"] and first["prompt"] == retry["prompt"]


def test_the_same_prompt_under_two_ids_gives_different_records_through_a_server(servers, tmp_path):
    s_srv, t_srv = servers(ids=True), servers(ids=True, alphabet="step one two ")
    s_srv.seeded = t_srv.seeded = True  # the fake model's text depends on the request's seed
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": "Add two numbers."}) + "\n" for i in ("a", "b")))
    config = load_config(k=4, max_think_tokens=12, max_answer_tokens=4)
    backends = {STUDENT: backend_on(s_srv, vocab="a"), TEACHER: backend_on(t_srv, vocab="b")}
    synthesize(config, prompts, tmp_path / "out.jsonl", backends=backends, progress=False)
    a, b = sorted(read_records(tmp_path / "out.jsonl"), key=lambda r: r["id"])
    assert a["prompt"] == b["prompt"] and a["segments"] != b["segments"]


# --- faults --------------------------------------------------------------------------------------
FAULTS = [("500", "HTTP 500"), ("json", "not JSON"), ("shape", "malformed answer"), ("slow", "timed out")]


@pytest.mark.parametrize("fault,_", FAULTS)
def test_a_passing_fault_is_retried(servers, fault, _):
    srv = servers()
    srv.slow_s = 1.0
    srv.faults.append(fault)
    b = backend_on(srv, timeout_s=0.3)
    [span] = b.generate([b.start("Q")], [4], [()])
    assert isinstance(span, Span) and len(span.ids) == 4
    assert len(srv.completions()) == 2


@pytest.mark.parametrize("fault,message", FAULTS)
def test_a_lasting_fault_becomes_a_sample_error_after_its_retries(servers, fault, message):
    bad = servers()
    bad.always = fault
    bad.slow_s = 1.0
    b = backend_on(bad, timeout_s=0.3, max_retries=2)
    stuck = b.start("Q")
    before = list(stuck.ids)
    [err] = b.generate([stuck], [4], [()])
    assert isinstance(err, SampleError) and err.attempts == 3 and message in str(err) and err.endpoint == bad.url
    assert stuck.ids == before  # a failed row leaves its session as it was


def test_a_client_error_is_not_retried(servers):
    srv = servers()
    srv.always = "400"
    b = backend_on(srv, max_retries=3)
    [err] = b.generate([b.start("Q")], [4], [()])
    assert isinstance(err, SampleError) and err.attempts == 1 and "HTTP 400" in str(err)


def test_one_failing_row_does_not_stop_the_others(servers):
    srv = servers()
    srv.poison = "BAD"
    b = backend_on(srv, max_retries=1)
    out = b.generate([b.start("ok 1"), b.start("BAD"), b.start("ok 2")], [3, 3, 3], [(), (), ()])
    assert [type(x).__name__ for x in out] == ["Span", "SampleError", "Span"]


# --- many requests, many endpoints -------------------------------------------------------------------
def test_concurrency_is_limited_per_endpoint(servers):
    srv = servers(delay_s=0.15)
    b = backend_on(srv, concurrency=3)
    sessions = [b.start(f"Q{i}") for i in range(9)]
    spans = b.generate(sessions, [2] * 9, [()] * 9)
    assert all(isinstance(s, Span) for s in spans)
    assert srv.max_in_flight == 3  # all at once, but never more than the limit


def test_sessions_spread_over_endpoints_and_move_when_one_fails(servers):
    a, c = servers(), servers()
    b = backend_on(a, c, max_retries=1)
    sessions = [b.start(f"Q{i}") for i in range(4)]
    assert [s.state.endpoint for s in sessions] == [0, 1, 0, 1]
    b.generate(sessions, [2] * 4, [()] * 4)
    assert len(a.completions()) == len(c.completions()) == 2
    a.always = "500"
    spans = b.generate(sessions, [2] * 4, [()] * 4)
    assert all(isinstance(s, Span) for s in spans)
    assert [s.state.endpoint for s in sessions] == [1, 1, 1, 1]
    b.release(sessions[0])
    assert b.pool.endpoints[1].sessions == 3


def test_api_key_comes_from_the_named_environment_variable(servers, monkeypatch):
    srv = servers()
    monkeypatch.setenv("TESSY_TEST_KEY", "sekret")
    chat = ChatClient([srv.url], api_key_env="TESSY_TEST_KEY", backoff_s=0.01)
    assert chat.complete([[{"role": "user", "content": "hello"}]]) == ["ok: hello"]
    assert srv.headers[-1]["Authorization"] == "Bearer sekret"
    chat.close()
    monkeypatch.delenv("TESSY_TEST_KEY")
    with pytest.raises(ValueError, match="TESSY_TEST_KEY"):
        ChatClient([srv.url], api_key_env="TESSY_TEST_KEY")


def test_config_hash_ignores_where_the_servers_are():
    a = load_config()
    b = load_config()
    b.student.urls, b.student.timeout_s, b.teacher.concurrency = ["http://x:1/v1"], 5.0, 2
    assert a.hash() == b.hash()
    b.student.temperature = 0.1
    assert a.hash() != b.hash()


# --- a whole run that survives a failing sample --------------------------------------------------------
PROMPTS = [{"id": f"p{i}", "prompt": f"Problem {i}: add two numbers."} for i in range(4)]
PROMPTS[2]["prompt"] = "Problem POISON: add two numbers."


def test_synth_writes_error_records_beside_the_output_and_retry_errors_completes_them(servers, tmp_path):
    s_srv, t_srv = servers(ids=True), servers(ids=False, alphabet="step one two ")
    s_srv.poison = "POISON"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    out = tmp_path / "out.jsonl"
    config = load_config(k=4, max_think_tokens=12, max_answer_tokens=4, batch_size=4)

    def backends():
        return {STUDENT: backend_on(s_srv, vocab="a", max_retries=1),
                TEACHER: backend_on(t_srv, vocab="b", max_retries=1)}

    summary = synthesize(config, prompts, out, backends=backends(), progress=False)
    assert summary["samples"] == 3 and summary["errors"] == 1
    assert sorted(r["id"] for r in read_records(out)) == ["p0", "p1", "p3"]
    errors = read_errors(errors_path_for(out))
    assert list(errors) == ["p2"] and errors["p2"]["attempts"] == 2 and "HTTP 500" in errors["p2"]["error"]

    again = synthesize(config, prompts, out, backends=backends(), progress=False)  # a plain rerun skips it
    assert (again["samples"], again["skipped"], again["errors"], again["errors_left"]) == (0, 4, 0, 1)

    s_srv.poison = None  # the server is fixed
    retried = synthesize(config, prompts, out, backends=backends(), progress=False, retry_errors=True)
    assert retried["samples"] == 1 and retried["errors"] == 0 and retried["errors_left"] == 0
    ids = [r["id"] for r in read_records(out)]
    assert sorted(ids) == ["p0", "p1", "p2", "p3"]  # each exactly once
    assert read_errors(errors_path_for(out)) == {}


# --- a real server: llama.cpp's, with the packaged SmolLM2 GGUF ------------------------------------------
LLAMA_PROMPTS = [
    {"id": "r1", "prompt": "Write a function that returns the sum of a list of integers."},
    {"id": "r2", "prompt": "Given a string, count how many times each letter appears."},
    {"id": "r3", "prompt": "Read n and print the first n square numbers."},
    {"id": "r4", "prompt": "Write a function that checks whether a number is prime."},
]


class LlamaServer:
    """`python -m llama_cpp.server` on 127.0.0.1, started (and started again) on one port."""

    def __init__(self, log_path):
        from tessy.models import _smollm2_gguf

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(_smollm2_gguf()), "--host", "127.0.0.1",
                    "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "2", "--interrupt_requests", "False"]
        self.log_path = log_path
        self.proc = None

    def start(self, timeout_s: float = 120.0) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.kill()
        pytest.fail("llama_cpp.server did not come up:\n" + open(self.log_path, errors="replace").read()[-3000:])

    def served(self) -> int:
        """Completion requests answered so far (uvicorn logs each one)."""
        return self.log_path.read_text(errors="replace").count("POST /v1/completions")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server] (requirements.txt)")
    server = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log")
    server.start()
    yield server
    server.kill()


def served_config(url: str, **overrides):
    config = load_config(max_think_tokens=40, max_answer_tokens=12, batch_size=4, **overrides)
    for role, seed in ((STUDENT, 0), (TEACHER, 1)):  # one server serves both roles: SmolLM2 twice
        m = getattr(config, role)
        m.model, m.backend, m.urls = "smollm2-135m-instruct", "openai", [url]
        m.seed, m.timeout_s, m.max_retries = seed, 60.0, 2
    return config


@pytest.mark.slow
def test_synth_through_a_real_server_gives_true_provenance(llama, tmp_path, monkeypatch):
    import tessy.synth as synth
    from tessy.synth import load_backends

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in LLAMA_PROMPTS[:3]))
    config = served_config(llama.url)
    backends = load_backends(config)
    sessions = {}
    real_start = synth.start_sample

    def start(prompt, *args, **kw):
        x, steps = real_start(prompt, *args, **kw)
        sessions[x.id] = {role: p.session for role, p in x.parties.items()}
        return x, steps

    monkeypatch.setattr(synth, "start_sample", start)
    summary = synthesize(config, prompts, tmp_path / "out.jsonl",
                         backends={r: Recording(b) for r, b in backends.items()}, progress=False)
    records = read_records(tmp_path / "out.jsonl")
    assert summary["samples"] == 3 and summary["errors"] == 0
    assert backends[STUDENT].pool.endpoints[0].ids is False  # llama.cpp takes text prompts only
    for r in records:
        assert r["config_hash"] == config.hash()
        for role in (STUDENT, TEACHER):
            kept = "".join(s["text"] for s in r["segments"] if s["source"] == role)
            assert splits_into_prefixes(kept, sessions[r["id"]][role].sampled), (r["id"], role)
        assert r["segments"] and {s["source"] for s in r["segments"] if s["part"] == "answer"} <= {STUDENT}
    # the server really wrote the spans
    assert sum(len(s.sampled) for per in sessions.values() for s in per.values()) >= 6


@pytest.mark.slow
def test_chat_client_and_timeouts_on_a_real_server(llama):
    chat = ChatClient([llama.url], max_tokens=8, backoff_s=0.05)
    [answer] = chat.complete([[{"role": "user", "content": "What is 2 + 2?"}]])
    assert isinstance(answer, str) and answer.strip()
    chat.close()
    # An answer slower than the timeout: 48 tokens cannot come back within 0.05 s.
    pool = EndpointPool([llama.url], None, timeout_s=0.05, max_retries=1, concurrency=1, backoff_s=0.05)
    from tessy.backends.openai import load_tokenizer

    b = OpenAIBackend(load_tokenizer("smollm2-135m-instruct"), pool, Sampling(0.6, 1.0, 0))
    [err] = b.generate([b.start("Count from one to one hundred:")], [48], [()])
    assert isinstance(err, SampleError) and err.attempts == 2 and "timed out" in str(err)
    pool.close()
    time.sleep(3)  # let the server finish the abandoned requests before the next test


@pytest.mark.slow
def test_server_killed_mid_run_then_retry_errors_completes_each_id_once(llama, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in LLAMA_PROMPTS))
    config = tmp_path / "config.yaml"
    config.write_text("max_think_tokens: 40\nmax_answer_tokens: 12\nbatch_size: 2\nin_flight: 2\n"
                      "student: {model: smollm2-135m-instruct, timeout_s: 30, max_retries: 2}\n"
                      "teacher: {model: smollm2-135m-instruct, seed: 1, timeout_s: 30, max_retries: 2}\n")
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "tessy.cli", "synth", "--config", str(config), "--prompts", str(prompts),
           "--out", str(out), "--student-url", llama.url, "--teacher-url", llama.url]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 1) and run.poll() is None:
        time.sleep(0.05)
    served = llama.served()  # then let the samples that took the free places make a few requests
    while time.time() < deadline and llama.served() < served + 4 and run.poll() is None:
        time.sleep(0.05)
    llama.kill()  # mid-run: some samples written, the others in flight
    log, _ = run.communicate(timeout=300)
    assert run.returncode == 0, log  # the run goes on to its end
    done = [r["id"] for r in read_records(out)]
    errors = read_errors(errors_path_for(out))
    assert 1 <= len(done) < len(LLAMA_PROMPTS), log
    assert sorted(done + list(errors)) == sorted(p["id"] for p in LLAMA_PROMPTS)  # nothing lost
    assert all(e["attempts"] == 3 and e["endpoint"] == llama.url for e in errors.values()), errors
    assert all(e["rounds"] > 0 for e in errors.values()), errors  # they were mid-sample when it died

    llama.start()  # the server is back
    retry = subprocess.run(cmd + ["--retry-errors"], capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    ids = [r["id"] for r in read_records(out)]
    assert sorted(ids) == sorted(p["id"] for p in LLAMA_PROMPTS)  # each id exactly once
    assert read_errors(errors_path_for(out)) == {}
