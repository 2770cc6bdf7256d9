"""Who waits for whom (tessy/engine/scheduler.py): the event driver for servers, the tick driver for
in-process engines, and the request counts where no predictor acts.

Scripted models pin the control flow; the fake server (tests/fake_server.py) shows that student and
teacher requests really overlap over HTTP. The real llama.cpp server runs in test_openai_backend.py.
"""

from __future__ import annotations

import json

import pytest
from scripted import EOS, CharTokenizer, ScriptedBackend, loop_settings, run_scripted

from tessy.backends import SampleError, Sampling, Span
from tessy.backends.openai import EndpointPool, OpenAIBackend
from tessy.config import load_config
from tessy.engine.methods import solo_sample
from tessy.engine.records import read_records
from tessy.engine.scheduler import Scheduler
from tessy.engine.synth import synthesize
from tessy.engine.transcript import Party, Transcript
from tessy.predictors.lexicon import LexiconPredictor
from tessy.profiles import PLAIN
from tessy.roles import STUDENT, TEACHER

ANSWER = ["The answer.", EOS]


def plain(records):
    return [[(s["source"], s["part"], s["text"]) for s in x.segments] for x in records]


# --- the two drivers run the same algorithm -------------------------------------------------------------
@pytest.mark.parametrize("student, teacher", [
    (["Okay, so x", "Wait, let me check x", "</think>", *ANSWER], ["x = 3. Wait, no", "y = 5 ", "</think>"]),
    (["compute", *ANSWER], [f"v{i} = {i}; " for i in range(40)]),
    (["Okay so </think>", *ANSWER], ["x = 1 "]),
])
def test_events_and_ticks_give_the_same_samples(student, teacher):
    by_ticks, _, _ = run_scripted(student, teacher, n_samples=3, same_vocab=True, driver="ticks", max_think_tokens=80)
    by_events, _, _ = run_scripted(student, teacher, n_samples=3, same_vocab=True, driver="events", max_think_tokens=80)
    key = lambda x: x.id  # noqa: E731 - the drivers finish samples in different orders
    assert plain(sorted(by_ticks, key=key)) == plain(sorted(by_events, key=key))
    assert [x.stop_reason for x in sorted(by_ticks, key=key)] == [x.stop_reason for x in sorted(by_events, key=key)]


def test_auto_picks_events_for_servers_and_ticks_otherwise():
    lexicon = {STUDENT: LexiconPredictor(), TEACHER: LexiconPredictor()}
    local = {STUDENT: ScriptedBackend([]), TEACHER: ScriptedBackend([])}
    served = {STUDENT: ScriptedBackend([], concurrent=True), TEACHER: ScriptedBackend([], concurrent=True)}
    assert Scheduler(local, lexicon).driver_name() == "ticks"
    assert Scheduler(served, lexicon).driver_name() == "events"
    assert Scheduler({**served, TEACHER: local[TEACHER]}, lexicon).driver_name() == "ticks"
    assert Scheduler(served, lexicon, driver="ticks").driver_name() == "ticks"


# --- fewer requests where no predictor acts -------------------------------------------------------------
def teacher_only(x, s):
    return solo_sample(x, s, TEACHER, TEACHER)


def solo_run(method, student_script, teacher_script, driver, **settings):
    student, teacher = ScriptedBackend(student_script, "a"), ScriptedBackend(teacher_script, "b")
    s = loop_settings(**settings)
    done = []

    def start():
        parties = {STUDENT: Party(student, PLAIN, student.start("q")),
                   TEACHER: Party(teacher, PLAIN, teacher.start("q"))}
        x = Transcript("s0", [{"role": "user", "content": "q"}], parties)
        return x, method(x, s)

    lexicon = LexiconPredictor()
    Scheduler({STUDENT: student, TEACHER: teacher}, {STUDENT: lexicon, TEACHER: lexicon}, driver=driver,
              chunk_tokens=s.longest_turn()).run([start], done.append)
    return done[0], student, teacher


