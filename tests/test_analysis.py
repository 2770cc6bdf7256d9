"""`tessy analyze` (tessy/dataset/analysis.py, tessy/dataset/plots.py) on small hand-made datasets whose numbers
are known; the NLL against a direct per-token computation on the real student."""

import json

import pytest

from tessy.dataset.analysis import (
    analyze,
    load_datasets,
    response_text,
    source_switches,
    student_nll,
    teacher_share,
    token_labels,
)
from tessy.dataset.plots import write_report
from tessy.predictors.lexicon import LexiconPredictor
from tessy.roles import STUDENT, TEACHER


class WordTokenizer:
    """Whitespace tokens: counts are easy to check by hand."""

    def tokenize(self, text):
        return text.split()

    def convert_tokens_to_string(self, tokens):
        return " ".join(tokens)


def record(i, segments, method="m", stop="student_closed"):
    think = "".join(t for s, p, t in segments if p == "think")
    answer = "".join(t for s, p, t in segments if p == "answer")
    return {
        "id": f"q{i}",
        "prompt": f"question {i}",
        "messages": [{"role": "user", "content": f"question {i}"},
                     {"role": "assistant", "content": f"<think>\n{think.strip()}\n</think>\n\n{answer.strip()}"}],
        "segments": [{"source": s, "part": p, "text": t, "n_tokens": len(t.split())} for s, p, t in segments],
        "answer": answer.strip(),
        "method": method,
        "stats": {"stop_reason": stop},
    }


STUDENT_DATA = [record(i, [(STUDENT, "think", f"okay so let me see number n{i} "), (STUDENT, "answer", "it is fine")],
                       "student-only") for i in range(4)]
TEACHER_DATA = [record(i, [(TEACHER, "think", f"compute x = x{i} * 2 modulo seven "), (TEACHER, "answer", "return x")],
                       "teacher-only", "think_budget") for i in range(4)]
MIXED_DATA = [record(i, [(STUDENT, "think", "okay so "), (TEACHER, "think", f"x = {i} * 2 "),
                         (STUDENT, "think", "wait "), (STUDENT, "answer", "done")], "tessy") for i in range(4)]


def write(tmp_path, name, records):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def datasets(tmp_path, **named):
    return load_datasets([write(tmp_path, n, r) for n, r in named.items()])


def test_identical_datasets_have_similarity_one(tmp_path):
    ds = datasets(tmp_path, a=STUDENT_DATA, b=[dict(r, method="other") for r in STUDENT_DATA])
    result = analyze(ds, WordTokenizer())
    assert result["similarity"]["matrix"][0][1] == pytest.approx(1.0)
    assert result["similarity"]["matrix"][1][0] == pytest.approx(1.0)


def test_disjoint_vocabularies_have_similarity_zero_and_the_matrix_is_symmetric(tmp_path):
    ds = datasets(tmp_path, s=STUDENT_DATA, t=TEACHER_DATA, m=MIXED_DATA)
    m = analyze(ds, WordTokenizer())["similarity"]["matrix"]
    assert m[0][1] == pytest.approx(0.0)  # no word in common
    for i in range(3):
        assert m[i][i] == pytest.approx(1.0)
        for j in range(3):
            assert m[i][j] == pytest.approx(m[j][i])
    assert 0 < m[2][0] < 1 and 0 < m[2][1] < 1


def test_teacher_share_lengths_switches_and_close_reasons(tmp_path):
    ds = datasets(tmp_path, s=STUDENT_DATA, t=TEACHER_DATA, m=MIXED_DATA)
    per = analyze(ds, WordTokenizer())["per_dataset"]
    assert [d.name for d in ds] == ["student-only", "teacher-only", "tessy"]  # names from `method`
    assert per["teacher-only"]["teacher_share"] == 1.0
    assert per["student-only"]["teacher_share"] == 0.0
    assert per["tessy"]["teacher_share"] == pytest.approx(5 / 9)  # "okay so" + "x = i * 2" + "wait" + "done"
    assert per["tessy"]["switches_per_sample"] == 2  # student -> teacher -> student
    assert per["teacher-only"]["switches_per_sample"] == 0
    assert per["teacher-only"]["close_reasons"] == {"think_budget": 4}
    # "<think>" + 7 thinking words + "</think>" + 3 answer words, whitespace tokens
    assert per["student-only"]["mean_tokens"] == per["student-only"]["median_tokens"] == 12


def test_only_shared_prompts_are_compared(tmp_path):
    ds = datasets(tmp_path, s=STUDENT_DATA, t=TEACHER_DATA[1:3])
    assert [list(d.records) for d in ds] == [["q1", "q2"], ["q1", "q2"]]
    assert analyze(ds, WordTokenizer())["shared_prompts"] == 2


@pytest.mark.parametrize(
    "contents, error",
    [
        ([[], STUDENT_DATA], "no records"),
        ([STUDENT_DATA[:1], TEACHER_DATA[1:2]], "share no prompt"),
    ],
)
def test_bad_inputs_are_refused(tmp_path, contents, error):
    paths = [write(tmp_path, f"d{i}", c) for i, c in enumerate(contents)]
    with pytest.raises(ValueError, match=error):
        load_datasets(paths)


