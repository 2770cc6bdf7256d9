"""Boundary predictors B_S and B_T (paper, section 2.2, "Generation Rollback", Eq. 5).

A predictor labels the characters of a span as style or capability. The loop then cuts:
- a student span at its first capability character (B_S keeps only style);
- a teacher span at its first style character (B_T keeps only capability).
Boundaries are character offsets, so a predictor's tokenizer never has to match a generator's.

`cuts` is what the loop asks: for each new span (with the thinking before it as context), the
character offset to cut at, or None for no cut. The lexicon and tessy's own checkpoints answer with
Eq. 5 over their style spans (`boundary`); a checkpoint in the authors' release format answers with
the release's own rule (tessy/learned.py, `next-token` labels).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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

    def style_spans(self, texts: list[str], contexts: list[str] | None = None) -> list[list[tuple[int, int]]]:
        """For each text, its style spans as [start, end) character offsets, in order."""
        ...

    def cuts(self, texts: list[str], contexts: list[str], role: str) -> list[int | None]:
        """For each span of `role`, where the loop cuts it (a character offset), or None."""
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

    def style_spans(self, texts: list[str], contexts: list[str] | None = None) -> list[list[tuple[int, int]]]:
        return [[m.span() for m in self._pattern.finditer(t)] for t in texts]

    def cuts(self, texts: list[str], contexts: list[str], role: str) -> list[int | None]:
        return eq5_cuts(texts, self.style_spans(texts, contexts), role)


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


def eq5_cuts(texts: list[str], styles: list[list[tuple[int, int]]], role: str) -> list[int | None]:
    """`boundary` for each text, None where it does not cut."""
    out = []
    for text, spans in zip(texts, styles):
        b = boundary(text, spans, role)
        out.append(b if b < len(text) else None)
    return out


LABEL_SEMANTICS = ("same-token", "next-token")


@dataclass(frozen=True)
class PredictorSpec:
    """A token-classification checkpoint and how to read it (the config's mapping form).

    - `labels`: `same-token`, the logits at token t classify token t (tessy's own training);
      `next-token`, they classify token t+1 (the authors' release shifts its labels left by one) and
      the release's cut rule applies (tessy/learned.py).
    - `style_label`: the class id that means style (the release: 1).
    - `context_tokens`: the most predictor tokens read, left context included; the text before the
      span fills what the span leaves (the release: 200, left-truncated). None: the checkpoint's own.
    """

    path: str
    labels: str = "same-token"
    style_label: int = 1
    context_tokens: int | None = None

    @classmethod
    def parse(cls, spec: dict, where: str = "predictor") -> "PredictorSpec":
        known = {"path", "labels", "style_label", "context_tokens"}
        if unknown := sorted(set(spec) - known):
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if not isinstance(spec.get("path"), str) or not spec["path"]:
            raise ValueError(f"{where}: `path` must name a checkpoint directory")
        out = cls(**spec)
        if out.labels not in LABEL_SEMANTICS:
            raise ValueError(f"{where}.labels: {out.labels!r} is not one of {', '.join(LABEL_SEMANTICS)}")
        if out.style_label not in (0, 1):
            raise ValueError(f"{where}.style_label: {out.style_label!r} must be 0 or 1 (a 2-label classifier)")
        if out.context_tokens is not None and (not isinstance(out.context_tokens, int) or out.context_tokens < 2):
            raise ValueError(f"{where}.context_tokens: {out.context_tokens!r} must be an integer of at least 2")
        return out


def load_predictor(spec: str | dict, phrases: list[str] | None = None, where: str = "predictor") -> BoundaryPredictor:
    """`lexicon` (optionally with a custom phrase list); the directory of a checkpoint written by
    `tessy predictor train`; or a `PredictorSpec` mapping for a plain token-classification checkpoint
    such as the authors' release. A learned predictor runs on the GPU when there is one."""
    if spec == "lexicon":
        return LexiconPredictor(phrases or DEFAULT_STYLE_PHRASES)
    from tessy.learned import LearnedPredictor, is_checkpoint

    if isinstance(spec, dict):
        parsed = PredictorSpec.parse(spec, where)
        return LearnedPredictor.load(parsed.path, parsed)
    if isinstance(spec, str) and is_checkpoint(spec):
        return LearnedPredictor.load(spec)
    raise ValueError(f"{where}: unknown predictor {spec!r}: use 'lexicon', a directory written by `tessy predictor "
                     f"train`, or {{path: DIR, labels: next-token | same-token, style_label: 1, context_tokens: 200}} "
                     f"for a plain token-classification checkpoint")
