import json
import random

import pytest
from scripted import ScriptedBackend

from tessy.predictors.annotate import (
    ANNOTATION_PROMPT,
    AnnotationParseError,
    Segment,
    align_spans,
    annotate_llm,
    annotation_messages,
    backend_asker,
    parse_spans,
    read_segments,
    sample_windows,
    thinking_texts,
)


# --- parser --------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, expected", [
    ('["well", "so"]', ["well", "so"]),
    ("```json\n[\"okay\", \"let's see\"]\n```", ["okay", "let's see"]),
    ('Sure! Here are the spans:\n["Hmm"]\nHope this helps.', ["Hmm"]),
    ("[]", []),
    ('{"spans": ["well", "so"]}', ["well", "so"]),  # an object around the array: text around it
    ('draft: ["a"] final answer: ["b", "c"]', ["b", "c"]),  # a thinking annotator: the last array wins
    ('["unicode: “quoted” — ok", "naïve"]', ["unicode: “quoted” — ok", "naïve"]),
    ('[1, 2] then ["x"]', ["x"]),
])
def test_parser_finds_the_array(answer, expected):
    assert parse_spans(answer) == expected


@pytest.mark.parametrize("answer", [
    "",
    "   \n ",
    "There are no filler phrases in this text.",                 # prose
    '"well"',                                                    # a single string instead of a list
    '[["well", "so"], ["okay"]]',                                # nested arrays
    '[{"span": "well"}]',                                        # nested objects
    '["well", "so", "okay"',                                     # cut off by the token limit
    "['well', 'so']",                                            # Python, not JSON
    "[" * 100_000,                                               # very long garbage
    "blah " * 50_000 + '["well", "so"',                          # very long, array never closed
])
def test_parser_rejects_hostile_answers(answer):
    with pytest.raises(AnnotationParseError):
        parse_spans(answer)


def test_parser_very_long_valid_output():
    phrases = [f"phrase {i}" for i in range(5000)]
    assert parse_spans("noise " * 10_000 + json.dumps(phrases)) == phrases


# --- alignment -----------------------------------------------------------------------------------
def test_repeated_phrases_take_the_next_occurrence():
    text = "So x is 1. So y is 2. So done."
    spans, unfound = align_spans(text, ["So", "So", "So"])
    assert spans == [(0, 2), (11, 13), (22, 24)] and unfound == []


def test_repeated_phrase_skips_earlier_occurrences():
    text = "so a, well b, so c"
    spans, _ = align_spans(text, ["well", "so"])
    assert [text[s:e] for s, e in spans] == ["well", "so"] and spans[1] == (14, 16)


def test_unicode_offsets_are_characters():
    text = "Ну, хорошо — давайте посмотрим: 数学 ✓ well"
    spans, unfound = align_spans(text, ["Ну, хорошо", "давайте посмотрим", "well"])
    assert unfound == []
    assert [text[s:e] for s, e in spans] == ["Ну, хорошо", "давайте посмотрим", "well"]


@pytest.mark.parametrize("phrase", ["let's  see", "let's\nsee", " let's see ", "let's\u00a0see", "let's\t see"])
def test_whitespace_tolerant_match(phrase):
    text = "Okay, let's \n see what happens."
    spans, unfound = align_spans(text, [phrase])
    assert unfound == [] and text[spans[0][0]:spans[0][1]] == "let's \n see"


def test_exact_match_preferred_over_tolerant():
    text = "let's  see, then let's see"
    spans, _ = align_spans(text, ["let's see"])
    assert spans == [(17, 26)]  # the exact copy, not the earlier whitespace variant


def test_unfound_spans_are_reported_not_guessed():
    text = "Well, the sum is 3. Then done."
    spans, unfound = align_spans(text, ["Well", "I think", "Well", "", "Then"])
    assert [text[s:e] for s, e in spans] == ["Well", "Then"]
    assert unfound == ["I think", "Well", ""]  # the second "Well" has no occurrence after the first


