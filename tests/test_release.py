"""Predictors in the authors' release format (github.com/CoopReason/TESSY), checked against the
release's own rule.

A released predictor is a plain 2-label `AutoModelForTokenClassification` (Qwen3-0.6B-Base) with no
tessy metadata; label 1 is style; its logits at token t classify token t+1. The test builds a tiny
randomly initialised Qwen3 classifier in that format (the embedded student's tokenizer), so that its
labels are mixed and its cuts land anywhere, and compares tessy's cuts with `release_cut` below: the
release's rule as its client applies it, written out here from its description.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from scripted import EOS, run_scripted

from tessy.backends import span_from_ids
from tessy.engine.loop import kept_tokens
from tessy.predictors import PredictorSpec, load_predictor
from tessy.predictors.learned import LearnedPredictor, encode, shift_left
from tessy.roles import STUDENT, TEACHER

ROOT = Path(__file__).resolve().parents[1]
CONTEXT_TOKENS = 200  # the release's classifier_len

THINKING = (
    "Okay, let's see. We need two numbers in the list that add up to the target. A brute force check "
    "of every pair is O(n^2), which is fine for small inputs, but a hash map does it in one pass: for "
    "each value v at index i, look up target - v among the values seen so far. Wait, what if the same "
    "element would be used twice? The lookup happens before v is stored, so that cannot happen. Hmm, "
    "and duplicates such as [3, 3] with target 6 still work because the first 3 is stored first. "
)
SPANS = [
    "Let me write it down:\n\n```python\ndef two_sum(nums, target):\n    seen = {}\n",
    " So the answer is the pair of indices. Alright, that should be it.",
    "for i, v in enumerate(nums):\n        if target - v in seen:",
    "Hmm, wait. Actually, maybe I should double-check the edge cases first.",
    "x",
    " abc",
]
CASES = [("", s) for s in SPANS[:3]] + [(THINKING[:n], s) for n in (40, 200, len(THINKING)) for s in SPANS]


def release_cut(model, tokenizer, cur_text: str, gen: str, role: str) -> tuple[str, bool]:
    """The release's client on one span: (kept text, whether the turn passes to the other model)."""
    import torch

    combined, at = cur_text + gen, len(cur_text)
    tokenizer.truncation_side = "left"
    enc = tokenizer(combined, truncation=True, max_length=CONTEXT_TOKENS, return_offsets_mapping=True)
    with torch.no_grad():
        labels = model(input_ids=torch.tensor([enc["input_ids"]])).logits.argmax(-1)[0].tolist()
    other = 1 if role == TEACHER else 0  # label 1 is style
    for (start, end), label in zip(enc["offset_mapping"], labels):
        if start <= at:  # tokens of the text before the span, and one straddling its start
            continue
        if label == other:
            kept, j = gen[: end - at], end
            while j < len(combined) and not combined[j].isspace():  # complete the word
                kept += combined[j]
                j += 1
            return kept, True
    return gen, labels[-1] == other


def tessy_cut(predictor, tokenizer, cur_text: str, gen: str, role: str) -> tuple[str, bool]:
    """tessy's predictor and hand-over (`complete-word`) on the same span, as the loop runs them."""
    [b] = predictor.cuts([gen], [cur_text], role)
    if b is None:
        return gen, False
    raw = span_from_ids(tokenizer, tokenizer.encode(gen, add_special_tokens=False), "length")
    assert raw.text == gen
    return raw.text_of(kept_tokens(raw, b, "complete-word", same_vocab=False)), True


