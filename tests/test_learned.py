"""Learned boundary predictors: labels, splits, epoch choice, dtype, metrics, and (slow) real training
runs on the committed set. The release's rules (labels, split, best epoch) are written out here from
the authors' Boundary_Predictor/train_predictor.py, as references.

tests/data/predictor_segments.jsonl was made by scripts/make_predictor_testdata.py: thinking from
both embedded models on 8 demo prompts, 120 windows per source, annotated by the lexicon.
"""

import json
import random
from pathlib import Path

import pytest

from tessy.predictors import PredictorSpec, load_predictor
from tessy.predictors.learned import (
    CAPABILITY,
    IGNORE,
    STYLE,
    LearnedPredictor,
    TrainConfig,
    _join,
    encode,
    pick_epoch,
    sample_rows,
    shift_left,
    split_by_doc,
    split_random,
    token_labels,
    train_predictor,
)
from tessy.predictors.scoring import AllCapability, evaluate, score, unit_index
from tessy.predictors.segments import read_segments
from tessy.roles import STUDENT, TEACHER

DATA = Path(__file__).parent / "data" / "predictor_segments.jsonl"


# --- labels and decoding -------------------------------------------------------------------------
def test_token_labels_judge_the_word_not_its_leading_space():
    text = "Well, so x = 3."
    offsets = [(0, 4), (4, 5), (5, 8), (8, 10), (10, 12), (12, 14), (14, 15), (0, 0)]
    labels = token_labels(text, offsets, [(0, 5), (6, 8)])
    assert labels == [STYLE, STYLE, STYLE, CAPABILITY, CAPABILITY, CAPABILITY, CAPABILITY, IGNORE]


@pytest.mark.parametrize("spans, expected", [
    ([(0, 4), (4, 5), (6, 8)], [(0, 8)]),      # only whitespace between: one span
    ([(0, 4), (9, 10)], [(0, 4), (9, 10)]),    # a word between: two spans
    ([], []),
])
def test_join_adjacent_style_tokens(spans, expected):
    assert _join("Well, so x = 3.", spans) == expected


def test_split_by_doc_never_leaks_a_doc():
    rows = [{"id": str(i), "doc": f"d{i % 5}", "text": "x", "style_spans": []} for i in range(50)]
    train, held = split_by_doc(rows, 0.2, seed=0)
    assert len(train) + len(held) == 50 and held
    assert not {r["doc"] for r in train} & {r["doc"] for r in held}



# --- the release's rules, written out as references ------------------------------------------------
def release_labels(tokenizer, text: str, spans: list, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) as the release's ReasoningDataset makes them: special tokens added, the
    text truncated to max_length; every token 0 but those whose range meets a span (offsets (0, 0),
    special tokens, skipped); then the labels shifted left by one, -100 last."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True, truncation=True,
                    max_length=max_length)
    labels = [0] * len(enc["input_ids"])
    for char_start, char_end in spans:
        for i, (token_start, token_end) in enumerate(enc["offset_mapping"]):
            if token_start == 0 and token_end == 0:
                continue
            if char_start <= token_start < char_end or token_start <= char_start < token_end:
                labels[i] = 1
    return enc["input_ids"], labels[1:] + [-100]


def release_split(rows: list, val_ratio: float, seed: int, sample_limit: int) -> tuple[list, list]:
    """(train, val) as the release's load_dataset draws them (the global generator, seeded twice)."""
    random.seed(seed)
    data = list(rows)
    if sample_limit < len(data):
        data = random.sample(data, sample_limit)
    random.seed(seed)
    random.shuffle(data)
    n_val = max(1, int(len(data) * val_ratio))
    return data[n_val:], data[:n_val]