def test_touching_spans_are_merged_and_overlaps_go_unfound():
    assert align_spans("okay, so then", ["okay", ", so"]) == ([(0, 8)], [])
    # In order of appearance, "so then" would have to start after "okay so" ends.
    assert align_spans("okay so then", ["okay so", "so then"]) == ([(0, 7)], ["so then"])


# --- segments -------------------------------------------------------------------------------------
def test_windows_are_whole_words_with_context_and_source():
    docs = [("d1", "student", "Okay so the answer is forty two because six times seven."),
            ("d2", "teacher", "Compute 6*7 = 42. Done.")]
    segs = sample_windows(docs, 20, min_words=2, max_words=5, context_chars=10, seed=1)
    assert len(segs) == 20 and {s.source for s in segs} == {"student", "teacher"}
    for s in segs:
        full = dict((d, t) for d, _, t in docs)[s.doc]
        start = full.index(s.context + s.text) + len(s.context) if s.context else full.index(s.text)
        assert full[start:start + len(s.text)] == s.text
        assert 2 <= len(s.text.split()) <= 5 or len(full.split()) < 2
        assert len(s.context) <= 10


def test_thinking_texts_from_synth_records_and_generations():
    synth = {"id": "a", "segments": [{"source": "student", "part": "think", "text": "Okay so"},
                                     {"source": "teacher", "part": "think", "text": "x = 1"},
                                     {"source": "student", "part": "answer", "text": "1"}]}
    gen = {"id": "b", "messages": [{"role": "user", "content": "q"},
                                   {"role": "assistant", "content": "<think>\nhmm fine\n</think>\n\n1"}]}
    out = thinking_texts([synth, gen], source="teacher")
    assert out == [("a/0", "student", "Okay so"), ("a/1", "teacher", "x = 1"), ("b", "teacher", "\nhmm fine\n")]
    with pytest.raises(ValueError, match="--source"):
        thinking_texts([gen])


def test_read_segments_rejects_spans_outside_text(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "1", "source": "student", "text": "ok", "style_spans": [[0, 5]]}) + "\n")
    with pytest.raises(ValueError, match="outside"):
        read_segments(path)


def test_prompt_is_table_2():
    [message] = annotation_messages("Well, x = 1.")
    assert message["role"] == "user"
    assert message["content"].startswith("You are a text analysis expert.")
    assert message["content"].endswith("<input_text>Well, x = 1.</input_text>")
    assert "Output only the JSON array — no explanation or extra text." in ANNOTATION_PROMPT


# --- the LLM annotator, scripted ------------------------------------------------------------------
class ChatTokenizerBackend(ScriptedBackend):
    """A scripted annotator: every session pops the next answer from one shared script."""

    def start(self, prompt, add_special_tokens=False, key=""):
        session = super().start(prompt)
        session.state = self.answers
        return session


def test_llm_annotator_retries_and_records_failures():
    backend = ChatTokenizerBackend([])
    # seg0: valid at once; seg1: prose, then valid; seg2: invalid every time (1 + 2 retries).
    from collections import deque
    backend.answers = deque(['["Okay"]', "no idea", '["bad" ', '["so", "missing"]', "still prose", "[oops"])
    segs = [Segment("s0", "student", "Okay, x."), Segment("s1", "teacher", "so x = 2"), Segment("s2", "student", "y")]
    done, report = annotate_llm(segs, backend_asker(backend, 1000), "teacher:scripted", retries=2, batch_size=8)
    assert [s.id for s in done] == ["s0", "s1"]
    assert done[0].style_spans == [(0, 4)] and done[0].annotator == "teacher:scripted"
    assert done[1].style_spans == [(0, 2)] and done[1].unfound == ["missing"]
    assert report.parse_failures == 4 and report.unfound == 1 and report.spans == 2
    assert [f["id"] for f in report.failed] == ["s2"] and len(report.failed[0]["errors"]) == 3


def test_failed_requests_count_as_failures():
    from tessy.backends import SampleError

    answers = iter([[SampleError("HTTP 500"), '["so"]'], ['["x"]']])
    segs = [Segment("a", "student", "x y"), Segment("b", "student", "so z")]
    done, report = annotate_llm(segs, lambda chats: next(answers), "t", retries=1, batch_size=8)
    assert [s.id for s in done] == ["b", "a"][::-1] and report.parse_failures == 1
    assert done[0].style_spans == [(0, 1)] and done[1].style_spans == [(0, 2)]


