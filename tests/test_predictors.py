import pytest

from tessy.predictors import boundary
from tessy.predictors.lexicon import LexiconPredictor
from tessy.roles import STUDENT, TEACHER


@pytest.mark.parametrize("text, role, expected", [
    ("Okay, so compute the sum", STUDENT, "Okay, so "),     # B_S: cut at the first capability character
    ("Okay, let's see.", STUDENT, "Okay, let's see."),       # all style: no cut
    ("compute it", STUDENT, ""),                               # capability at once: empty span
    ("sum = a + b. Wait, that", TEACHER, "sum = a + b. "),    # B_T: cut at the first style character
    ("sum = a + b; ", TEACHER, "sum = a + b; "),              # no style: no cut
    ("Hmm, x", TEACHER, ""),
    ("the also-ran", TEACHER, "the "),                         # "also" is a whole word here
    ("calso = 1", TEACHER, "calso = 1"),                       # but not inside a word
])
def test_lexicon_boundary_follows_eq5(text, role, expected):
    [spans] = LexiconPredictor().style_spans([text])
    assert text[: boundary(text, spans, role)] == expected


def test_custom_phrases_and_curly_apostrophe():
    p = LexiconPredictor(["let's go"])
    assert p.style_spans(["Let’s  go now", "so"]) == [[(0, 9)], []]


def test_lexicon_is_case_insensitive_and_multiword():
    [spans] = LexiconPredictor().style_spans(["WAIT. On the other hand x"])
    assert (0, 4) in spans and (6, 23) in spans