def tokenizer_of(name: str):
    from transformers import AutoTokenizer

    from tessy.models import resolve

    return AutoTokenizer.from_pretrained(resolve(name))


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma3-270m"])  # no BOS; a BOS at (0, 0)
@pytest.mark.parametrize("max_length", [32, 512])
def test_overlap_labels_shifted_are_the_releases(model, max_length):
    tokenizer = tokenizer_of(model)
    segments = read_segments(DATA)
    rows = [r for r in segments if r["style_spans"]][:30] + segments[:10] + [
        {"text": "Okay,  so wait x = 3.\n\nHmm, let me check.", "style_spans": [[0, 9], [10, 14], [23, 27]]},
        {"text": "x=1. Wait", "style_spans": [[2, 6]]},  # spans starting and ending inside tokens
    ]
    assert sum(len(r["style_spans"]) for r in rows) >= 10
    whitespace_styled = 0
    for r in rows:
        ids, expected = release_labels(tokenizer, r["text"], r["style_spans"], max_length)
        enc = encode(tokenizer, r["text"], "", r["style_spans"], max_length, 0, rule="overlap")
        assert enc["input_ids"] == ids
        assert shift_left(enc["labels"]) == expected
        whitespace_styled += sum(o is not None and not r["text"][o[0]:o[1]].strip() and lab == STYLE
                                 for o, lab in zip(enc["offsets"], enc["labels"]))
    assert whitespace_styled  # the rule labels whitespace-only tokens, which first-char leaves out


def test_overlap_and_first_char_rules_differ_on_whitespace_and_partial_tokens():
    text = "so  Wait x"
    offsets = [(0, 2), (2, 3), (3, 8), (8, 10)]  # "so", " ", " Wait", " x"
    spans = [(4, 8)]  # "Wait"
    assert encode_rule(text, offsets, spans, "overlap") == [CAPABILITY, CAPABILITY, STYLE, CAPABILITY]
    assert encode_rule(text, offsets, [(2, 8)], "overlap") == [CAPABILITY, STYLE, STYLE, CAPABILITY]
    assert encode_rule(text, offsets, [(2, 8)], "first-char") == [CAPABILITY, IGNORE, STYLE, CAPABILITY]
    assert encode_rule(text, offsets + [(0, 0)], [(0, 2)], "overlap")[-1] == CAPABILITY  # a special token


def encode_rule(text, offsets, spans, rule):
    from tessy.predictors.learned import overlap_labels

    return overlap_labels(offsets, spans) if rule == "overlap" else token_labels(text, offsets, spans)


@pytest.mark.parametrize("n, ratio, limit", [(57, 0.05, 10_000), (300, 0.05, 120), (40, 0.25, 40), (3, 0.05, 10)])
def test_random_split_and_sample_are_the_releases(n, ratio, limit):
    rows = [{"id": f"r{i}", "text": "x", "style_spans": []} for i in range(n)]
    for seed in (0, 42):
        train, held = split_random(sample_rows(rows, limit, seed), ratio, seed)
        ref_train, ref_held = release_split(rows, ratio, seed, limit)
        assert [r["id"] for r in train] == [r["id"] for r in ref_train]
        assert [r["id"] for r in held] == [r["id"] for r in ref_held]
        assert len(held) == max(1, int(min(n, limit) * ratio))
    train, held = split_random(rows, 0.0, 0)
    assert held == [] and len(train) == n  # nothing held out: tessy's choice where the release keeps one


HISTORY = [
    {"epoch": 1, "eval_loss": 0.30, "token_accuracy": 0.90, "style_f1": 0.2},
    {"epoch": 2, "eval_loss": 0.25, "token_accuracy": 0.95, "style_f1": 0.1},
    {"epoch": 3, "eval_loss": 0.27, "token_accuracy": 0.95, "style_f1": 0.3},
    {"epoch": 4, "eval_loss": 0.26, "token_accuracy": 0.93, "style_f1": 0.3},
]


def release_best_epoch(values: list[float]) -> int:
    """The release's loop: save when val_acc > the best so far (from -1)."""
    best, best_epoch = -1.0, -1
    for epoch, value in enumerate(values, 1):
        if value > best:
            best, best_epoch = value, epoch
    return best_epoch


@pytest.mark.parametrize("metric", ["token_accuracy", "style_f1"])
def test_best_epoch_is_the_releases_choice(metric):
    assert pick_epoch(HISTORY, "best", metric)["epoch"] == release_best_epoch([h[metric] for h in HISTORY])


def test_best_eval_loss_is_the_lowest_and_last_is_last():
    assert pick_epoch(HISTORY, "best", "eval_loss")["epoch"] == 2
    assert pick_epoch(HISTORY, "last", "token_accuracy")["epoch"] == 4
    assert pick_epoch([{"epoch": 1, "train_loss": 0.5}], "best", "token_accuracy") is None  # nothing held out