# --- the release's recipe (Boundary_Predictor/annotator.py), each against a reference of its rule ----
def release_chunks(records: list[dict], seed: int, pieces: int = 60, per_response: int = 100,
                   cap: int = 10_000) -> list[dict]:
    """The release's `construct_dataset`, as its code reads: the thinking of `dialogs[1]`, stripped,
    split on ' '; responses under `pieces` pieces skipped; `per_response` windows each; at most
    `cap`, drawn by random.sample; every draw from one generator seeded once."""
    rng = random.Random(seed)
    chunks = []
    for sample in records:
        think = sample["dialogs"][1]["content"].split("</think>")[0].replace("<think>", "").strip()
        parts = think.split(" ")
        if len(parts) < pieces:
            continue
        for _ in range(per_response):
            beg = rng.randint(0, len(parts) - pieces)
            chunks.append({"id_ddm": sample["id_ddm"], "text": " ".join(parts[beg:beg + pieces])})
    if len(chunks) > cap:
        chunks = rng.sample(chunks, cap)
    return chunks


def release_parse(model_output: str, original_think: str):
    """The release's `parse_and_locate_spans`: a list of {span, start, end}, or None (window dropped)."""
    try:
        spans = json.loads(model_output)
    except Exception:
        return None
    if not isinstance(spans, list):
        return None
    results, search_start = [], 0
    for span in spans:
        if not isinstance(span, str) or span == "":
            return None
        pos = original_think.find(span, search_start)
        if pos == -1:
            return None
        results.append({"span": span, "start": pos, "end": pos + len(span)})
        search_start = pos + len(span)
    return results


def release_records(n_docs: int = 6, seed: int = 5) -> list[dict]:
    """Records in the shape the release's generate_responses.py writes: the prompt's fields, with the
    reply as dialogs[1]. Lengths around the window size, double spaces and newlines inside pieces."""
    rng = random.Random(seed)
    words = ["Okay,", "so", "x", "=", "2.\n\nWait,", "let's", "see:", "", "the", "sum", "is", "4.", "Hmm."]
    out = []
    for i in range(n_docs):
        think = " ".join(rng.choice(words) for _ in range(rng.choice([20, 59, 60, 61, 150])))
        reply = f"<think>\n{think}\n</think>\n\n4"
        out.append({"id_ddm": f"q{i}", "dialogs": [{"role": "user", "content": f"question {i}"},
                                                   {"role": "assistant", "content": reply}]})
    return out


@pytest.mark.parametrize("seed, cap", [(222, 10_000), (222, 150), (7, 40)])
def test_piece_windows_are_the_releases(seed, cap):
    from tessy.predictors.annotate import piece_windows

    records = release_records()
    docs = thinking_texts(records, source="student")
    segs = piece_windows(docs, pieces=60, per_response=100, cap=cap, context_chars=30, seed=seed)
    expected = release_chunks(records, seed, cap=cap)
    assert len(expected) > 0 and (cap > len(expected) or len(expected) == cap)
    assert [(s.doc, s.text) for s in segs] == [(c["id_ddm"], c["text"]) for c in expected]
    assert len({s.id for s in segs}) == len(segs)
    for s in segs:  # the context is the text just before the window, in the stripped thinking
        think = next(t for d, _, t in docs if d == s.doc).strip()
        assert (s.context + s.text) in think and len(s.context) <= 30


def test_piece_windows_skip_short_responses():
    from tessy.predictors.annotate import piece_windows

    docs = [("short", "teacher", " ".join(["w"] * 59)), ("long", "teacher", " ".join(str(i) for i in range(60)))]
    segs = piece_windows(docs, pieces=60, per_response=3, seed=0)
    assert [s.text for s in segs] == [" ".join(str(i) for i in range(60))] * 3 and {s.doc for s in segs} == {"long"}


