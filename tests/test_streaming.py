"""Cuts made while a span streams (tessy/engine/streaming.py): a request stopped at its final cut keeps
exactly what the whole turn keeps, and generates fewer tokens."""

from __future__ import annotations

import json
import random

import pytest
from scripted import EOS, CharTokenizer, ScriptedBackend

from tessy.backends import span_from_ids
from tessy.config import load_config
from tessy.engine.loop import first_word_tokens, kept_tokens
from tessy.engine.records import read_records
from tessy.engine.streaming import CutWatch, settled
from tessy.engine.synth import synthesize
from tessy.predictors.lexicon import LexiconPredictor
from tessy.roles import STUDENT, TEACHER

TOKENIZER = CharTokenizer("a")
STYLE_WORDS = ["Okay", "okay,", "so", "So", "let", "let's", "see", "me", "think", "wait", "Wait,", "hmm", "well",
               "I", "i", "not", "sure", "first", "then", "now", "but", "if"]
CAPABILITY_WORDS = ["x", "=", "2", "+", "3;", "sum", "solve", "sort", "sol", "the", "list", "seen", "thinking",
                    "def", "f(x):", "return", "so_far", "5.", "then2", "butter"]


def random_text(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(STYLE_WORDS if rng.random() < 0.5 else CAPABILITY_WORDS) for _ in range(n_words)]
    return "".join(w + rng.choice([" ", " ", " ", "\n", ", ", "  "]) for w in words)


def span(text: str, finish: str = "length"):
    return span_from_ids(TOKENIZER, TOKENIZER.encode(text), finish)


@pytest.mark.parametrize("role", [STUDENT, TEACHER])
def test_a_cut_read_as_final_on_a_prefix_is_the_whole_turns_cut(role):
    """For every prefix of many random spans: where the watch calls the cut final, the predictor, the
    handover and the no-progress rule give on that prefix exactly what they give on the whole span."""
    lexicon = LexiconPredictor()
    rng = random.Random(7)
    finals = 0
    for _ in range(300):
        whole = random_text(rng, rng.randint(1, 12))
        full = span(whole)
        [b_full] = lexicon.cuts([whole], [""], role)
        for n in range(1, len(whole)):
            watch = CutWatch(lexicon, role, "", "</think>")
            prefix = span(whole[:n])
            if not watch(prefix):
                continue
            finals += 1
            [b] = lexicon.cuts([prefix.text], [""], role)
            assert b == b_full, (whole, n)
            for handover in ("drop-partial-word", "complete-word"):
                for same_vocab in (True, False):
                    assert kept_tokens(prefix, b, handover, same_vocab, len(prefix.text)) == \
                        kept_tokens(full, b_full, handover, same_vocab, len(full.text)), (whole, n, handover)
            assert first_word_tokens(prefix, len(prefix.text)) == first_word_tokens(full, len(full.text))
    assert finals > 300  # the rule does call cuts final, often, before the span ends


def test_the_loops_rule_needs_a_whole_word_and_a_space_after_the_cut():
    assert not settled("okay so", 5)  # "so" may still grow ("solve")
    assert not settled("okay so,", 5)  # whole, but no whitespace yet (complete-word runs on to one)
    assert settled("okay so, x", 5)


def test_the_lexicon_waits_while_a_phrase_may_still_grow_over_the_cut():
    lexicon = LexiconPredictor()
    assert not lexicon.cut_settled("Okay, let me th", 11)  # "let me think" may still come
    assert lexicon.cut_settled("Okay, let me sort ", 13)  # no phrase starts "let me sort"
    assert lexicon.cut_settled("x = 2 but", 0)  # "but if" may still come, but after the cut: it cannot move it
    assert not lexicon.cut_settled("x = 2 but", 6)
    assert lexicon.cut_settled("x = 2 butter ", 6)


def test_a_marker_that_closed_the_thinking_makes_the_cut_final():
    lexicon = LexiconPredictor()
    watch = CutWatch(lexicon, STUDENT, "", "</think>")
    assert not watch(span("Okay, x"))
    assert CutWatch(lexicon, STUDENT, "", "</think>")(span("Okay, x</think>"))


