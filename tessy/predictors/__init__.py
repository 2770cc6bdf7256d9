"""Boundary predictors B_S and B_T (paper, section 2.2, "Generation Rollback", Eq. 5).

A predictor labels the characters of a span as style or capability, and the loop cuts (Eq. 5,
`eq5.py`):
- a student span at its first capability character (B_S keeps only style);
- a teacher span at its first style character (B_T keeps only capability).
Boundaries are character offsets, so a predictor's tokenizer never has to match a generator's.

`cuts` is what the loop asks: for each new span (with the thinking before it as context), the
character offset to cut at, or None for no cut. The lexicon (`lexicon.py`) and tessy's own
checkpoints (`learned.py`) answer with Eq. 5 over their style spans; a checkpoint in the authors'
release format answers with the release's own rule (`learned.py`, `next-token` labels).
`scoring.py` scores predictors against annotated segments (`tessy predictor eval`).

This file holds the protocol, the description of a plain checkpoint (`PredictorSpec`) and the
factory the config names predictors through (`load_predictor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tessy.predictors.eq5 import boundary, eq5_cuts  # noqa: F401  (re-exported: Eq. 5 is part of the protocol)


class BoundaryPredictor(Protocol):
    name: str

    def style_spans(self, texts: list[str], contexts: list[str] | None = None) -> list[list[tuple[int, int]]]:
        """For each text, its style spans as [start, end) character offsets, in order."""
        ...

    def cuts(self, texts: list[str], contexts: list[str], role: str) -> list[int | None]:
        """For each span of `role`, where the loop cuts it (a character offset), or None."""
        ...


@runtime_checkable
class StreamingPredictor(Protocol):
    """A predictor that can say when its cut is final before the span ends, so that a turn's request
    stops there (tessy/engine/streaming.py). The scheduler asks `isinstance(predictor, StreamingPredictor)`;
    a predictor that cannot promise a final cut does not implement it, and its role's turns run to k.
    (A checkpoint's `LearnedPredictor` sets `cut_settled = None` where its reading cannot promise: a
    method set to None is one the protocol's isinstance check finds missing.)"""

    inline: bool  # cheap enough to read the span at every streamed token, in the stream's own thread

    def cut_settled(self, text: str, b: int) -> bool:
        """Whether more text after `text` can no longer change this predictor's cut at `b`."""
        ...


LABEL_SEMANTICS = ("same-token", "next-token")


@dataclass(frozen=True)
class PredictorSpec:
    """A token-classification checkpoint and how to read it (the config's mapping form).

    - `labels`: `same-token`, the logits at token t classify token t (tessy's own training);
      `next-token`, they classify token t+1 (the authors' release shifts its labels left by one) and
      the release's cut rule applies (tessy/predictors/learned.py).
    - `style_label`: the class id that means style (the release: 1).
    - `context_tokens`: the most predictor tokens read, left context included; the text before the
      span fills what the span leaves (the release: 200, left-truncated). None: the checkpoint's own.
    - `dtype`: the torch dtype the weights run in (`DTYPES`; the release: bfloat16). None: the one
      the checkpoint's `tessy_predictor.json` records, else float32.
    """

    path: str
    labels: str = "same-token"
    style_label: int = 1
    context_tokens: int | None = None
    dtype: str | None = None

    @classmethod
    def parse(cls, spec: dict, where: str = "predictor") -> "PredictorSpec":
        known = {"path", "labels", "style_label", "context_tokens", "dtype"}
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
        from tessy.predictors.learned import DTYPES

        if out.dtype is not None and out.dtype not in DTYPES:
            raise ValueError(f"{where}.dtype: {out.dtype!r} is not one of {', '.join(DTYPES)}")
        return out


def load_predictor(spec: str | dict, phrases: list[str] | None = None, where: str = "predictor") -> BoundaryPredictor:
    """`lexicon` (optionally with a custom phrase list); the directory of a checkpoint written by
    `tessy predictor train`; or a `PredictorSpec` mapping for a plain token-classification checkpoint
    such as the authors' release. A learned predictor runs on the GPU when there is one."""
    from tessy.predictors.learned import LearnedPredictor, is_checkpoint
    from tessy.predictors.lexicon import DEFAULT_STYLE_PHRASES, LexiconPredictor

    if spec == "lexicon":
        return LexiconPredictor(phrases or DEFAULT_STYLE_PHRASES)

    if isinstance(spec, dict):
        parsed = PredictorSpec.parse(spec, where)
        return LearnedPredictor.load(parsed.path, parsed)
    if isinstance(spec, str) and is_checkpoint(spec):
        return LearnedPredictor.load(spec)
    raise ValueError(f"{where}: unknown predictor {spec!r}: use 'lexicon', a directory written by `tessy predictor "
                     f"train`, or {{path: DIR, labels: next-token | same-token, style_label: 1, context_tokens: 200, "
                     f"dtype: bfloat16}} for a plain token-classification checkpoint")