@pytest.mark.parametrize("answer", [
    '["Okay,", "so"]', ' \n["Okay,", "so"]\n ', "[]", '["so", "so"]', '["so", "Okay,"]', '["x = 2"]',
    '```json\n["Okay,"]\n```', 'Here: ["Okay,"]', '["Okay,", ""]', '["Okay,", 3]', '[["Okay,"]]', '{"spans": []}',
    '"Okay,"', '["Okay, "]', '["okay"]', '["Okay,", "so",', "", '["Hmm.", "Okay,"]', '["sum", "is"]',
])
def test_strict_parse_is_the_releases(answer):
    from tessy.predictors.annotate import parse_strict

    text = "Okay, so x = 2. Wait, so the sum is 4. Hmm."
    expected = release_parse(answer, text)
    if expected is None:
        with pytest.raises(AnnotationParseError):
            parse_strict(answer, text)
    else:
        assert parse_strict(answer, text) == [(r["start"], r["end"]) for r in expected]


def test_strict_llm_annotation_drops_windows_and_keeps_touching_spans():
    segs = [Segment("a", "student", "okay, so then"), Segment("b", "student", "well x"),
            Segment("c", "student", "so y")]
    answers = {"okay, so then": '["okay", ", so"]', "well x": '["well", "nope"]', "so y": '```json\n["so"]\n```'}

    def ask(chats):
        return [answers[c[0]["content"].split("<input_text>")[1].split("</input_text>")[0]] for c in chats]

    done, report = annotate_llm(segs, ask, "t", retries=0, parse="strict")
    assert [s.id for s in done] == ["a"] and done[0].style_spans == [(0, 4), (4, 8)] and done[0].unfound == []
    assert [f["id"] for f in report.failed] == ["b", "c"] and report.parse_failures == 2 and report.spans == 2


def test_prompt_file_is_used_verbatim(tmp_path):
    from tessy.predictors.annotate import read_prompt

    path = tmp_path / "prompt.txt"
    path.write_text("Find fillers.\n<input_text>\n{think_text}\n</input_text>\n")
    prompt = read_prompt(path)
    [message] = annotation_messages("so x", prompt)
    assert message["content"] == "Find fillers.\n<input_text>\nso x\n</input_text>\n"
    seen = []
    annotate_llm([Segment("a", "student", "so x")], lambda chats: seen.extend(chats) or ["[]"] * len(chats), "t",
                 prompt=prompt)
    assert seen[0][0]["content"] == message["content"]
    path.write_text("no placeholder")
    with pytest.raises(ValueError, match="think_text"):
        read_prompt(path)


# --- reading thinking: dialogs, gpt-oss, reasoning fields ---------------------------------------------
def test_thinking_texts_from_release_dialogs_and_gpt_oss():
    harmony = ("<|start|>assistant<|channel|>analysis<|message|>We need to add.<|end|>"
               "<|start|>assistant<|channel|>final<|message|>4<|return|>")
    records = [
        {"id_ddm": "d1", "dialogs": [{"role": "user", "content": "q"},
                                     {"role": "assistant", "content": "<think>\nOkay so.\n</think>\n\n4"}]},
        {"id_ddm": "d2", "dialogs": [{"role": "user", "content": "q"}, {"role": "assistant", "content": harmony}]},
        {"id_ddm": "d3", "dialogs": [{"role": "user", "content": "q"},
                                     {"role": "assistant", "content": "analysisWe add 2 and 2.assistantfinal4"}]},
        {"id": "d4", "messages": [{"role": "user", "content": "q"},
                                  {"role": "assistant", "content": "4", "reasoning_content": "Let me think."}]},
        {"id": "d5", "messages": [{"role": "assistant", "content": "2 + 2.\n</think>\n\n4"}]},  # template opened it
        {"id": "d6", "reasoning": "Plain field.", "content": "4"},
        {"prompt": "q", "content": "<|channel|>analysis<|message|>Cut off mid-thought"},  # release without dialogs
        {"id": "d8", "dialogs": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "4"}]},
    ]
    out = thinking_texts(records, source="teacher")
    assert out == [("d1", "teacher", "\nOkay so.\n"), ("d2", "teacher", "We need to add."),
                   ("d3", "teacher", "We add 2 and 2."), ("d4", "teacher", "Let me think."),
                   ("d5", "teacher", "2 + 2.\n"), ("d6", "teacher", "Plain field."),
                   ("6", "teacher", "Cut off mid-thought")]