class StreamingScripted(ScriptedBackend):
    """A scripted model that streams: with a watch, it writes one token (character) at a time and
    stops when the watch says the cut is final, as a server closes an aborted stream."""

    streams = True

    def __init__(self, script, vocab="a"):
        super().__init__(script, vocab)
        self.written = 0  # tokens actually generated

    def generate(self, sessions, max_new_tokens, stop, watch=None):
        spans = super().generate(sessions, max_new_tokens, stop)
        for i, (s, sp) in enumerate(zip(sessions, spans)):
            if watch is None or watch[i] is None or not sp.ids:
                self.written += len(sp.ids)
                continue
            for n in range(1, len(sp.ids) + 1):
                if n < len(sp.ids) and watch[i](span_from_ids(self.tokenizer, sp.ids[:n], "length")):
                    self.rollback(s, len(sp.ids) - n)
                    spans[i] = span_from_ids(self.tokenizer, sp.ids[:n], "cut")
                    break
            self.written += len(spans[i].ids)
        return spans


def student_script(prompt):
    return ["Okay, so let me think about the sum x = 2 + 3 and then", "</think>", "It is 5.", EOS]


def scripted_backends(script_s, script_t):
    return {STUDENT: StreamingScripted(script_s, "a"), TEACHER: StreamingScripted(script_t, "b")}


@pytest.mark.parametrize("handover", ["drop-partial-word", "complete-word"])
def test_streamed_and_whole_turn_runs_write_the_same_records(tmp_path, handover):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"q{i}"}) + "\n" for i in range(4)))
    student = ["Okay, so let me think. The sum x = 2 + 3 is five", "Hmm, wait. So the list is sorted",
               "Well, I think that is it ", "</think>", "It is 5.", EOS] * 3
    teacher = ["x = 2 + 3 = 5 so the answer is five. Wait, check it: sum ok", "we sort the list then return it. ",
               "def f(x): return x + 1 ", "</think>", "Five.", EOS] * 3
    runs = {}
    for streamed in (True, False):
        backends = scripted_backends(list(student), list(teacher))
        config = load_config(handover=handover, max_think_tokens=120, batch_size=2,
                             student={"stream_cuts": streamed}, teacher={"stream_cuts": streamed})
        out = tmp_path / f"{streamed}.jsonl"
        summary = synthesize(config, prompts, out, backends=backends, progress=False)
        runs[streamed] = (sorted([(r["id"], r["segments"], r["answer"]) for r in read_records(out)]),
                          {role: b.written for role, b in backends.items()}, summary)
    assert runs[True][0] == runs[False][0]
    assert runs[True][2]["stream_cuts"] == {STUDENT: True, TEACHER: True}
    assert runs[False][2]["stream_cuts"] == {STUDENT: False, TEACHER: False}
    assert sum(runs[True][1].values()) < sum(runs[False][1].values())
    assert runs[True][2]["roles"][STUDENT].get("stopped_at_cut", 0) > 0


def test_stream_cuts_on_a_backend_that_cannot_stream_is_refused(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "q"}) + "\n")
    backends = {STUDENT: ScriptedBackend([], "a"), TEACHER: ScriptedBackend([], "b")}
    with pytest.raises(ValueError, match="student.stream_cuts is true"):
        synthesize(load_config(student={"stream_cuts": True}), prompts, tmp_path / "o.jsonl", backends=backends,
                   progress=False)