def test_teacher_only_is_one_request_per_thinking_span_plus_one_for_the_answer():
    thinking = "x = 1 + 2 = 3, then y = x * 4 = 12, and z = y - 5 = 7; check: 7 + 5 = 12. </think>"
    x, student, teacher = solo_run(teacher_only, [], [thinking, "The answer is 7.", EOS], "events",
                                   max_think_tokens=1000, max_answer_tokens=300)
    assert teacher.requests == [1000, 300] and student.requests == []
    assert (x.stop_reason == "teacher_closed" and x.text("think").startswith("x = 1 + 2")
            and x.text("answer") == "The answer is 7.")


@pytest.mark.parametrize("driver", ["events", "ticks"])
def test_the_reusable_share_counts_what_the_engine_saw_of_the_session(driver):
    # Teacher-Only, one character per token. Sample a's first request "q" has nothing seen before it.
    # Its second, "qx = 1 + 2 = 3. \n</think>\n\n" (27 tokens: the loop writes the close its own way),
    # shares "qx = 1 + 2 = 3. " (16) with "q" plus the reply "x = 1 + 2 = 3. </think>". Sample b's first
    # request "qr" shares "q" with a's first request, the last opening the teacher was sent; its second
    # (28 tokens) shares 17 with "qr" and its reply.
    student, teacher = ScriptedBackend([], "a"), ScriptedBackend(["x = 1 + 2 = 3. </think>", "Three.", EOS], "b")
    s = loop_settings(max_think_tokens=1000, max_answer_tokens=300)

    def start(i, prompt):
        parties = {STUDENT: Party(student, PLAIN, student.start(prompt)),
                   TEACHER: Party(teacher, PLAIN, teacher.start(prompt))}
        x = Transcript(i, [{"role": "user", "content": prompt}], parties)
        return x, teacher_only(x, s)

    lexicon = LexiconPredictor()
    scheduler = Scheduler({STUDENT: student, TEACHER: teacher}, {STUDENT: lexicon, TEACHER: lexicon}, driver=driver,
                          max_in_flight=1, chunk_tokens=1000)
    scheduler.run([lambda: start("a", "q"), lambda: start("b", "qr")], lambda x: None)
    stats = scheduler.timing.roles[TEACHER]
    assert stats.sent_prompt_tokens == 1 + 27 + 2 + 28 and stats.reusable_tokens == 0 + 16 + 1 + 17
    assert stats.summary(1.0)["reusable_prompt_share"] == round(34 / 58, 3)
    assert "reusable_prompt_share" not in scheduler.timing.roles[STUDENT].summary(1.0)


def test_repetition_in_one_long_span_is_trimmed_at_the_first_k_token_point():
    looping = "The sum is 3. " + "abc = 1;\n" * 200
    x, _, teacher = solo_run(teacher_only, [], [looping, "Done.", EOS], "events", max_think_tokens=5000)
    assert teacher.requests[0] == 5000 and len(teacher.requests) == 2
    assert x.stop_reason == "repetition"
    kept = x.text("think")
    # trimmed on a k-token point
    assert kept.startswith("The sum is 3. abc") and len(kept) % 20 == 0 and len(kept) < 120
    assert x.tokens("think") == len(kept)  # one character per token: what was not kept was rolled back


def test_ticks_serve_a_long_request_in_chunks_and_join_them():
    # The answer's one request (up to 300 tokens) is served 20 tokens a tick.
    x, student, _ = solo_run(teacher_only, [], ["x = 1 </think>", "A" * 20, "B" * 20, "end.", EOS], "ticks",
                             max_answer_tokens=300)
    assert x.text("answer") == "A" * 20 + "B" * 20 + "end."


def test_ticks_find_a_stop_string_split_between_chunks():
    # "</think>" starts in one chunk and ends in the next: the joined span stops after it, and the
    # text after it is rolled back from the session.
    x, _, teacher = solo_run(teacher_only, [], ["x = 1 + 2 = 3 ok </t", "hink> junk", "Answer.", EOS], "ticks",
                             max_think_tokens=200)
    assert x.stop_reason == "teacher_closed" and x.text("think") == "x = 1 + 2 = 3 ok "
    assert "junk" not in CharTokenizer("b").decode(x.parties[TEACHER].session.ids)


