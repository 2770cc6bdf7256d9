"""The `openai` backend.

Fast tests drive a tiny fake server (tests/fake_server.py) for the request shapes, the stream shapes
and the fault shapes; the real-server tests start llama.cpp's `llama-server` (tests/llama_server.py)
on 127.0.0.1 with the packaged SmolLM2 GGUF, and skip where its binary is missing.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llama_server import started
from provenance import Recording, splits_into_prefixes
from scripted import CharTokenizer

from tessy.backends import SampleError, Sampling, Span
from tessy.backends.openai import ChatClient, EndpointPool, OpenAIBackend, Text, eos_ids_of
from tessy.config import load_config
from tessy.engine.records import errors_path_for, read_errors, read_records
from tessy.engine.synth import synthesize
from tessy.roles import STUDENT, TEACHER


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
    b.student.endpoint.urls, b.student.endpoint.timeout_s, b.teacher.endpoint.concurrency = ["http://x:1/v1"], 5.0, 2
    assert a.hash() == b.hash()
    b.student.spec.temperature = 0.1
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


# --- llama.cpp's native mode, on the fake server ---------------------------------------------------------
def first(srv) -> str:
    """A prompt after which the fake model writes its alphabet from the start."""
    return "Q" * len(srv.alphabet)


def test_native_mode_is_chosen_by_probing_and_speaks_llama_cpps_names(servers):
    srv = servers(native=True, alphabet="abc</think>de")
    b = backend_on(srv)
    b.sampling = Sampling(0.7, 0.8, 5, top_k=20, min_p=0.05, repetition_penalty=1.1)
    s = b.start(first(srv))
    prompt_ids = list(s.ids)
    [span] = b.generate([s], [12], [("</think>",)])
    ep = b.pool.endpoints[0]
    assert ep.mode == "native" and ep.ids is True
    assert srv.paths[-1] == "/completion" and srv.completions()[-1] is srv.requests[-1]
    body = srv.requests[-1]
    assert body["prompt"] == prompt_ids and body["n_predict"] == 12 and "max_tokens" not in body
    assert (body["temperature"], body["top_p"], body["top_k"], body["min_p"], body["repeat_penalty"]) == \
        (0.7, 0.8, 20, 0.05, 1.1)
    assert body["samplers"] == ["penalties", "temperature", "top_k", "top_p", "min_p"]
    assert body["return_tokens"] is True and body["cache_prompt"] is True and "stream" not in body
    assert body["stop"] == body["preserved_tokens"] == ["</think>"] and isinstance(body["seed"], int)
    assert "prompt" not in body["response_fields"]  # the prompt is not echoed back
    # The sampled ids as they are; llama.cpp's stop_type "word" is a stop; its prompt figures.
    assert span.ids == [ord(c) for c in "abc</think>"] and span.text == "abc</think>" and span.finish == "stop"
    assert (span.prompt_tokens, span.cached_tokens) == (13, 6)
    assert s.ids == prompt_ids + span.ids


@pytest.mark.parametrize("alphabet,n,finish,text", [("ab\x00cd", 6, "eos", "ab"), ("abcd", 3, "length", "abc")])
def test_native_mode_maps_how_llama_cpp_finished(servers, alphabet, n, finish, text):
    srv = servers(native=True, alphabet=alphabet)
    b = backend_on(srv)
    [span] = b.generate([b.start(first(srv))], [n], [()])
    assert (span.text, span.finish) == (text, finish)  # EOS is never part of a span


def test_native_mode_learns_the_servers_end_of_generation_id(servers):
    srv = servers(native=True, alphabet="ab\x01cd")  # id 1 ends generation on the server; the tokenizer says 0
    srv._write = lambda body, prompt, native: ("ab\x01", "eos")
    b = backend_on(srv)
    [span] = b.generate([b.start(first(srv))], [6], [()])
    assert (span.text, span.finish) == ("ab", "eos") and 1 in b.eos_ids


def test_ids_mode_is_preferred_where_a_server_has_both(servers):
    srv = servers(ids=True, native=True)
    b = backend_on(srv)
    b.generate([b.start("Q")], [3], [()])
    assert b.pool.endpoints[0].mode == "ids" and "/completion" not in srv.paths


def test_a_server_with_neither_gets_text_mode(servers):
    srv = servers(ids=False)
    b = backend_on(srv)
    b.generate([b.start("Q")], [3], [()])
    assert b.pool.endpoints[0].mode == "text" and "/completion" in srv.paths  # it was asked, and had no such route


# --- streaming with an early stop ----------------------------------------------------------------------------
def test_sse_decoder_reads_events_split_anywhere():
    from tessy.backends.openai import SSEDecoder

    raw = (b'data: {"a": 1}\n\n: ping\n\nevent: x\r\ndata: {"b":\r\ndata: 2}\r\n\r\n'
           b'data: [DONE]\n\ndata: {"c": "\xc3\xa9"}\n\n')
    whole = SSEDecoder().feed(raw)
    assert whole == ['{"a": 1}', '{"b":\n2}', "[DONE]", '{"c": "\u00e9"}']
    for size in (1, 2, 3, 7):  # the same events however the bytes arrive (a UTF-8 character split too)
        decoder, got = SSEDecoder(), []
        for i in range(0, len(raw), size):
            got += decoder.feed(raw[i : i + size])
        assert got == whole and not decoder.pending
    decoder = SSEDecoder()
    decoder.feed(b'data: {"a"')
    assert decoder.pending  # a stream that ends here was cut off


def after(n_tokens: int, seen: list | None = None):
    """A watch that stops a request once its span has `n_tokens` tokens (and records what it read)."""

    def watch(span):
        if seen is not None:
            seen.append(span.text)
        return len(span.ids) >= n_tokens

    return watch


@pytest.mark.parametrize("kind", ["ids", "native", "text"])
def test_a_watch_stops_the_stream_and_the_server_stops_writing(servers, kind):
    srv = servers(ids=kind == "ids", native=kind == "native", alphabet="abcdefghij")
    srv.stream_delay_s = 0.01
    b = backend_on(srv)
    s = b.start(first(srv))
    before = list(s.ids)
    seen = []
    span = b.submit(s, 100, (), watch=after(3, seen)).result(timeout=10)
    assert b.pool.endpoints[0].mode == kind
    assert (span.text, span.finish) == ("abc", "cut") and seen == ["a", "ab", "abc"]
    assert s.ids == before + span.ids
    assert srv.requests[-1]["stream"] is True
    time.sleep(0.2)
    assert srv.streams[-1]["events"] < 20  # the client went away: the rest of the 100 was never written


@pytest.mark.parametrize("kind", ["ids", "native", "text"])
def test_a_stream_that_is_not_cut_gives_the_whole_answer(servers, kind):
    srv = servers(ids=kind == "ids", native=kind == "native", alphabet="abc</think>de")
    b = backend_on(srv)
    whole = b.generate([b.start(first(srv))], [12], [("</think>",)])[0]
    streamed = b.generate([b.start(first(srv))], [12], [("</think>",)], watch=[lambda span: False])[0]
    assert whole.text == "abc</think>" and whole.finish == "stop"
    assert (streamed.ids, streamed.text, streamed.offsets, streamed.finish) == \
        (whole.ids, whole.text, whole.offsets, whole.finish)
    assert (streamed.prompt_tokens, streamed.cached_tokens) == (whole.prompt_tokens, whole.cached_tokens)
    # A text-mode server is sent no stop strings, so the client closes the stream itself at "</think>":
    # whether the server had written its last events by then depends on timing. The others stop there.
    assert srv.streams and all(not r["gone"] for r in srv.streams if kind != "text")


def test_events_split_across_reads_are_put_together(servers):
    srv = servers(native=True)
    srv.stream_faults.append("split")
    b = backend_on(srv)
    [span] = b.generate([b.start(first(srv))], [6], [()], watch=[after(100)])
    assert span.text == "abcdef" and span.finish == "length" and srv.streams[-1]["fault"] == "split"


def test_generate_takes_one_watch_per_session(servers):
    srv = servers(native=True)
    b = backend_on(srv)
    spans = b.generate([b.start(first(srv)), b.start(first(srv))], [8, 8], [(), ()], watch=[after(2), None])
    assert [(sp.text, sp.finish) for sp in spans] == [("ab", "cut"), ("abcdefgh", "length")]
    assert [r.get("stream", False) for r in srv.completions()].count(True) == 1


@pytest.mark.parametrize("kind", ["ids", "native", "text"])
def test_a_stop_string_ends_the_stream_here(servers, kind):
    srv = servers(ids=kind == "ids", native=kind == "native", alphabet="ab</think>cdefghij")
    srv._write = lambda body, prompt, native: ("ab</think>cdefghij", "limit")  # a server that writes past it
    b = backend_on(srv)
    seen = []
    [span] = b.generate([b.start(first(srv))], [18], [("</think>",)], watch=[after(100, seen)])
    assert (span.text, span.finish) == ("ab</think>", "stop")
    assert "ab</think>" not in seen  # an answer that is complete is not watched


@pytest.mark.parametrize("fault,message", [("malformed", "malformed event"), ("drop", "before its last event"),
                                           ("error", "error event")])
def test_a_stream_that_breaks_is_retried_from_the_start(servers, fault, message):
    srv = servers(native=True)
    srv.stream_faults.extend([fault, "ok"])
    b = backend_on(srv)
    s = b.start(first(srv))
    seen = []
    [span] = b.generate([s], [8], [()], watch=[after(100, seen)])
    assert span.text == "abcdefgh" and span.finish == "length"
    tried, retried = srv.completions()
    assert tried == retried  # the same request again: the same seed, so the same tokens
    assert seen[:2] == seen[2:4] == ["a", "ab"]  # read again from the start

    srv.stream_faults.extend([fault] * 3)
    stuck = b.start(first(srv))
    [err] = b.generate([stuck], [8], [()], watch=[after(100)])
    assert isinstance(err, SampleError) and err.attempts == 3 and message in str(err)


def test_a_gap_in_llama_cpps_stream_asks_again_whole_and_cuts_at_the_same_token(servers):
    srv = servers(native=True)
    srv.stream_faults.append("gap")  # an event left out, as llama.cpp does inside a UTF-8 character
    b = backend_on(srv)
    seen = []
    [span] = b.generate([b.start(first(srv))], [12], [()], watch=[after(5, seen)])
    assert (span.text, span.finish, span.ids) == ("abcde", "cut", [ord(c) for c in "abcde"])
    assert not srv.completions()[-1].get("stream")  # the whole answer, asked for again
    assert seen[-5:] == ["a", "ab", "abc", "abcd", "abcde"]  # read one token at a time


@pytest.mark.parametrize("kind", ["ids", "native"])
def test_a_server_that_does_not_stream_is_read_whole_and_cut_where_the_watch_says(servers, kind):
    srv = servers(ids=kind == "ids", native=kind == "native")
    srv.ignore_stream = True
    b = backend_on(srv)
    s = b.start(first(srv))
    [span] = b.generate([s], [10], [()], watch=[after(4)])
    assert (span.text, span.finish) == ("abcd", "cut") and len(srv.completions()) == 1 and not srv.streams
    assert s.ids[-4:] == span.ids


def test_a_watch_that_raises_fails_the_call_not_the_server(servers):
    srv = servers(native=True)
    b = backend_on(srv)

    def broken(span):
        raise RuntimeError("a bug in the watch")

    with pytest.raises(RuntimeError, match="a bug in the watch"):
        b.submit(b.start("Q"), 8, (), watch=broken).result(timeout=10)
    assert len(srv.completions()) == 1  # not retried


# --- a real server: llama.cpp's llama-server, with the packaged SmolLM2 GGUF ---------------------------------
LLAMA_PROMPTS = [
    {"id": "r1", "prompt": "Write a function that returns the sum of a list of integers."},
    {"id": "r2", "prompt": "Given a string, count how many times each letter appears."},
    {"id": "r3", "prompt": "Read n and print the first n square numbers."},
    {"id": "r4", "prompt": "Write a function that checks whether a number is prime."},
]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A llama-server with 4 slots (continuous batching, a prompt cache per slot)."""
    server = started(tmp_path_factory.mktemp("llama") / "server.log", parallel=4, ctx=8192)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def llama1(tmp_path_factory):
    """A llama-server with one slot: requests run one at a time, so the same seed gives the same tokens."""
    server = started(tmp_path_factory.mktemp("llama1") / "server.log", parallel=1, ctx=2048)
    yield server
    server.stop()