# --- flags ------------------------------------------------------------------------------------------
def run_train_flags(monkeypatch, *flags) -> TrainConfig:
    import tessy.predictors.learned as learned
    from tessy.cli import main

    seen = []

    def fake(config, log=print):
        seen.append(config)
        return {"epochs": [{"epoch": 1}], "saved_epoch": 1, "keep": config.keep, "metric": config.metric,
                "role": "student", "n_train": 1, "n_eval": 0, "train_s": 0.0}

    monkeypatch.setattr(learned, "train_predictor", fake)
    assert main(["predictor", "train", "--data", "d.jsonl", "--out", "o", *flags]) == 0
    return seen[0]


def test_train_flags_reach_the_config(monkeypatch):
    default = run_train_flags(monkeypatch)
    assert (default.label_rule, default.class_weights, default.split, default.keep, default.metric, default.dtype,
            default.lr_schedule, default.max_samples) == ("first-char", True, "doc", "last", "token_accuracy",
                                                          "float32", "linear", None)
    release = run_train_flags(monkeypatch, "--label-rule", "overlap", "--labels", "next-token", "--no-class-weights",
                              "--split", "random", "--eval-fraction", "0.05", "--keep", "best", "--metric",
                              "style_f1", "--dtype", "bfloat16", "--lr-schedule", "constant", "--max-samples",
                              "10000", "--lr", "1e-5", "--seed", "42")
    assert (release.label_rule, release.labels, release.class_weights, release.split, release.eval_fraction,
            release.keep, release.metric, release.dtype, release.lr_schedule, release.max_samples, release.lr,
            release.seed) == ("overlap", "next-token", False, "random", 0.05, "best", "style_f1", "bfloat16",
                              "constant", 10000, 1e-5, 42)
    assert run_train_flags(monkeypatch, "--class-weights").class_weights is True


@pytest.mark.parametrize("flag, value", [("--dtype", "float8"), ("--label-rule", "last-char"), ("--split", "time"),
                                         ("--keep", "first"), ("--metric", "f1"), ("--lr-schedule", "cosine")])
def test_train_refuses_unknown_choices(capsys, flag, value):
    from tessy.cli import main

    with pytest.raises(SystemExit) as e:
        main(["predictor", "train", "--data", "d.jsonl", "--out", "o", flag, value])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_keep_best_needs_held_out_segments(tmp_path):
    config = TrainConfig(data=str(DATA), out=str(tmp_path / "p"), keep="best", eval_fraction=0.0)
    with pytest.raises(ValueError, match="keep best needs held-out segments"):
        train_predictor(config)