@pytest.fixture(scope="module")
def release_checkpoints(tmp_path_factory):
    """Three tiny checkpoints in the release format: unbiased, leaning to style, leaning to capability."""
    import torch
    from transformers import Qwen3Config, Qwen3ForTokenClassification

    from tessy.backends.openai import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    out = {}
    for name, bias in (("mixed", 0.0), ("style", 1.5), ("capability", -1.5)):
        torch.manual_seed(7)
        config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_labels=2,
                             pad_token_id=tokenizer.pad_token_id)
        model = Qwen3ForTokenClassification(config).eval()
        with torch.no_grad():
            model.score.weight.mul_(20.0)  # labels that change from token to token
            model.score.bias = torch.nn.Parameter(torch.tensor([0.0, bias]))
        path = tmp_path_factory.mktemp("release") / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[name] = path
    return out


def release_spec(path) -> dict:
    return {"path": str(path), "labels": "next-token", "style_label": 1, "context_tokens": CONTEXT_TOKENS}


@pytest.mark.parametrize("name", ["mixed", "style", "capability"])
def test_release_predictor_cuts_where_the_release_cuts(release_checkpoints, name):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    path = release_checkpoints[name]
    model = AutoModelForTokenClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    predictor = load_predictor(release_spec(path))
    assert not (path / "tessy_predictor.json").exists() and predictor.semantics == "next-token"
    outcomes = []
    for role in (STUDENT, TEACHER):
        for cur_text, gen in CASES:
            expected = release_cut(model, tokenizer, cur_text, gen, role)
            assert tessy_cut(predictor, tokenizer, cur_text, gen, role) == expected, (role, cur_text[-30:], gen)
            outcomes.append((expected[1], expected[0] == gen))
    if name == "mixed":  # the cases reach every branch of the rule
        assert {(True, False), (True, True), (False, True)} <= set(outcomes)


def test_batched_cuts_equal_one_by_one(release_checkpoints):
    predictor = load_predictor(release_spec(release_checkpoints["mixed"]))
    texts, contexts = [g for _, g in CASES], [c for c, _ in CASES]
    for role in (STUDENT, TEACHER):
        assert predictor.cuts(texts, contexts, role) == [predictor.cuts([t], [c], role)[0]
                                                         for t, c in zip(texts, contexts)]


def test_a_plain_checkpoint_needs_its_semantics(release_checkpoints):
    with pytest.raises(ValueError, match="for a plain token-classification checkpoint"):
        load_predictor(str(release_checkpoints["mixed"]))


@pytest.mark.parametrize("spec, message", [
    ({"path": "x", "labels": "previous-token"}, "labels"),
    ({"path": "x", "style_label": 2}, "style_label"),
    ({"path": "x", "context_tokens": 0}, "context_tokens"),
    ({"path": "x", "context": 200}, "unknown key"),
    ({"labels": "next-token"}, "path"),
])
def test_bad_predictor_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        PredictorSpec.parse(spec, "student_predictor")


# --- the left context reaches the predictor -----------------------------------------------------
class Recorder:
    """Records what the loop hands a predictor; cuts like the lexicon (never, here)."""

    name = "recorder"

    def __init__(self):
        self.seen = []

    def cuts(self, texts, contexts, role):
        self.seen.extend(zip(texts, contexts))
        return [None] * len(texts)


def test_the_loop_hands_the_thinking_so_far_as_context():
    recorder = Recorder()
    [x], _, _ = run_scripted(["Okay so ", "we add ", "them up. ", "</think>", "Done.", EOS], [], same_vocab=True,
                             predictor=recorder)
    assert recorder.seen[:3] == [("Okay so ", ""), ("we add ", "Okay so "), ("them up. ", "Okay so we add ")]