@functools.cache
def smollm2():
    from tessy.backends.openai import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def real_backend(server, seed: int | None = 0, temperature: float = 0.8, timeout_s: float = 60.0,
                 max_retries: int = 2) -> OpenAIBackend:
    pool = EndpointPool([server.url], None, timeout_s, max_retries, concurrency=8, backoff_s=0.05)
    tokenizer = smollm2()
    return OpenAIBackend(tokenizer, pool, Sampling(temperature, 1.0, seed), "smollm2-135m-instruct",
                         eos_ids_of(tokenizer, Path(tokenizer.name_or_path)))


def answers_of(backend: OpenAIBackend) -> list[tuple[str, dict, dict]]:
    """Every whole answer the backend's pool receives from now on: (url, body, answer)."""
    seen, post_url = [], backend.pool.post_url

    async def spy(url, body):
        answer = await post_url(url, body)
        seen.append((url, body, answer))
        return answer

    backend.pool.post_url = spy
    return seen


def test_native_mode_keeps_the_sampled_ids_and_reports_the_prefix_cache(llama1):
    b = real_backend(llama1, seed=7)
    answers = answers_of(b)
    s = b.start("The three most useful kitchen tools are", key="native/student")
    prompt = list(s.ids)
    [span] = b.generate([s], [24], [()])
    assert b.pool.endpoints[0].mode == "native"  # probed: /v1/completions gave no ids, /completion did
    url, body, answer = answers[-1]
    assert url == llama1.root + "/completion" and body["prompt"] == prompt and body["cache_prompt"] is True
    sampled = answer["tokens"]
    assert span.ids == sampled[: len(span.ids)] and len(span.ids) >= len(sampled) - 1  # as sampled (an EOS dropped)
    assert span.text == smollm2().decode(span.ids, skip_special_tokens=False) == answer["content"]
    assert span.prompt_tokens == len(prompt) and span.finish in ("length", "eos")
    assert "prompt" not in answer and "generation_settings" not in answer  # response_fields kept it small

    # The same request with the prompt cache off samples the same ids: the seed decides them.
    again = llama1.post("/completion", {**body, "cache_prompt": False})
    assert again["tokens"] == sampled and again["timings"]["cache_n"] == 0

    # The session's next request extends this one's prompt and span: that much comes from the cache.
    b.extend(s, " and")
    [more] = b.generate([s], [8], [()])
    assert more.prompt_tokens == len(s.ids) - len(more.ids)
    assert len(prompt) <= more.cached_tokens < more.prompt_tokens
    b.close()