# --- the inference dtype -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A 2-label token classifier of one small layer with the student's tokenizer, and a
    tessy_predictor.json that asks for bfloat16."""
    from transformers import LlamaConfig, LlamaForTokenClassification

    tokenizer = tokenizer_of("smollm2-135m-instruct")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=2)
    path = tmp_path_factory.mktemp("tiny") / "b_s"
    LlamaForTokenClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "tessy_predictor.json").write_text(json.dumps({"semantics": "same-token", "max_length": 32,
                                                          "dtype": "bfloat16"}))
    return path


def test_the_checkpoint_dtype_and_the_spec_over_it(tiny_checkpoint):
    import torch

    path = str(tiny_checkpoint)
    assert load_predictor(path).model.dtype == torch.bfloat16
    assert load_predictor({"path": path, "dtype": "float32"}).model.dtype == torch.float32
    assert load_predictor({"path": path}).model.dtype == torch.bfloat16  # no dtype in the spec: the checkpoint's
    meta = json.loads((tiny_checkpoint / "tessy_predictor.json").read_text())
    try:
        del meta["dtype"]
        (tiny_checkpoint / "tessy_predictor.json").write_text(json.dumps(meta))
        assert load_predictor(path).model.dtype == torch.float32  # the default
        [spans] = load_predictor({"path": path, "dtype": "bfloat16"}).style_spans(["Okay, so x = 3."])
        assert all(0 <= s < e <= 15 for s, e in spans)  # it runs in bfloat16
    finally:
        (tiny_checkpoint / "tessy_predictor.json").write_text(json.dumps({**meta, "dtype": "bfloat16"}))


def test_a_spec_dtype_is_checked():
    assert PredictorSpec.parse({"path": "x", "dtype": "bfloat16"}).dtype == "bfloat16"
    with pytest.raises(ValueError, match="dtype: 'bf16' is not one of float32, bfloat16, float16"):
        PredictorSpec.parse({"path": "x", "dtype": "bf16"}, "student_predictor")

# --- metrics ---------------------------------------------------------------------------------------
ROWS = [
    {"source": STUDENT, "text": "Okay, so compute it", "style_spans": [[0, 8]]},
    {"source": TEACHER, "text": "x = 1. Wait, y", "style_spans": [[7, 11]]},
]


def test_perfect_predictor_scores_one():
    m = score(ROWS, [[(0, 8)], [(7, 11)]])
    assert m == {"style_precision": 1.0, "style_recall": 1.0, "style_f1": 1.0,
                 "boundary_exact": 1.0, "boundary_within_word": 1.0, "n_segments": 2}


def test_all_capability_predictor():
    m = evaluate(AllCapability(), ROWS)
    assert m["style_f1"] == 0.0 and m["style_recall"] == 0.0
    # Student: true cut at "compute" (9) vs 0; teacher: true cut at "Wait" (7) vs no cut (14).
    assert m["boundary_exact"] == 0.0


def test_boundary_within_one_word():
    # Predicting "Okay," only: cut at "so" instead of "compute": one unit off.
    m = score(ROWS[:1], [[(0, 5)]])
    assert m["boundary_exact"] == 0.0 and m["boundary_within_word"] == 1.0
    assert 0 < m["style_recall"] < 1 and m["style_precision"] == 1.0


def test_unit_index_of_no_cut_is_past_the_last_unit():
    assert unit_index("a b", 3) == 2 and unit_index("a b", 0) == 0


def test_unknown_predictor_spec(tmp_path):
    with pytest.raises(ValueError, match="tessy predictor train"):
        load_predictor(str(tmp_path))


def test_committed_data_is_valid():
    rows = read_segments(DATA)
    assert len(rows) >= 200 and {r["source"] for r in rows} == {STUDENT, TEACHER}
    assert sum(len(r["style_spans"]) for r in rows) >= 30


# --- real training (slow) ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("predictor") / "b_s"
    # Both roles' segments: the lexicon marks few words in the small models' thinking (about 1% of
    # characters), so one role alone holds too few style tokens to learn from in a test.
    # Seed 3 holds out 4 docs with 8 style spans (seed 0 would hold out only 2): the set is sparse.
    config = TrainConfig(data=str(DATA), out=str(out), epochs=3, batch_size=16, max_length=48, lr=2e-4, seed=3,
                         device="cpu")
    meta = train_predictor(config, log=print)  # shown with -s
    return out, meta


@pytest.fixture(scope="module")
def release_run(tmp_path_factory):
    """The release's recipe through the command, at a tiny scale: overlap labels, next-token, plain
    cross-entropy, a random split, the best epoch kept, bfloat16 at inference. The held-out style F1
    is scripted (0.5, then 0.2) so that the first epoch is the best; everything else is real."""
    from tessy.cli import main
    from tessy.predictors import scoring

    out = tmp_path_factory.mktemp("release-recipe") / "b"
    real, scripted_f1 = scoring.evaluate, iter([0.5, 0.2])

    def scripted(predictor, rows, batch_size=64):
        metrics = real(predictor, rows, batch_size)
        return {**metrics, "style_f1": next(scripted_f1)} if isinstance(predictor, LearnedPredictor) else metrics

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scoring, "evaluate", scripted)
        assert main(["predictor", "train", "--data", str(DATA), "--out", str(out), "--label-rule", "overlap",
                     "--labels", "next-token", "--no-class-weights", "--split", "random", "--eval-fraction", "0.25",
                     "--max-samples", "40", "--keep", "best", "--metric", "style_f1", "--lr", "1e-4",
                     "--lr-schedule", "constant", "--epochs", "2", "--batch-size", "16", "--max-length", "32",
                     "--dtype", "bfloat16", "--seed", "42", "--device", "cpu"]) == 0
    return out, json.loads((out / "tessy_predictor.json").read_text())


@pytest.mark.slow
def test_release_recipe_records_its_choices(release_run):
    _, meta = release_run
    assert (meta["label_rule"], meta["semantics"], meta["class_weights"], meta["dtype"]) == (
        "overlap", "next-token", [1.0, 1.0], "bfloat16")
    assert "overlap" in meta["label_semantics"] and "token t+1" in meta["label_semantics"]
    assert [h["style_f1"] for h in meta["epochs"]] == [0.5, 0.2]
    assert (meta["keep"], meta["metric"], meta["best_epoch"], meta["best_value"], meta["saved_epoch"]) == (
        "best", "style_f1", 1, 0.5, 1)
    assert len(meta["train_losses"]) == 2 * 2  # 30 training segments in batches of 16, two epochs
    train, held = release_split(read_segments(DATA), 0.25, 42, 40)
    assert (meta["n_train"], meta["n_eval"]) == (len(train), len(held)) == (30, 10)


@pytest.mark.slow
def test_release_recipe_saves_the_best_epochs_weights(release_run):
    """The saved weights give the held-out loss of epoch 1 (the kept one), not that of epoch 2,
    on labels made by the release's rule."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForTokenClassification

    out, meta = release_run
    first, second = (h["eval_loss"] for h in meta["epochs"])
    assert abs(first - second) > 1e-3  # the epochs' weights differ enough to tell apart
    model = AutoModelForTokenClassification.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = tokenizer_of("smollm2-135m-instruct")
    _, held = release_split(read_segments(DATA), 0.25, 42, 40)
    total, count = 0.0, 0
    with torch.no_grad():
        for r in held:
            ids, labels = release_labels(tokenizer, r["text"], r["style_spans"], 32)
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            total += F.cross_entropy(logits, torch.tensor(labels), ignore_index=-100, reduction="sum").item()
            count += sum(lab != -100 for lab in labels)
    assert abs(total / count - first) < 5e-4 < abs(total / count - second)
    predictor = load_predictor(str(out))
    assert predictor.model.dtype == torch.bfloat16 and predictor.semantics == "next-token"