def test_a_same_token_checkpoint_reads_its_left_context(release_checkpoints):
    """A checkpoint trained with --left-context sees the context at inference too (it did not)."""
    import torch

    from tessy.predictors.learned import _join, _trimmed

    path = release_checkpoints["mixed"]
    predictor = LearnedPredictor.load(path, PredictorSpec(str(path), labels="same-token", context_tokens=64))
    text, context = SPANS[0], THINKING
    enc = encode(predictor.tokenizer, text, context, None, 64, 64)
    assert len(enc["input_ids"]) == 64  # the span, and the context filling the rest
    with torch.no_grad():
        labels = predictor.model(input_ids=torch.tensor([enc["input_ids"]])).logits.argmax(-1)[0].tolist()
    expected = _join(text, _trimmed(text, [o for o, label in zip(enc["offsets"], labels)
                                           if o is not None and label == 1]))
    assert predictor.style_spans([text], [context]) == [expected]
    assert predictor.style_spans([text]) != [expected]  # without the context it reads otherwise


# --- training in the release's semantics --------------------------------------------------------
def test_next_token_targets_shift_left():
    assert shift_left([-100, 0, 1, 1, 0]) == [0, 1, 1, 0, -100]


@pytest.mark.slow
def test_predictor_train_writes_next_token_checkpoints(release_checkpoints, tmp_path):
    """`tessy predictor train --labels next-token` on the tiny base: the checkpoint records its
    semantics and then cuts by the release's rule, loaded by its path alone."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from tessy.cli import main

    out = tmp_path / "b_t"
    data = ROOT / "tests" / "data" / "predictor_segments.jsonl"
    assert main(["predictor", "train", "--data", str(data), "--out", str(out),
                 "--base", str(release_checkpoints["mixed"]),
                 "--source", "teacher", "--epochs", "1", "--max-length", "48", "--labels", "next-token",
                 "--device", "cpu"]) == 0
    meta = json.loads((out / "tessy_predictor.json").read_text())
    assert meta["semantics"] == "next-token" and meta["epochs"][0]["train_loss"] > 0
    predictor = load_predictor(str(out))
    model, tokenizer = AutoModelForTokenClassification.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    global CONTEXT_TOKENS
    saved, CONTEXT_TOKENS = CONTEXT_TOKENS, 48  # the checkpoint's own window
    try:
        for cur_text, gen in CASES[:6]:
            assert (tessy_cut(predictor, tokenizer, cur_text, gen, TEACHER)
                    == release_cut(model, tokenizer, cur_text, gen, TEACHER))
    finally:
        CONTEXT_TOKENS = saved


# --- the authors' settings end to end -----------------------------------------------------------
@pytest.mark.slow
def test_authors_release_config_runs_end_to_end(release_checkpoints, tmp_path):
    """configs/authors-release.yaml with its predictors pointing at local checkpoints in the release
    format, on the embedded models."""
    from tessy.cli import main
    from tessy.config import load_config
    from tessy.engine.records import read_records

    data = yaml.safe_load((ROOT / "configs" / "authors-release.yaml").read_text())
    assert data["student_predictor"]["path"] == "CoopReason/Boundary_Predictor_Student_Code"
    data["student_predictor"]["path"] = str(release_checkpoints["mixed"])
    data["teacher_predictor"]["path"] = str(release_checkpoints["mixed"])
    config_path = tmp_path / "release.yaml"
    config_path.write_text(yaml.safe_dump({**data, "max_think_tokens": 48, "max_answer_tokens": 8}))
    config = load_config(config_path)
    assert (config.student.turn.k, config.teacher.turn.k, config.handover) == (5, 10, "complete-word")
    prompts = tmp_path / "prompts.jsonl"
    shutil.copy(ROOT / "tessy" / "data" / "demo_prompts.jsonl", prompts)
    out = tmp_path / "out" / "records.jsonl"
    assert main(["synth", "--config", str(config_path), "--prompts", str(prompts), "--out", str(out), "--limit", "2",
                 "--summary-json", str(tmp_path / "summary.json")]) == 0
    records = read_records(out)
    assert len(records) == 2
    for r in records:
        assert r["stats"]["predictors"] == {STUDENT: "learned:mixed", TEACHER: "learned:mixed"}
        assert r["stats"]["switches"] == len(r["stats"]["cuts"]) > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["roles"]["student"]["requests"] > 0
