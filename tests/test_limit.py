"""Throttling: the adaptive limit per endpoint (tessy/backends/limit.py), `Retry-After`, and the
openai backend against a server that refuses what it cannot take.

The limit and the header are tested alone; the backend's answers to 429 and 503 on the fake server
(tests/fake_server.py); and, as a hosted API would do it, a proxy that answers 429 beyond 2 requests
in flight (tests/rate_limited_proxy.py) in front of a real `llama-server` (tests/llama_server.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from llama_server import started
from rate_limited_proxy import RateLimitedProxy
from rich.console import Console
from scripted import CharTokenizer

from tessy.backends import SampleError, Sampling, Span
from tessy.backends.limit import AdaptiveLimit, retry_after
from tessy.backends.openai import EndpointPool, OpenAIBackend, _failure


# --- the limit -----------------------------------------------------------------------------------------
def test_a_refusal_halves_the_limit_and_successes_bring_it_back_one_by_one():
    limit = AdaptiveLimit(8, climb_after=3)
    assert limit.throttled(limit.epoch) and limit.limit == 4
    assert limit.throttled(limit.epoch) and limit.limit == 2
    for _ in range(2):
        limit.succeeded()
    assert limit.limit == 2  # not yet: a run of 3
    limit.succeeded()
    assert limit.limit == 3
    for _ in range(3 * 10):
        limit.succeeded()
    assert limit.limit == 8 and limit.lowest == 2  # never above the configured concurrency


def test_the_limit_never_goes_below_one():
    limit = AdaptiveLimit(3)
    for _ in range(5):
        limit.throttled(limit.epoch)
    assert limit.limit == limit.lowest == 1


def test_a_refusal_in_between_resets_the_run_of_successes():
    limit = AdaptiveLimit(4, climb_after=2)
    limit.throttled(limit.epoch)
    limit.succeeded()
    limit.throttled(limit.epoch - 1)  # an old request's refusal: no shrink, but no run either
    limit.succeeded()
    assert limit.limit == 2


def test_a_burst_of_refusals_halves_the_limit_once():
    # 8 requests entered together; the server refuses 6 of them: one shrink, to 4, not down to 1.
    limit = AdaptiveLimit(8)
    epoch = limit.epoch
    assert [limit.throttled(epoch) for _ in range(6)] == [True] + [False] * 5
    assert limit.limit == 4
    assert limit.throttled(limit.epoch) and limit.limit == 2  # a request that entered after the shrink


@pytest.mark.parametrize("ceiling", [0, -1])
def test_a_limit_needs_at_least_one_place(ceiling):
    with pytest.raises(ValueError, match="at least 1"):
        AdaptiveLimit(ceiling)


def test_a_shrink_lets_the_requests_in_flight_finish_and_holds_back_new_ones():
    async def scenario():
        limit = AdaptiveLimit(4)
        release = asyncio.Event()
        finished, peak = [], [0]

        async def request(i: int):
            async with limit:
                peak[0] = max(peak[0], limit.in_flight)
                await release.wait()
                finished.append(i)

        first = [asyncio.create_task(request(i)) for i in range(4)]
        await asyncio.sleep(0.01)
        assert limit.in_flight == 4
        limit.throttled(limit.epoch)
        limit.throttled(limit.epoch)  # down to 1 while 4 are in flight
        later = [asyncio.create_task(request(i)) for i in range(4, 7)]
        await asyncio.sleep(0.01)
        assert limit.in_flight == 4 and not finished  # none cancelled, none of the later ones let in
        release.set()
        await asyncio.gather(*first, *later)
        return limit, finished, peak[0]

    limit, finished, peak = asyncio.run(scenario())
    assert sorted(finished) == list(range(7)) and limit.in_flight == 0 and peak == 4


def test_places_freed_by_a_climb_are_all_taken():
    async def scenario():
        limit = AdaptiveLimit(3, climb_after=1)
        limit.throttled(limit.epoch)  # 3 -> 1
        inside, gate = [], asyncio.Event()

        async def request(i):
            async with limit:
                inside.append(i)
                if i == 0:
                    limit.succeeded()  # 1 -> 2
                    limit.succeeded()  # 2 -> 3
                    return
                await gate.wait()

        tasks = [asyncio.create_task(request(i)) for i in range(4)]
        await asyncio.sleep(0.01)
        in_flight = limit.in_flight  # request 0 left with the limit at 3: all three waiters entered
        gate.set()
        await asyncio.gather(*tasks)
        return in_flight, limit.limit

    assert asyncio.run(scenario()) == (3, 3)


# --- Retry-After -----------------------------------------------------------------------------------------
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("header,seconds", [
    ("1", 1.0), (" 120 ", 120.0), ("0", 0.0), ("2.5", 2.5),
    (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),  # an HTTP date
    ("Tue, 01 Dec 2026 12:00:30 -0000", 30.0),  # no zone said: UTC
    (format_datetime(NOW - timedelta(seconds=30), usegmt=True), 0.0),  # passed already
])
def test_retry_after_reads_seconds_and_http_dates(header, seconds):
    assert retry_after(header, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "nan", "inf", "1e999", "Tue, 99 Foo 2026"])
def test_retry_after_that_says_nothing_usable_is_none(header):
    assert retry_after(header, now=NOW) is None


def test_a_refusal_carries_its_retry_after_and_says_whether_it_throttles():
    headers = {"Retry-After": "3"}
    assert (_failure(429, b"", headers).retry_after, _failure(429, b"", headers).throttled) == (3.0, True)
    assert (_failure(503, b"", headers).retry_after, _failure(503, b"", headers).throttled) == (3.0, True)
    assert _failure(429, b"").throttled and _failure(429, b"").retry_after is None
    assert not _failure(503, b"").throttled  # a failing server, not an overloaded one
    assert _failure(500, b"", headers).retry_after is None and not _failure(500, b"", headers).throttled


# --- the backend on the fake server --------------------------------------------------------------------
def backend_on(srv, concurrency=8, max_retries=3, backoff_s=0.01, timeout_s=5.0) -> OpenAIBackend:
    pool = EndpointPool([srv.url], None, timeout_s, max_retries, concurrency, backoff_s=backoff_s)
    return OpenAIBackend(CharTokenizer("a"), pool, Sampling(temperature=0.6, top_p=1.0, seed=0), model="char",
                         eos_ids={0})


@pytest.mark.parametrize("status", ["429", "503"])
def test_a_refusal_with_retry_after_waits_as_told_and_halves_the_limit(servers, status):
    srv = servers()
    srv.faults.extend([status, "ok"])
    srv.retry_after = "0.4"
    b = backend_on(srv)
    t0 = time.perf_counter()
    [span] = b.generate([b.start("Q")], [4], [()])
    assert isinstance(span, Span) and time.perf_counter() - t0 >= 0.4  # not the 0.01 s backoff
    assert b.throttling() == {"throttled": 1, "retry_after_wait_s": 0.4, "concurrency": 8, "lowest_limit": 4,
                              "endpoints": {srv.url: {"limit": 4, "lowest_limit": 4}}}
    b.close()


def test_a_retry_after_longer_than_the_timeout_waits_the_timeout(servers):
    srv = servers()
    srv.faults.extend(["429", "ok"])
    srv.retry_after = "3600"
    b = backend_on(srv, timeout_s=0.3)
    t0 = time.perf_counter()
    [span] = b.generate([b.start("Q")], [4], [()])
    assert isinstance(span, Span) and 0.3 <= time.perf_counter() - t0 < 2
    assert b.throttling()["retry_after_wait_s"] == 0.3
    b.close()


def test_a_503_without_retry_after_backs_off_as_any_failure(servers):
    srv = servers()
    srv.faults.extend(["503", "ok"])
    b = backend_on(srv, backoff_s=0.01)
    t0 = time.perf_counter()
    [span] = b.generate([b.start("Q")], [4], [()])
    assert isinstance(span, Span) and time.perf_counter() - t0 < 0.3
    assert b.throttling()["throttled"] == 0 and b.throttling()["lowest_limit"] == 8
    b.close()


def test_a_429_that_outlasts_the_retries_is_a_sample_error(servers):
    srv = servers()
    srv.always, srv.retry_after = "429", "0"
    b = backend_on(srv, max_retries=2)
    [err] = b.generate([b.start("Q")], [4], [()])
    assert isinstance(err, SampleError) and err.attempts == 3 and "HTTP 429" in str(err)
    assert b.throttling()["throttled"] == 3
    b.close()


def test_a_refused_mode_probe_decides_nothing(servers):
    # llama-server's probe: /v1/completions answers text, /completion answers ids. A 429 to both is
    # "not now", not "no such route" (which would leave text mode): the next try probes again.
    srv = servers(native=True)
    srv.refuse_next, srv.retry_after = 2, "0"
    b = backend_on(srv)
    [span] = b.generate([b.start("Q")], [4], [()])
    assert isinstance(span, Span) and b.pool.endpoints[0].mode == "native"
    assert b.throttling()["throttled"] == 2
    b.close()


def test_a_server_that_takes_two_at_a_time_gets_about_two(servers):
    # 8 places against a server that refuses beyond 2 in flight: the first burst is refused down to 2,
    # the limit halves (8 -> 4 -> 2), and every request is answered after its Retry-After.
    srv = servers(delay_s=0.1)
    srv.refuse_above, srv.retry_after = 2, "0.2"
    b = backend_on(srv, concurrency=8)
    spans = b.generate([b.start(f"Q{i}", key=f"p{i}/student") for i in range(16)], [3] * 16, [()] * 16)
    assert all(isinstance(s, Span) for s in spans), spans
    seen = b.throttling()
    assert seen["throttled"] == srv.refused >= 3 and seen["lowest_limit"] <= 2
    assert seen["retry_after_wait_s"] == pytest.approx(0.2 * srv.refused)
    b.close()


# --- a real server behind a proxy that limits its rate -------------------------------------------------------
@pytest.fixture(scope="module")
def llama2(tmp_path_factory):
    """llama-server with 2 slots."""
    server = started(tmp_path_factory.mktemp("llama") / "server.log", parallel=2, ctx=2048)
    yield server
    server.stop()


@pytest.fixture
def proxied(llama2):
    """llama-server behind a proxy that refuses a third request in flight (429, Retry-After: 1)."""
    proxy = RateLimitedProxy(llama2.root, max_in_flight=2, retry_after="1")
    yield proxy
    proxy.close()


@pytest.mark.slow
def test_concurrency_8_against_a_server_that_takes_2(proxied):
    from tessy.backends.openai import eos_ids_of, load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    pool = EndpointPool([proxied.url], None, timeout_s=60.0, max_retries=3, concurrency=8)
    b = OpenAIBackend(tokenizer, pool, Sampling(0.8, 1.0, 0), "smollm2-135m-instruct", eos_ids_of(tokenizer))
    n = 64
    sessions = [b.start(f"Name a color. {i}:", key=f"c{i}/student") for i in range(n)]
    spans = b.generate(sessions, [3] * n, [()] * n)
    assert all(isinstance(s, Span) and s.ids for s in spans), [str(s) for s in spans if not isinstance(s, Span)]

    seen = b.throttling()
    assert proxied.most_in_flight <= 2 and proxied.refused >= 3  # the first burst met the limit
    assert seen["throttled"] == proxied.refused and seen["lowest_limit"] <= 2
    # Every refused request was tried again, no sooner than its Retry-After said.
    waits = proxied.retry_waits()
    assert len(waits) == proxied.refused and min(waits) >= 1.0 - 0.01, waits
    assert seen["retry_after_wait_s"] == pytest.approx(1.0 * proxied.refused)
    # Without adaptation, 8 in flight against 2 would see 6 of every 8 tries refused, 3 refusals for
    # every request let through; the limit learns the server's 2 from the first bursts and then
    # tries one more only now and then (about 12 refusals for 67 let through here).
    assert proxied.refused < proxied.passed / 3, (proxied.refused, proxied.passed)
    b.close()


@pytest.mark.slow
def test_a_synth_run_through_a_server_that_takes_2_writes_every_record(proxied, tmp_path):
    from tessy.config import load_config
    from tessy.engine.records import read_records
    from tessy.engine.synth import synthesize
    from tessy.roles import STUDENT, TEACHER

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Add {i} and {i + 2}, briefly."}) + "\n"
                               for i in range(4)))
    config = load_config(max_think_tokens=24, max_answer_tokens=8, batch_size=4)
    for role, seed in ((STUDENT, 0), (TEACHER, 1)):  # SmolLM2 twice, both roles on the one proxy
        m, e = getattr(config, role).spec, getattr(config, role).endpoint
        m.model, m.backend, e.urls, m.seed, e.timeout_s, e.concurrency = \
            "smollm2-135m-instruct", "openai", [proxied.url], seed, 60.0, 8
        # Each role's pool adapts on its own, so the two together may still ask the proxy's 2 places for
        # 3 or 4 at times, and a request can lose the race several times in a row: each refusal uses up
        # a retry, so a rate-limited endpoint wants more of them than the default 3.
        e.max_retries = 12
    printed = io.StringIO()
    summary = synthesize(config, prompts, tmp_path / "out.jsonl", progress=False,
                         console=Console(file=printed, width=300))
    assert summary["errors"] == 0 and len(read_records(tmp_path / "out.jsonl")) == 4, summary
    figures = [summary["roles"][role]["throttling"] for role in (STUDENT, TEACHER)]
    assert sum(f["throttled"] for f in figures) == proxied.refused > 0 and proxied.most_in_flight <= 2
    assert min(f["lowest_limit"] for f in figures) <= 2 and all(f["concurrency"] == 8 for f in figures)
    assert min(proxied.retry_waits()) >= 1.0 - 0.01
    throttled = [line for line in printed.getvalue().splitlines() if " throttled " in line]
    assert throttled and all("429/503 answers, waited" in line and "of 8" in line for line in throttled), throttled