@pytest.mark.slow
def test_training_loss_falls(trained):
    _, meta = trained
    losses = meta["train_losses"]
    quarter = max(len(losses) // 4, 1)
    assert sum(losses[-quarter:]) / quarter < 0.7 * sum(losses[:quarter]) / quarter


@pytest.mark.slow
def test_beats_all_capability_on_held_out(trained):
    _, meta = trained
    last, trivial = meta["epochs"][-1], meta["baseline_all_capability"]
    assert meta["n_eval"] > 0 and trivial["style_f1"] == 0.0
    # The committed set is sparse (48 style tokens in training), so the margin is small: measured
    # held-out style F1 0.087 against 0.0.
    assert last["style_f1"] > trivial["style_f1"]
    assert last["boundary_within_word"] >= trivial["boundary_within_word"]


@pytest.mark.slow
def test_saves_and_loads(trained):
    out, meta = trained
    saved = json.loads((out / "tessy_predictor.json").read_text())
    assert saved["role"] == "student+teacher" and saved["labels"] == {"0": "capability", "1": "style"}
    assert saved["base"] == "smollm2-135m-instruct" and saved["data_sha256"]
    assert (saved["label_rule"], saved["dtype"], saved["keep"], saved["saved_epoch"]) == ("first-char", "float32",
                                                                                         "last", 3)
    assert saved["best_epoch"] in (1, 2, 3) and saved["metric"] == "token_accuracy"
    predictor = load_predictor(str(out))
    assert isinstance(predictor, LearnedPredictor) and predictor.name == "learned:b_s"
    _, held = split_by_doc(read_segments(DATA), meta["config"]["eval_fraction"], meta["config"]["seed"])
    again = evaluate(predictor, held, batch_size=16)  # batches as in training: same padding, same numbers
    assert again == {k: meta["epochs"][-1][k] for k in again}  # the loaded model predicts as the trained one did


@pytest.mark.slow
def test_batched_equals_one_by_one_and_long_text(trained):
    out, _ = trained
    predictor = LearnedPredictor.load(out, device="cpu", batch_size=4)
    texts = [r["text"] for r in read_segments(DATA)[:9]]
    assert predictor.style_spans(texts) == [predictor.style_spans([t])[0] for t in texts]
    long_text = " ".join(texts * 3)  # longer than max_length tokens: read in pieces
    [spans] = predictor.style_spans([long_text])
    assert all(0 <= s < e <= len(long_text) for s, e in spans)
    assert max((e for _, e in spans), default=0) > len(long_text) // 2 or not spans


@pytest.mark.slow
def test_eval_command_side_by_side(trained, tmp_path):
    from tessy.cli import main

    out, _ = trained
    path = tmp_path / "m.json"
    assert main(["predictor", "eval", "--data", str(DATA), "--predictor", "lexicon", "--predictor", str(out),
                 "--source", "student", "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    assert set(results) == {"lexicon", "learned:b_s"}
    for metrics in results.values():
        assert set(metrics) == {"style_precision", "style_recall", "style_f1", "boundary_exact",
                                "boundary_within_word", "n_segments"}
    # The set was annotated by the lexicon, so the lexicon agrees with it perfectly.
    assert results["lexicon"]["style_f1"] == 1.0


@pytest.mark.slow
def test_synth_with_learned_predictor_records_its_cuts(trained, tmp_path):
    from tessy.config import load_config
    from tessy.engine.records import read_records
    from tessy.engine.synth import synthesize

    out, _ = trained
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": q}) + "\n" for i, q in enumerate(
        ["Write a function that reverses a string.", "Count the vowels in a word.", "Sum the digits of n."])))
    config = load_config(max_think_tokens=48, max_answer_tokens=8, batch_size=3, student_predictor=str(out))
    summary = synthesize(config, prompts, tmp_path / "r.jsonl", progress=False)
    records = read_records(tmp_path / "r.jsonl")
    assert summary["samples"] == 3 and summary["timing"]["predict_s"] > 0
    names = {STUDENT: "learned:b_s", TEACHER: "lexicon"}
    for r in records:
        assert r["stats"]["predictors"] == names
        assert len(r["stats"]["cuts"]) == r["stats"]["switches"]
        assert all(c["predictor"] == names[c["role"]] for c in r["stats"]["cuts"])
    assert any(c["role"] == STUDENT for r in records for c in r["stats"]["cuts"])