def test_a_warm_up_computes_the_prompt_and_leaves_the_session_as_it_was(llama):
    b = real_backend(llama, seed=5)
    s = b.start("List three prime numbers and say why each is prime. " * 6, key="warm/teacher")
    before = list(s.ids)
    warm = b.warm(s).result(timeout=60)
    assert len(warm.ids) == 1 and warm.prompt_tokens == len(before) and warm.cached_tokens == 0
    assert s.ids == before  # the warm-up's token is dropped
    # The first real request finds the prompt computed: all of it but the last token comes from the cache.
    [span] = b.generate([s], [6], [()])
    assert span.prompt_tokens == len(before) and span.cached_tokens >= len(before) - 1
    assert s.ids == before + span.ids
    b.close()


def test_a_warm_up_that_fails_is_a_sample_error_not_an_exception(servers):
    srv = servers(native=True)
    srv.faults.extend(["500"] * 5)
    b = OpenAIBackend(CharTokenizer("a"), EndpointPool([srv.url], None, 5.0, 3, 4, 0.01), Sampling(0.6, 1.0, 0),
                      "char", eos_ids={0})
    s = b.start("warm me")
    assert isinstance(b.warm(s).result(timeout=10), SampleError) and s.ids == CharTokenizer("a").encode("warm me")
    b.close()


