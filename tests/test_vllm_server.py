"""tessy against real vLLM servers: the embedded student and teacher, each served by
`tessy serve ROLE --engine vllm` on 127.0.0.1 (vLLM's CPU build here, from .venv-vllm/; a GPU's `vllm`
where there is one), started once for this module and judged by vLLM's own `/metrics`.

The module runs first in a session (tests/conftest.py), while the cores are idle: a first start on a
machine compiles each model (minutes); later starts find vLLM's compile cache."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request

import pytest
from vllm_server import VLLMServer, find

from tessy.cli import main
from tessy.models import STUDENT_DEFAULT, TEACHER_DEFAULT

PYTHON, WHY = find()
pytestmark = [pytest.mark.slow, pytest.mark.vllm_server,
              pytest.mark.skipif(PYTHON is None, reason=f"no vLLM: {WHY}")]

# Contest-style prompts long enough that a batch of them does not fit one engine step: eight of about
# 900 tokens, sent together, take at least two steps of at most 4096 tokens to prefill (the seeded
# requests that crash vLLM's CPU backend when it splits a prompt over steps).
LONG = ("You are given an array of n integers and q queries. Each query gives l and r, and asks for the "
        "number of distinct values in the subarray from l to r. Constraints: n and q up to 200000. ")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    logs = tmp_path_factory.mktemp("vllm")
    made = {role: VLLMServer(role, logs / f"{role}.log") for role in ("student", "teacher")}
    try:
        for s in made.values():
            s.start()
        for s in made.values():
            s.wait()
        yield made
    finally:
        for s in made.values():
            s.stop()


def write_prompts(path, n: int, long: bool = False) -> None:
    with open(path, "w") as f:
        for i in range(n):
            text = (LONG * 20 if long else "") + f"Problem {i}: write a Python function that returns the sum of " \
                                                f"the first {i + 3} odd numbers."
            f.write(json.dumps({"id": f"p{i}", "prompt": text}) + "\n")


def synth(tmp_path, servers, name: str, *extra: str, method: str = "tessy", stream: bool = True,
          in_flight: int = 8, think: int = 96) -> tuple[int, dict]:
    """`tessy synth` through the two servers, as the README shows it; its exit code and summary."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"method: {method}\nmax_think_tokens: {think}\nmax_answer_tokens: 24\nin_flight: {in_flight}\n"
        + "".join(f"{role}:\n  model: {model}\n  backend: openai\n  temperature: 0.7\n  k: 20\n  max_retries: 2\n"
                  f"  timeout_s: 300\n  stream_cuts: {'true' if stream else 'false'}\n"
                  for role, model in (("student", STUDENT_DEFAULT), ("teacher", TEACHER_DEFAULT))))
    summary = tmp_path / f"{name}.summary.json"
    code = main(["synth", "--config", str(config), "--prompts", str(tmp_path / "prompts.jsonl"),
                 "--out", str(tmp_path / f"{name}.jsonl"), "--student-url", servers["student"].url,
                 "--teacher-url", servers["teacher"].url, "--summary-json", str(summary), *extra])
    return code, json.loads(summary.read_text()) if summary.exists() else {}


def records(path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, open(path))}


def counters(servers) -> dict[str, dict[str, float]]:
    return {role: s.metrics() for role, s in servers.items()}


def moved(before: dict, after: dict, name: str) -> float:
    return after.get(f"vllm:{name}", 0.0) - before.get(f"vllm:{name}", 0.0)


def hit_rate(before: dict, after: dict) -> float:
    """vLLM's own prefix-cache hit rate between two readings: cached prompt tokens over those looked up."""
    queries = moved(before, after, "prefix_cache_queries_total")
    assert queries > 0
    return moved(before, after, "prefix_cache_hits_total") / queries


def test_the_probe_picks_ids_and_the_ids_are_the_sample_s_own(servers):
    from tessy.backends import make_backend
    from tessy.config import role_config

    backend = make_backend(role_config(STUDENT_DEFAULT, backend="openai", urls=[servers["student"].url],
                                       temperature=0.0))
    try:
        session = backend.start("Question: write a function that adds two numbers.\n\nAnswer:", key="p0")
        prompt = list(session.ids)
        [span] = backend.generate([session], [12], [()])
        assert backend.pool.endpoints[0].mode == "ids"
        assert span.ids and session.ids == prompt + span.ids
        # The server saw exactly the session's ids, and sampled exactly the span's: the same request
        # again (greedy) echoes the prompt and writes the same ids.
        again = servers["student"].post("/completions", {
            "model": STUDENT_DEFAULT, "prompt": prompt, "max_tokens": 12, "temperature": 0.0,
            "return_token_ids": True, "skip_special_tokens": False})["choices"][0]
        assert again["prompt_token_ids"] == prompt and again["token_ids"][: len(span.ids)] == span.ids
    finally:
        backend.close()


def test_seeded_long_prompts_of_every_method_leave_the_engine_alive(servers, tmp_path):
    # Every request carries a seed; eight long prompts at once need several engine steps to prefill.
    write_prompts(tmp_path / "prompts.jsonl", 8, long=True)
    for method in ("teacher-only", "student-only", "tessy"):
        code, summary = synth(tmp_path, servers, method, method=method, think=40)
        assert code == 0 and summary["samples"] == 8 and summary["errors"] == 0, (method, summary)
    for s in servers.values():
        with urllib.request.urlopen(s.root + "/health", timeout=10) as r:
            assert r.status == 200
        assert "CPU Generator does not use offset" not in s.log()