# --- over HTTP: both roles in flight together ---------------------------------------------------------------
def served(srv, vocab, seed=0):
    pool = EndpointPool([srv.url], None, timeout_s=10.0, max_retries=1, concurrency=16, backoff_s=0.01)
    return OpenAIBackend(CharTokenizer(vocab), pool, Sampling(temperature=0.6, top_p=1.0, seed=seed), model="char",
                         eos_ids={0})


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return path


@pytest.mark.parametrize("driver", ["events", "ticks"])
def test_student_and_teacher_requests_overlap_only_with_the_event_driver(servers, tmp_path, driver):
    # The student server holds the first final-answer request (its prompt holds the think-close
    # marker) until the teacher server receives a request. Sample "FAST" answers first while "SLOW"
    # (whose teacher requests take 0.2 s) still thinks: with events, SLOW's next teacher request
    # arrives while the answer is held. In lock-step, no teacher request is sent until every
    # student request of the tick has returned, so the hold times out.
    student_srv, teacher_srv = servers(ids=True), servers(ids=True)
    teacher_srv.slow_if, teacher_srv.slow_if_s = "SLOW", 0.2
    holds = []
    student_srv.hold_if = lambda prompt: "</think>" in prompt and not holds and not holds.append(prompt)
    student_srv.hold_s = 2.0
    teacher_srv.on_request = student_srv.release.set
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": "FAST"}, {"id": "b", "prompt": "SLOW"}])
    config = load_config(k=4, max_think_tokens=40, max_answer_tokens=6, in_flight=2, driver=driver)
    backends = {STUDENT: served(student_srv, "a"), TEACHER: served(teacher_srv, "b", seed=1)}
    summary = synthesize(config, prompts, tmp_path / "out.jsonl", backends=backends, progress=False)
    assert summary["samples"] == 2 and summary["driver"] == driver
    assert student_srv.held == (["released"] if driver == "events" else ["timed out"])
    # Each role's own figures: requests, mean requests in flight, the prefix-cache hit rate it reported.
    for role in (STUDENT, TEACHER):
        figures = summary["roles"][role]
        assert figures["requests"] == len((student_srv if role == STUDENT else teacher_srv).completions())
        assert figures["mean_in_flight"] > 0 and 0.3 < figures["prefix_cache_hit_rate"] <= 0.5
        assert figures["prompt_tokens_computed_per_request"] > 0


def test_a_finished_sample_is_replaced_at_once(servers, tmp_path):
    # One slow sample does not hold up the queue: with 2 places, the 4 fast samples pass it.
    student_srv, teacher_srv = servers(ids=True), servers(ids=True)
    teacher_srv.slow_if, teacher_srv.slow_if_s = "SLOW", 0.15
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "slow", "prompt": "SLOW"}] +
                            [{"id": f"f{i}", "prompt": f"fast {i}"} for i in range(4)])
    config = load_config(k=4, max_think_tokens=24, max_answer_tokens=4, in_flight=2, driver="events")
    backends = {STUDENT: served(student_srv, "a"), TEACHER: served(teacher_srv, "b", seed=1)}
    synthesize(config, prompts, tmp_path / "out.jsonl", backends=backends, progress=False)
    order = [r["id"] for r in read_records(tmp_path / "out.jsonl")]
    assert order[-1] == "slow" and sorted(order[:-1]) == ["f0", "f1", "f2", "f3"]


def test_an_unknown_driver_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    import tessy.engine.synth as synth

    monkeypatch.setattr(synth, "load_backends", lambda config: pytest.fail("loaded the models"))
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": "q"}])
    with pytest.raises(ValueError, match="driver is 'fast': choose one of auto, events, ticks"):
        synthesize(load_config(driver="fast"), prompts, tmp_path / "out.jsonl", progress=False)