@pytest.mark.slow
def test_llm_annotator_on_the_embedded_teacher():
    """Table 2 through the real teacher: every segment ends annotated or listed as failed, with
    every attempt's failure recorded."""
    from tessy.config import load_config
    from tessy.engine.synth import load_backends
    from tessy.predictors.annotate import Segment, annotate_llm, backend_asker

    teacher = load_backends(load_config())[TEACHER]
    segs = [Segment(f"s{i}", STUDENT, t) for i, t in enumerate(
        ["Okay, so let's see. The sum is 3 + 4 = 7.", "Hmm, wait. I think we need a loop here.",
         "First, sort the list; then take the middle element."])]
    done, report = annotate_llm(segs, backend_asker(teacher, 48), "teacher", retries=1, batch_size=3)
    assert len(done) + len(report.failed) == 3
    assert report.parse_failures >= 2 * len(report.failed)
    for s in done:
        assert all(0 <= a < b <= len(s.text) for a, b in s.style_spans)


@pytest.mark.slow
def test_streamed_cuts_keep_what_whole_turns_keep_with_a_learned_predictor(trained, tmp_path):
    """The same seeds, the real models, the learned B_S: turns stopped at their final cut write the
    same records as whole turns, and the student generates fewer tokens. One row per model call, so
    no batch changes the numerics."""
    from tessy.config import load_config
    from tessy.engine.records import read_records
    from tessy.engine.synth import synthesize

    out, _ = trained
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": q}) + "\n" for i, q in enumerate(
        ["Write a function that reverses a string.", "Sum the digits of n."])))
    runs = {}
    for streamed in (True, False):
        config = load_config(max_think_tokens=64, max_answer_tokens=8, batch_size=1, in_flight=1,
                             student_predictor=str(out), student={"stream_cuts": streamed},
                             teacher={"stream_cuts": streamed})
        summary = synthesize(config, prompts, tmp_path / f"{streamed}.jsonl", progress=False)
        runs[streamed] = summary, sorted([(r["id"], r["segments"], r["answer"]) for r in read_records(
            tmp_path / f"{streamed}.jsonl")])
    (on, records_on), (off, records_off) = runs[True], runs[False]
    assert records_on == records_off
    assert on["stream_cuts"] == {STUDENT: True, TEACHER: True}
    assert on["roles"][STUDENT]["stopped_at_cut"] > 0
    assert on["roles"][STUDENT]["generated_tokens"] < off["roles"][STUDENT]["generated_tokens"]