def test_a_watch_stops_the_sequence_on_the_server(llama1):
    b = real_backend(llama1, seed=3)
    b.generate([b.start("Hi")], [1], [()])  # the probe, before the count starts
    # llama.cpp counts the tokens of an aborted request in no `tokens_predicted_total`; its decode
    # steps (one per token while it is the only sequence) show how far it went.
    before = llama1.idle()["llamacpp:n_decode_total"]
    seen = []
    span = b.submit(b.start("Count slowly from one to five hundred: one, two,", key="cut/student"), 200, (),
                    watch=after(3, seen)).result(timeout=60)
    assert span.finish == "cut" and len(span.ids) == 3 and len(seen) == 3
    time.sleep(0.5)
    decoded = llama1.idle()["llamacpp:n_decode_total"] - before
    assert 3 <= decoded < 20, decoded  # not the 200 it was asked for
    b.close()


def test_streamed_and_whole_requests_give_the_same_span_for_the_same_seed(llama1):
    b = real_backend(llama1, seed=11)
    prompt = "Here is a short story about a lighthouse keeper:"
    whole = b.generate([b.start(prompt, key="same/student")], [40], [()])[0]
    streamed = b.generate([b.start(prompt, key="same/student")], [40], [()], watch=[lambda span: False])[0]
    cut = b.generate([b.start(prompt, key="same/student")], [40], [()], watch=[after(10)])[0]
    assert len(whole.ids) > 10
    assert (streamed.ids, streamed.text, streamed.finish) == (whole.ids, whole.text, whole.finish)
    assert cut.finish == "cut" and cut.ids == whole.ids[:10] and whole.text.startswith(cut.text)
    assert cut.prompt_tokens == whole.prompt_tokens and cut.cached_tokens is not None  # every event says so
    b.close()


