"""Boundary predictors B_S and B_T (paper, section 2.2, "Generation Rollback", Eq. 5).

A predictor labels the characters of a span as style or capability. The loop then cuts:
- a student span at its first capability character (B_S keeps only style);
- a teacher span at its first style character (B_T keeps only capability).
Boundaries are character offsets, so a predictor's tokenizer never has to match a generator's.
"""

from __future__ import annotations

import re
from typing import Protocol

STUDENT, TEACHER = "student", "teacher"

# Table 2's examples first, then the usual discourse of reasoning models.
DEFAULT_STYLE_PHRASES = (
    "well", "okay", "ok", "so", "let's see", "let me see", "i think", "to begin with", "in this case",
    "for example", "but if",
    "wait", "hmm", "hm", "alright", "all right", "oh", "ah", "um", "uh", "actually", "but", "now", "then",
    "first", "firstly", "next", "finally", "also", "anyway", "right", "yeah", "yes", "no", "maybe", "perhaps",
    "hold on", "let me", "let me think", "let me check", "let me recall", "let me verify", "let me try",
    "let's", "let us", "i need to", "we need to", "i should", "we should", "i guess", "i wonder",
    "i remember", "i recall", "i'm not sure", "i am not sure", "on the other hand", "in other words",
    "that said", "that's", "that is", "so basically", "basically", "interesting", "got it", "makes sense",
    "the problem says", "the question is", "to sum up", "in summary", "therefore", "thus", "hence",
    "double-check", "double check", "again", "another thing", "of course", "however", "instead",
    "otherwise", "sure", "great", "good", "hmm,", "hmm.", "okay,", "wait,",
)


class BoundaryPredictor(Protocol):
    name: str

    def style_spans(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """For each text, its style spans as [start, end) character offsets, in order."""
        ...


class LexiconPredictor:
    """Marks whole-word matches of a phrase list as style; everything else is capability.

    Needs no training: it gives weak labels and a baseline for the learned predictors.
    """

    def __init__(self, phrases: tuple[str, ...] | list[str] = DEFAULT_STYLE_PHRASES, name: str = "lexicon"):
        self.name = name
        self.phrases = tuple(phrases)
        alternatives = sorted({p.strip().lower() for p in phrases if p.strip()}, key=len, reverse=True)
        # (?<!\w) and (?!\w) instead of \b so that phrases ending in punctuation still match.
        body = "|".join(re.escape(p).replace(r"\ ", r"\s+").replace("'", "['’]") for p in alternatives)
        self._pattern = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)

    def style_spans(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        return [[m.span() for m in self._pattern.finditer(t)] for t in texts]


def is_capability_char(ch: str) -> bool:
    # Whitespace and punctuation belong to no side: they never start a cut.
    return ch.isalnum()


def boundary(text: str, style_spans: list[tuple[int, int]], role: str) -> int:
    """Eq. 5: where the loop cuts `text`, a character offset; `len(text)` means no cut.

    On a student span it is the first capability character, on a teacher span the first style
    character.
    """
    if role == TEACHER:
        return min((start for start, _ in style_spans), default=len(text))
    inside = [False] * len(text)
    for start, end in style_spans:
        for i in range(max(start, 0), min(end, len(text))):
            inside[i] = True
    for i, ch in enumerate(text):
        if not inside[i] and is_capability_char(ch):
            return i
    return len(text)


def load_predictor(spec: str, phrases: list[str] | None = None) -> BoundaryPredictor:
    """`lexicon` (optionally with a custom phrase list), or the directory of a trained checkpoint
    (`tessy predictor train`), which runs on the GPU when there is one."""
    if spec == "lexicon":
        return LexiconPredictor(phrases or DEFAULT_STYLE_PHRASES)
    from tessy.learned import LearnedPredictor, is_checkpoint

    if is_checkpoint(spec):
        return LearnedPredictor.load(spec)
    raise ValueError(f"unknown predictor {spec!r}: use 'lexicon' or a directory written by `tessy predictor train`")