def test_names_fall_back_to_file_stems_when_methods_clash(tmp_path):
    ds = datasets(tmp_path, first=STUDENT_DATA, second=STUDENT_DATA)
    assert [d.name for d in ds] == ["first", "second"]


def test_top_words_and_pca_cover_every_dataset(tmp_path):
    ds = datasets(tmp_path, s=STUDENT_DATA, t=TEACHER_DATA)
    result = analyze(ds, WordTokenizer(), top_n=20)
    words = result["top_words"]["words"]
    assert "okay" in words and "compute" in words
    i = words.index("compute")
    assert result["top_words"]["per_1000"]["student-only"][i] == 0
    assert result["top_words"]["per_1000"]["teacher-only"][i] > 0
    assert len(result["pca"]["points"]) == 8
    assert {p["dataset"] for p in result["pca"]["points"]} == {"student-only", "teacher-only"}


def test_report_files(tmp_path):
    ds = datasets(tmp_path, s=STUDENT_DATA, t=TEACHER_DATA, m=MIXED_DATA)
    result = analyze(ds, WordTokenizer(),
                     nll=lambda d: {k: {"nll": 1.0, "tokens": 3} for k in ("all", "style", "capability")})
    files = write_report(result, tmp_path / "report")
    for name in ("similarity", "pca", "top_words", "lengths_share", "student_nll"):
        assert (tmp_path / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report" / "analysis.json").read_text()) == json.loads(json.dumps(result))
    page = (tmp_path / "report" / "index.html").read_text()
    assert all(f'src="{n}.png"' in page for n in ("similarity", "pca")) and "teacher-only" in page
    header = page[page.index("<h1>"):page.index("<h2>")]
    assert f"{result['shared_prompts']} shared prompts" in header and "{" not in header  # words, not JSON
    assert files["json"].endswith("analysis.json")


def test_token_labels():
    body = "Okay, so x = 2.\n</think>\n\n2"
    offsets = [(0, 4), (4, 5), (5, 8), (8, 10), (10, 12), (12, 14), (14, 16), (16, 24), (24, 26), (26, 27)]
    style = LexiconPredictor().style_spans([body])[0]
    markers = [(16, 26)]  # the lexicon's "okay," takes the comma with it
    assert token_labels(body, offsets, style, markers) == [
        "style", "style", "style", "capability", "other", "capability", "other", "marker", "marker", "capability"]


def test_response_text_and_switches_ignore_empty_segments():
    r = record(0, [(STUDENT, "think", "a "), (TEACHER, "think", ""), (STUDENT, "think", "b"), (STUDENT, "answer", "c")])
    assert source_switches(r) == 0
    assert response_text(r) == "a b\nc"
    assert teacher_share(r, lambda t: len(t.split())) == 0.0


# --- the real student ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def student():
    from tessy.models import STUDENT_DEFAULT, load

    return load(STUDENT_DEFAULT)


@pytest.mark.slow
def test_nll_matches_a_direct_computation(student):
    """Batched and padded `student_nll` equals the loss computed token by token, one forward each."""
    import torch

    from tessy.dataset.analysis import scoring_inputs
    from tessy.profiles import PLAIN, Renderer

    model, tokenizer = student
    records = [
        record(0, [(STUDENT, "think", "Okay, so we add the numbers: 2 + 3 = 5."),
                   (STUDENT, "answer", "The sum is 5.")]),
        record(1, [(TEACHER, "think", "def f(xs): return sum(xs)"), (STUDENT, "answer", "Use sum().")]),
    ]
    predictor = LexiconPredictor()
    got = student_nll(records, model, Renderer(PLAIN, tokenizer), predictor, batch_size=2)

    expected = {"all": [], "style": [], "capability": []}
    for r in records:
        prefix, body, _ = scoring_inputs(r, Renderer(PLAIN, tokenizer))
        enc = tokenizer(prefix + body, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        for pos, (a, b) in enumerate(enc["offset_mapping"]):
            if a < len(prefix) or b <= a:
                continue
            with torch.no_grad():
                logits = model(torch.tensor([ids[:pos]])).logits[0, -1].float()
            nll = -torch.log_softmax(logits, -1)[ids[pos]].item()
            expected["all"].append(nll)
            text = body[a - len(prefix) : b - len(prefix)]
            if text.strip() in ("Okay", ",", "so"):  # the lexicon's "okay," and "so": the only style here
                expected["style"].append(nll)
    assert got["all"]["tokens"] == len(expected["all"])
    assert got["all"]["nll"] == pytest.approx(sum(expected["all"]) / len(expected["all"]), abs=1e-3)
    assert got["style"]["tokens"] == len(expected["style"]) == 3
    assert got["style"]["nll"] == pytest.approx(sum(expected["style"]) / 3, abs=1e-3)
    assert got["capability"]["tokens"] > 10