@pytest.mark.slow
def test_streamed_cuts_on_the_real_models_keep_the_same_records_and_generate_less(tmp_path):
    """The embedded models on the hf backend, the lexicon as B_S and B_T: turns stopped at their
    final cut write exactly the records of whole turns (one row per call: deterministic), and fewer
    tokens are generated per kept token."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": q}) + "\n" for i, q in enumerate(
        ["Write a function that checks whether a number is prime.", "What is 17 times 23?"])))
    runs = {}
    for streamed in (True, False):
        config = load_config(max_think_tokens=64, max_answer_tokens=8, batch_size=1, in_flight=1,
                             student={"stream_cuts": streamed}, teacher={"stream_cuts": streamed})
        summary = synthesize(config, prompts, tmp_path / f"{streamed}.jsonl", progress=False)
        runs[streamed] = summary, sorted([(r["id"], r["segments"], r["answer"]) for r in read_records(
            tmp_path / f"{streamed}.jsonl")])
    (on, records_on), (off, records_off) = runs[True], runs[False]
    assert records_on == records_off
    assert sum(r["stopped_at_cut"] for r in on["roles"].values() if "stopped_at_cut" in r) > 0
    assert on["generated_per_kept"]["all"] < off["generated_per_kept"]["all"]


def test_a_verdict_holds_only_for_the_text_it_was_made_on():
    """A request tried again (or asked again whole) starts a new span: a cut found final on the
    first attempt's text must not stop the second attempt at its first token."""
    lexicon = LexiconPredictor()
    watch = CutWatch(lexicon, STUDENT, "", "</think>")
    assert watch(span("Okay, x = 2 and "))
    assert watch(span("Okay, x = 2 and more"))  # the same attempt, further on
    assert not watch(span("O"))  # a new attempt: read afresh
    assert not watch(span("Okay, x"))
    assert watch(span("Okay, x = 2 and "))


def test_the_batcher_reads_streams_in_micro_batches_and_stops_them_once_final():
    """While the predictor reads one batch, the spans handed over pile up and are read together in the
    next one. The predictor's call is held open by a gate, so the order is fixed, with no timing."""
    import threading

    from tessy.engine.streaming import WatchBatcher

    class Gated(LexiconPredictor):
        inline = False

        def __init__(self):
            super().__init__()
            self.calls: list[int] = []
            self.entered = [threading.Event() for _ in range(3)]
            self.gate = threading.Event()

        def cuts(self, texts, contexts, role):
            self.calls.append(len(texts))
            self.entered[len(self.calls) - 1].set()
            self.gate.wait()  # a forward pass
            return super().cuts(texts, contexts, role)

    predictor = Gated()
    batcher = WatchBatcher()
    try:
        calls = [batcher.watch(CutWatch(predictor, STUDENT, "", "</think>", every=1)) for _ in range(4)]
        text = "Okay, x = 2 and so on "
        assert not calls[0](span(text[:1]))  # handed over; the worker starts reading it
        assert predictor.entered[0].wait(5)
        assert not any(call(span(text)) for call in calls[:3])  # these wait while the first read runs
        predictor.gate.set()
        assert predictor.entered[1].wait(5)  # the second read took all three
        calls[3](span(text))  # read after the second batch is through
        assert predictor.entered[2].wait(5)
        assert predictor.calls == [1, 3, 1]
        # Each of the three found its cut final in the second read, and stops its stream now.
        assert all(call(span(text)) for call in calls[:3])
    finally:
        predictor.gate.set()
        batcher.close()


class Sliding(LexiconPredictor):
    """A predictor whose window slides as the span grows: it cannot promise a final cut (as a
    checkpoint that reads left context), so it is no `StreamingPredictor`."""

    cut_settled = None


@pytest.mark.parametrize("wanted", [None, True, False])
@pytest.mark.parametrize("backend_streams", [True, False])
@pytest.mark.parametrize("promises", [True, False])
def test_a_role_streams_where_its_setting_backend_and_predictor_all_allow_it(wanted, backend_streams, promises):
    from tessy.engine.scheduler import Scheduler
    from tessy.engine.streaming import role_streams
    from tessy.predictors import StreamingPredictor

    backend = StreamingScripted([]) if backend_streams else ScriptedBackend([])
    predictor = LexiconPredictor() if promises else Sliding()
    assert isinstance(predictor, StreamingPredictor) == promises
    scheduler = Scheduler({STUDENT: backend}, {STUDENT: predictor}, stream_cuts={STUDENT: wanted})
    if wanted and not backend_streams:  # `tessy synth` refuses the config
        with pytest.raises(ValueError, match="student.stream_cuts is true, but the scripted backend cannot stop"):
            role_streams(STUDENT, wanted, backend, predictor, "scripted")
        return
    expected = wanted is not False and backend_streams and promises
    assert role_streams(STUDENT, wanted, backend, predictor, "scripted") == expected == scheduler.streams(STUDENT)