def test_text_mode_on_a_real_server_whole_and_streamed(llama):
    """Text mode (the mode of a server that returns no ids), spoken to llama-server's /v1/completions."""
    b = real_backend(llama, seed=5)
    ep = b.pool.endpoints[0]
    ep.dialect, ep.model = Text(), "smollm2"  # as if the probe had found no ids
    s = b.start("The capital of France is", key="text/student")
    [span] = b.generate([s], [12], [()])
    assert span.ids and span.ids == smollm2().encode(span.text, add_special_tokens=False)  # encoded again
    [cut] = b.generate([b.start("Once upon a time", key="text2/student")], [100], [()], watch=[after(4)])
    assert cut.finish == "cut" and 4 <= len(cut.ids) < 20
    b.close()


class Recorded(Recording):
    """tests/provenance.py's `Recording`, counting the requests that had a watch."""

    watched = 0

    def generate(self, sessions, max_new_tokens, stop, **watch):
        self.watched += sum(w is not None for w in watch.get("watch") or [])
        return super().generate(sessions, max_new_tokens, stop, **watch)

    def submit(self, session, max_new_tokens, stop, **watch):
        self.watched += watch.get("watch") is not None
        return super().submit(session, max_new_tokens, stop, **watch)


def served_config(url: str, **overrides):
    config = load_config(**{"max_think_tokens": 40, "max_answer_tokens": 12, "batch_size": 4, **overrides})
    for role, seed in ((STUDENT, 0), (TEACHER, 1)):  # one server serves both roles: SmolLM2 twice
        m, e = getattr(config, role).spec, getattr(config, role).endpoint
        m.model, m.backend, e.urls = "smollm2-135m-instruct", "openai", [url]
        m.seed, e.timeout_s, e.max_retries = seed, 60.0, 2
    return config