def test_whole_turns_and_streamed_cuts_write_the_same_records(servers, tmp_path):
    # One request at a time on each server, so no batch changes the numerics; seeded sampling.
    write_prompts(tmp_path / "prompts.jsonl", 2)
    code_w, whole = synth(tmp_path, servers, "whole", stream=False, in_flight=1, think=64)
    code_s, streamed = synth(tmp_path, servers, "streamed", stream=True, in_flight=1, think=64)
    assert code_w == code_s == 0
    assert sum(r.get("stopped_at_cut", 0) for r in streamed["roles"].values()) > 0
    a, b = records(tmp_path / "whole.jsonl"), records(tmp_path / "streamed.jsonl")
    assert a.keys() == b.keys() == {"p0", "p1"}
    for i in a:
        assert a[i]["messages"] == b[i]["messages"] and a[i]["segments"] == b[i]["segments"], i


def test_tessy_s_cache_figures_and_token_counts_agree_with_vllm_s_counters(servers, tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 6)
    before = counters(servers)
    code, whole = synth(tmp_path, servers, "whole", stream=False)
    after = counters(servers)
    assert code == 0
    for role in ("student", "teacher"):
        mine, theirs = whole["roles"][role], hit_rate(before[role], after[role])
        # Every answer of a whole turn reports its cached tokens: tessy's figure is vLLM's, up to the
        # probe's few tokens.
        assert abs(mine["prefix_cache_hit_rate"] - theirs) <= 0.02, (role, mine, theirs)
        assert mine["server"]["prefix_cache_hit_rate"] == pytest.approx(theirs, abs=0.01)
        # vLLM caches whole blocks of what it has seen: at most the share of the prompts it had just seen in
        # the same sample, up to a little matched across samples.
        assert theirs <= mine["reusable_prompt_share"] + 0.02, (role, mine, theirs)
        # vLLM also counts the EOS tokens that end answers (never part of a span) and the probe's token.
        generated = moved(before[role], after[role], "generation_tokens_total")
        assert mine["generated_tokens"] <= generated <= 1.02 * mine["generated_tokens"] + 2, (role, mine, generated)

    # Streamed cuts: a closed stream aborts the sequence on the server, so vLLM generates about what
    # tessy received, not k tokens per request.
    before = counters(servers)
    code, streamed = synth(tmp_path, servers, "streamed", stream=True)
    after = counters(servers)
    assert code == 0
    for role in ("student", "teacher"):
        mine = streamed["roles"][role]
        generated = moved(before[role], after[role], "generation_tokens_total")
        # A sequence aborted at a cut may have generated a token or two that never arrived.
        assert mine["generated_tokens"] <= generated <= 1.02 * mine["generated_tokens"] + 2 \
            + 2 * mine.get("stopped_at_cut", 0), (role, mine, generated)
        if mine.get("stopped_at_cut"):
            assert generated < 20 * mine["requests"] - 10 * mine["stopped_at_cut"]
        # Streams closed at a cut never read the answer's last usage, where vLLM puts the cached tokens:
        # the summary gives the server's own figure beside tessy's.
        assert mine["server"]["prefix_cache_hit_rate"] == pytest.approx(hit_rate(before[role], after[role]), abs=0.01)


def test_a_killed_server_ends_as_error_records_and_retry_errors_finishes_them(servers, tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 6)
    teacher = servers["teacher"]
    stopper = threading.Thread(target=lambda: (time.sleep(20), teacher.signal(signal.SIGKILL)))
    stopper.start()
    code, first = synth(tmp_path, servers, "run", in_flight=6, think=160)
    stopper.join()
    teacher.proc.wait(timeout=30)
    # tessy serve was killed outright: its vLLM server went with it.
    with pytest.raises(OSError):
        urllib.request.urlopen(teacher.root + "/health", timeout=5)
    assert code == 3 and first["errors_left"] > 0, first
    errors = [json.loads(x)["id"] for x in open(tmp_path / "run.errors.jsonl")]
    restarted = VLLMServer("teacher", teacher.log_path, port=teacher.port).start().wait()
    servers["teacher"] = restarted
    code, second = synth(tmp_path, servers, "run", "--retry-errors", in_flight=6, think=160)
    assert code == 0 and second["errors_left"] == 0
    ids = [json.loads(x)["id"] for x in open(tmp_path / "run.jsonl")]
    assert sorted(ids) == [f"p{i}" for i in range(6)] and set(errors) <= set(ids)


def test_serve_stops_on_sigterm_and_on_ctrl_c(servers):
    for role, sig in (("teacher", signal.SIGTERM), ("student", signal.SIGINT)):
        s = servers[role]
        s.signal(sig)
        assert s.proc.wait(timeout=90) == 0
        assert "stopped" in s.log().splitlines()[-1]
        with pytest.raises(OSError):
            urllib.request.urlopen(s.root + "/health", timeout=5)