# --- the annotator's requests: sampling and chat_template_kwargs -----------------------------------------
def test_chat_client_sends_sampling_and_template_kwargs(servers):
    from tessy.backends.openai import ChatClient
    from tessy.config import Endpoint, ModelSpec

    srv = servers()
    spec = ModelSpec("qwen3-32b", backend="openai", temperature=0.7, top_p=0.8, top_k=20, seed=3,
                     chat_template_kwargs={"enable_thinking": False})
    chat = ChatClient.from_config(spec, Endpoint(urls=[srv.url]), 32768)
    assert chat.complete([[{"role": "user", "content": "hi"}]]) == ["ok: hi"]
    chat.close()
    body = srv.requests[-1]
    assert srv.paths[-1].endswith("/chat/completions")
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "max_tokens", "seed", "chat_template_kwargs")} == {
        "temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 32768, "seed": 3,
        "chat_template_kwargs": {"enable_thinking": False}}
    # top_k 0 (off) and no template arguments: the fields OpenAI's own API lacks are left out.
    plain = ChatClient([srv.url], temperature=0.0, max_tokens=8)
    plain.complete([[{"role": "user", "content": "hi"}]])
    plain.close()
    assert "top_k" not in srv.requests[-1] and "chat_template_kwargs" not in srv.requests[-1]


def annotate_config(tmp_path, url: str, **annotator) -> str:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"annotator": {"model": "qwen3-32b", "backend": "openai", "urls": [url],
                                                  **annotator}}))
    return str(path)


def test_config_annotator_strict_release_format_round_trip(servers, tmp_path):
    """`--annotator config --parse strict --out-format release` through a chat server whose answers the
    test writes: every request carries the section's sampling and chat_template_kwargs; the file is
    the release's shape; read back with --source it gives the spans the release's parser gives."""
    from tessy.predictors.annotate import AnnotateJob, run_annotate

    srv = servers()
    records = tmp_path / "gen.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in release_records()))

    def reply(body):
        window = body["messages"][-1]["content"].split("<input_text>")[1].split("</input_text>")[0]
        words = window.split(" ")
        if len(window) % 3 == 0:
            return '["not in the text"]'  # dropped under the strict rule
        return json.dumps([w for w in words if w in ("Okay,", "so", "Hmm.")][:4])

    srv.chat_reply = reply
    config = annotate_config(tmp_path, srv.url, temperature=0.7, top_p=0.8, top_k=20, max_tokens=64,
                             chat_template_kwargs={"enable_thinking": False})
    out = tmp_path / "release.jsonl"
    job = AnnotateJob(out=str(out), records=[str(records)], source="teacher", config=config, annotator="config",
                      window_rule="pieces", n=50, seed=222, parse="strict", out_format="release", retries=0)
    summary = run_annotate(job)
    chats = [b for b, p in zip(srv.requests, srv.paths) if p.endswith("/chat/completions")]
    assert len(chats) == summary["segments"] == 50
    assert all(b["chat_template_kwargs"] == {"enable_thinking": False} and b["max_tokens"] == 64
               and (b["temperature"], b["top_p"], b["top_k"]) == (0.7, 0.8, 20) for b in chats)

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    windows = release_chunks(release_records(), 222, cap=50)
    expected = [(c["id_ddm"], c["text"], release_parse(reply({"messages": [{"content": f"<input_text>{c['text']}"
                                                                                      "</input_text>"}]}), c["text"]))
                for c in windows]
    expected = [e for e in expected if e[2] is not None]
    assert 0 < len(lines) == len(expected) == summary["annotated"] < 50
    assert all(set(line) == {"id_ddm", "think_text", "pred_result"} for line in lines)
    assert sum(bool(x["pred_result"]) for x in lines) >= 5
    assert [(x["id_ddm"], x["think_text"], x["pred_result"]) for x in lines] == expected
    rows = read_segments(out, source="teacher")
    assert [r["style_spans"] for r in rows] == [[[p["start"], p["end"]] for p in e[2]] for e in expected]
    assert {r["source"] for r in rows} == {"teacher"} and [r["doc"] for r in rows] == [e[0] for e in expected]
    with pytest.raises(ValueError, match="--source"):
        read_segments(out)