@pytest.mark.slow
def test_synth_through_a_real_server_gives_true_provenance(llama, tmp_path, monkeypatch):
    import tessy.engine.synth as synth
    from tessy.engine.synth import load_backends

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in LLAMA_PROMPTS[:3]))
    price = {"input": 1, "output": 4, "cached_input": 0}
    config = served_config(llama.url, teacher={"price_per_million_tokens": price})
    backends = load_backends(config)
    sessions = {}
    real_start = synth.start_sample

    def start(prompt, *args, **kw):
        x, steps = real_start(prompt, *args, **kw)
        sessions[x.id] = {role: p.session for role, p in x.parties.items()}
        return x, steps

    monkeypatch.setattr(synth, "start_sample", start)
    lines = []  # the progress line's live figures (tessy/engine/meter.py)
    monkeypatch.setattr(synth.Meter, "line", lambda self, line=synth.Meter.line: lines.append(line(self)) or lines[-1])
    recorded = {r: Recorded(b) for r, b in backends.items()}
    summary = synthesize(config, prompts, tmp_path / "out.jsonl", backends=recorded, progress=False)
    records = read_records(tmp_path / "out.jsonl")
    assert summary["samples"] == 3 and summary["errors"] == 0
    assert backends[STUDENT].pool.endpoints[0].mode == "native"  # llama-server: its own /completion
    for r in records:
        assert r["config_hash"] == config.hash()
        for role in (STUDENT, TEACHER):
            kept = "".join(s["text"] for s in r["segments"] if s["source"] == role)
            assert splits_into_prefixes(kept, sessions[r["id"]][role].sampled), (r["id"], role)
        assert r["segments"] and {s["source"] for s in r["segments"] if s["part"] == "answer"} <= {STUDENT}
    # the server really wrote the spans, and said how much of each prompt its cache held
    assert sum(len(s.sampled) for per in sessions.values() for s in per.values()) >= 6
    assert all(0 < summary["roles"][role]["prefix_cache_hit_rate"] <= 1 for role in (STUDENT, TEACHER)), summary
    assert all(0 < summary["roles"][role]["reusable_prompt_share"] < 1 for role in (STUDENT, TEACHER)), summary
    # As samples finish: kept tokens per second, generated per kept, the hit rates llama-server reported, money.
    assert len(lines) == 3 and all(" kept tok/s · " in line and "hit S " in line and "spent " in line
                                   for line in lines), lines
    # The teacher's bill: fresh prompt tokens at 1, cached ones free, generated ones at 4 per million.
    bill = summary["cost"]["roles"][TEACHER]
    assert bill["output_tokens"] == summary["roles"][TEACHER]["generated_tokens"]
    assert 0 < bill["cached_input_tokens"] < bill["input_tokens"]
    fresh = bill["input_tokens"] - bill["cached_input_tokens"]
    assert bill["cost"] == pytest.approx((fresh + 4 * bill["output_tokens"]) / 1e6)
    # the run streams its turns (tessy/engine/streaming.py): the lexicon promises final cuts, llama-server streams
    assert summary["stream_cuts"] == {STUDENT: True, TEACHER: True}
    assert all(recorded[role].watched > 0 for role in (STUDENT, TEACHER))


@pytest.mark.slow
def test_streamed_and_whole_turn_synth_runs_write_the_same_records_on_one_slot(llama1, tmp_path, monkeypatch):
    """One slot, the prompt cache off (a cached prefix is computed in other batch shapes than a fresh
    one, so its numbers may differ in the last bits): the engine is deterministic per request, and a
    synth whose turns stop at their final cut writes exactly the records of one whose turns run to k,
    while the server generates fewer tokens."""
    real_request = OpenAIBackend._request

    def no_cache(self, *args, **kw):
        url, body = real_request(self, *args, **kw)
        return url, {**body, "cache_prompt": False}

    monkeypatch.setattr(OpenAIBackend, "_request", no_cache)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in LLAMA_PROMPTS[:3]))
    runs = {}
    for streamed in (True, False):
        config = served_config(llama1.url, max_think_tokens=60, student={"stream_cuts": streamed},
                               teacher={"stream_cuts": streamed})
        summary = synthesize(config, prompts, tmp_path / f"{streamed}.jsonl", progress=False)
        assert summary["errors"] == 0 and summary["stream_cuts"] == {STUDENT: streamed, TEACHER: streamed}
        # Records are appended as samples finish, in whatever order they do: compare them by id.
        runs[streamed] = summary, sorted([(r["id"], r["segments"], r["answer"])
                                   for r in read_records(tmp_path / f"{streamed}.jsonl")])
    (on, records_on), (off, records_off) = runs[True], runs[False]
    assert records_on == records_off
    stopped = sum(r.get("stopped_at_cut", 0) for r in on["roles"].values())
    assert stopped > 0
    generated = {k: sum(r["generated_tokens"] for r in run["roles"].values()) for k, run in (("on", on), ("off", off))}
    assert generated["on"] < generated["off"]


