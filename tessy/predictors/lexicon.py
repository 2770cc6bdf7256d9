"""The lexicon predictor: whole-word matches of a phrase list are style, everything else capability.

It needs no training: it gives weak labels for `tessy annotate` and a baseline for the learned
predictors. The default list is Table 2's examples and the usual discourse of reasoning models.
"""

from __future__ import annotations

import re

from tessy.predictors.eq5 import eq5_cuts

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



class LexiconPredictor:
    """Marks whole-word matches of a phrase list as style; everything else is capability.

    Needs no training: it gives weak labels and a baseline for the learned predictors. A
    `StreamingPredictor` (tessy/predictors/__init__.py): `cut_settled`, and `inline`.
    """

    def __init__(self, phrases: tuple[str, ...] | list[str] = DEFAULT_STYLE_PHRASES, name: str = "lexicon"):
        self.name = name
        self.phrases = tuple(phrases)
        alternatives = sorted({p.strip().lower() for p in phrases if p.strip()}, key=len, reverse=True)
        # (?<!\w) and (?!\w) instead of \b so that phrases ending in punctuation still match.
        body = "|".join(re.escape(p).replace(r"\ ", r"\s+").replace("'", "['’]") for p in alternatives)
        self._pattern = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)
        self._normal = {_normalized(p) for p in alternatives}
        self._longest = max((len(p) for p in self._normal), default=0)
        self.inline = True  # cheap enough to read every streamed token (tessy/engine/streaming.py)

    def style_spans(self, texts: list[str], contexts: list[str] | None = None) -> list[list[tuple[int, int]]]:
        return [[m.span() for m in self._pattern.finditer(t)] for t in texts]

    def cuts(self, texts: list[str], contexts: list[str], role: str) -> list[int | None]:
        return eq5_cuts(texts, self.style_spans(texts, contexts), role)

    def cut_settled(self, text: str, b: int) -> bool:
        """Whether more text after `text` can no longer change a cut at `b` (streamed cuts): no
        phrase may still be growing from a word that starts at or before `b`, that is, no such word
        begins a tail of `text` that a phrase starts with (or equals, since a match also needs the
        character after it)."""
        for m in re.finditer(r"(?<!\w)\w", text[: b + 1]):
            tail = _normalized(text[m.start():])
            if len(tail) > self._longest:
                continue
            if any(p.startswith(tail) for p in self._normal):
                return False
        return True


def _normalized(text: str) -> str:
    """Lower case, one space for any whitespace, one apostrophe: the forms the pattern treats alike."""
    return re.sub(r"\s+", " ", text.lower().replace("’", "'"))