# --- warm-ups: the teacher's prompt computed while the student writes its first turn -------------------------
def warmed_run(warm_result, student_script, teacher_script, warm_roles=(STUDENT, TEACHER)):
    """Two scripted samples under the event driver, the teacher's backend warming prompts through a
    future that ends 0.1 s later with `warm_result`; returns (transcripts, the order of events, each
    role's figures)."""
    import threading
    from concurrent.futures import Future

    from tessy.engine.loop import tessy_sample

    events = []
    student, teacher = ScriptedBackend(student_script, "a"), ScriptedBackend(teacher_script, "b")
    submit = teacher.submit

    def logged_submit(session, n, stop, **kw):
        events.append(("request", teacher.tokenizer.decode(session.ids[:2])))
        return submit(session, n, stop, **kw)

    def warm(session):
        future, key = Future(), teacher.tokenizer.decode(session.ids[:2])
        events.append(("warm sent", key))

        def end():
            events.append(("warm ended", key))
            future.set_result(warm_result)
        threading.Timer(0.1, end).start()
        return future

    teacher.submit, teacher.warm = logged_submit, warm
    s = loop_settings(False, max_think_tokens=60)
    lexicon = LexiconPredictor()
    done = []

    def start(i):
        parties = {STUDENT: Party(student, PLAIN, student.start(f"q{i}")),
                   TEACHER: Party(teacher, PLAIN, teacher.start(f"q{i}"))}
        x = Transcript(f"s{i}", [{"role": "user", "content": f"q{i}"}], parties)
        return x, tessy_sample(x, s)

    scheduler = Scheduler({STUDENT: student, TEACHER: teacher}, {STUDENT: lexicon, TEACHER: lexicon},
                          max_in_flight=2, driver="events", warm_roles=warm_roles)
    scheduler.run((lambda i=i: start(i) for i in range(2)), done.append)
    return done, events, scheduler.timing.roles


@pytest.mark.parametrize("warm_result", [Span(ids=[5], text="x", offsets=[0], finish="length"),
                                         SampleError("the server is down")])
def test_a_samples_first_teacher_request_waits_for_its_warm_up(warm_result):
    student = ["Okay, so x", "Wait, let me check x", "</think>", *ANSWER]
    teacher = ["x = 3. Wait, no", "y = 5 ", "</think>"]
    warmed, events, roles = warmed_run(warm_result, list(student), list(teacher))
    plain_run, _, _ = run_scripted(list(student), list(teacher), n_samples=2, driver="events", max_think_tokens=60)
    # What the samples say does not depend on the warm-up, nor on whether it worked.
    key = lambda x: x.id  # noqa: E731
    assert plain(sorted(warmed, key=key)) == plain(sorted(plain_run, key=key))
    # One warm-up per sample, sent at its admission; its first teacher request only after it ended.
    for sample in ("q0", "q1"):
        mine = [e for e, k in events if k == sample]
        assert mine.count("warm sent") == 1 and mine.index("warm ended") < mine.index("request")
    assert roles[TEACHER].warm_ups == 2 and roles[STUDENT].warm_ups == 0
    assert roles[TEACHER].requests == 2 + sum(1 for e, _ in events if e == "request")  # warm-ups count as requests


def test_no_warm_up_without_warm_roles_nor_for_the_role_that_goes_first():
    student = ["Okay, so x", "</think>", *ANSWER]
    teacher = ["x = 3 ", "</think>"]
    _, events, roles = warmed_run(Span(ids=[5], text="x", offsets=[0], finish="length"), student, teacher,
                                  warm_roles=())
    assert not [e for e, _ in events if e.startswith("warm")] and roles[TEACHER].warm_ups == 0
    assert ("request", "q0") in events  # the teacher had turns to warm up for
    _, events, roles = warmed_run(Span(ids=[5], text="x", offsets=[0], finish="length"), list(student),
                                  list(teacher), warm_roles=(STUDENT,))
    assert roles[STUDENT].warm_ups == 0 and roles[TEACHER].warm_ups == 0  # the student goes first