def test_annotator_config_needs_its_section(tmp_path, capsys):
    from tessy.cli import main

    records = tmp_path / "gen.jsonl"
    records.write_text(json.dumps({"id": "1", "source": "student", "thinking": "so x"}) + "\n")
    assert main(["annotate", "--records", str(records), "--annotator", "config", "--out", str(tmp_path / "o")]) == 2
    assert "annotator: section" in capsys.readouterr().err


def test_annotator_section_is_checked_and_not_in_the_synth_hash(tmp_path):
    import yaml

    from tessy.config import AnnotatorConfig, load_config, load_recipe
    from tessy.typed import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"annotator": {"model": "m", "top_k": 20, "max_tokens": 32768,
                                                  "chat_template_kwargs": {"enable_thinking": False}}}))
    annotator = load_recipe(path).annotator
    assert isinstance(annotator, AnnotatorConfig) and annotator.max_tokens == 32768
    assert annotator.spec.chat_template_kwargs == {"enable_thinking": False}
    assert load_config(path).hash() == load_config().hash() and load_recipe(None).annotator is None
    path.write_text(yaml.safe_dump({"annotator": {"model": "m", "max_tokns": 3}}))
    with pytest.raises(ConfigError, match="max_tokens"):
        load_recipe(path)


class TemplateTokenizer:
    """A chat tokenizer that records the arguments its template got."""

    chat_template = "{{ messages }}"
    eos_token_id = 0

    def __init__(self):
        self.kwargs = []

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, **kwargs):
        self.kwargs.append(kwargs)
        return "".join(m["content"] for m in messages) + "|"

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


def test_in_process_annotator_and_sampler_pass_template_kwargs():
    from tessy.predictors.annotate import sample_thinking
    from tessy.profiles import QWEN3, Renderer
    from tessy.prompts import Prompt

    backend = ScriptedBackend(['["so"]'])
    backend.tokenizer = TemplateTokenizer()
    assert backend_asker(backend, 50, {"enable_thinking": False})([[{"role": "user", "content": "x"}]]) == ['["so"]']
    backend = ScriptedBackend(["Okay so.</think>\n\nanswer"])
    backend.tokenizer = TemplateTokenizer()
    prompt = Prompt(id="p1", messages=({"role": "user", "content": "q"},))
    renderer = Renderer(QWEN3, backend.tokenizer, {"reasoning_effort": "high"})
    assert sample_thinking(backend, renderer, [prompt], 100) == ["Okay so."]
    assert backend.tokenizer.kwargs == [{"reasoning_effort": "high"}]


def test_sample_uses_its_own_sampling_and_budget(monkeypatch, tmp_path):
    """--sample-temperature/top-p/top-k make the sampling model; the role's own entry is untouched; the
    budget reaches every request."""
    import tessy.backends
    from tessy.predictors.annotate import AnnotateJob, run_annotate

    made = []

    def fake_backend(config, name=""):
        made.append((name, config))
        return ScriptedBackend(["Okay so the answer is four because two and two.</think>"] * 2)

    monkeypatch.setattr(tessy.backends, "make_backend", fake_backend)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "q1"}\n{"id": 2, "prompt": "q2"}\n')
    job = AnnotateJob(out=str(tmp_path / "o.jsonl"), sample=["student"], prompts=str(prompts), annotator="lexicon",
                      sample_tokens=4000, sample_temperature=0.95, sample_top_p=0.8, sample_top_k=20, n=3,
                      min_words=2, max_words=4)
    summary = run_annotate(job)
    [(name, config)] = made
    spec = config.spec
    assert name == "student sampler" and (spec.temperature, spec.top_p, spec.top_k) == (0.95, 0.8, 20)
    assert summary["annotated"] == 3 and summary["by_source"]["student"] == 3
