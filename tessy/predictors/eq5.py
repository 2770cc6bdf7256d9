"""Eq. 5 of the paper: where the loop cuts a span, given its style spans.

- A student span is cut at its first capability character (B_S keeps only style).
- A teacher span is cut at its first style character (B_T keeps only capability).
Whitespace and punctuation belong to no side: they never start a cut.
"""

from __future__ import annotations

from tessy.roles import TEACHER


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