def test_chat_client_and_timeouts_on_a_real_server(llama):
    chat = ChatClient([llama.url], max_tokens=8, backoff_s=0.05)
    [answer] = chat.complete([[{"role": "user", "content": "What is 2 + 2?"}]])
    assert isinstance(answer, str) and answer.strip()
    chat.close()
    # An answer slower than the timeout: 48 tokens cannot come back within 0.05 s.
    b = real_backend(llama, timeout_s=0.05, max_retries=1)
    [err] = b.generate([b.start("Count from one to one hundred:")], [48], [()])
    assert isinstance(err, SampleError) and err.attempts == 2 and "timed out" in str(err)
    b.close()
    llama.idle()  # let the server finish the abandoned requests before the next test


def test_a_server_killed_mid_stream_fails_the_requests_in_flight_after_their_retries(tmp_path):
    server = started(tmp_path / "server.log", parallel=4, ctx=4096)
    try:
        b = real_backend(server, max_retries=2, timeout_s=30)
        read = [0, 0, 0]

        def reading(i):
            def watch(span):
                read[i] = len(span.ids)
                return False

            return watch

        futures = [b.submit(b.start(f"List {i + 3} facts about rivers, one per line:", key=f"kill{i}/student"), 400,
                            (), watch=reading(i)) for i in range(3)]
        deadline = time.time() + 60
        while min(read) < 2 and time.time() < deadline:
            time.sleep(0.02)
        assert min(read) >= 2, read  # every request is streaming
        server.kill()
        errors = [f.result(timeout=60) for f in futures]
        assert all(isinstance(e, SampleError) for e in errors), errors
        assert all(e.attempts == 3 and e.endpoint == server.url for e in errors), [str(e) for e in errors]
        b.close()
    finally:
        server.kill()


@pytest.mark.slow
def test_server_killed_mid_run_then_retry_errors_completes_each_id_once(tmp_path):
    llama = started(tmp_path / "server.log", parallel=4, ctx=8192)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in LLAMA_PROMPTS))
    config = tmp_path / "config.yaml"
    config.write_text("max_think_tokens: 160\nmax_answer_tokens: 12\nbatch_size: 2\nin_flight: 2\n"
                      "student: {model: smollm2-135m-instruct, timeout_s: 30, max_retries: 2}\n"
                      "teacher: {model: smollm2-135m-instruct, seed: 1, timeout_s: 30, max_retries: 2}\n")
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "tessy.cli", "synth", "--config", str(config), "--prompts", str(prompts),
           "--out", str(out), "--student-url", llama.url, "--teacher-url", llama.url]
    try:
        run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 1) and run.poll() is None:
            time.sleep(0.05)
        served = llama.served()  # then let the samples that took the free places make a few requests
        while time.time() < deadline and llama.served() < served + 4 and run.poll() is None:
            time.sleep(0.05)
        llama.kill()  # mid-run: some samples written, the others in flight
        log, _ = run.communicate(timeout=300)
        assert run.returncode == 3, log  # the run goes on to its end, and says that ids failed
        done = [r["id"] for r in read_records(out)]
        errors = read_errors(errors_path_for(out))
        assert 1 <= len(done) < len(LLAMA_PROMPTS), log
        assert sorted(done + list(errors)) == sorted(p["id"] for p in LLAMA_PROMPTS)  # nothing lost
        assert all(e["attempts"] == 3 and e["endpoint"] == llama.url for e in errors.values()), errors
        # The samples in flight were mid-sample when it died; any admitted after it failed at round 0.
        assert any(e["rounds"] > 0 for e in errors.values()), errors

        llama.start()  # the server is back
        retry = subprocess.run(cmd + ["--retry-errors"], capture_output=True, text=True, timeout=600)
        assert retry.returncode == 0, retry.stdout + retry.stderr
        ids = [r["id"] for r in read_records(out)]
        assert sorted(ids) == sorted(p["id"] for p in LLAMA_PROMPTS)  # each id exactly once
        assert read_errors(errors_path_for(out)) == {}
    finally:
        llama.kill()
