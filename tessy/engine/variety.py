"""How varied a record's thinking is, measured without a model or the repetition guard: loops
compress well. `tessy synth` reports the median over its records (`thinking_variety`)."""

from __future__ import annotations

import zlib


def thinking_text(record: dict) -> str:
    """The record's thinking: its think segments joined, without markers."""
    return "".join(s["text"] for s in record.get("segments", []) if s.get("part", "think") == "think")


def compression_ratio(text: str) -> float:
    """len(zlib(text)) / len(text), in UTF-8 bytes; 0.0 for empty text.

    A measure of variety that needs no model and no guard: text that loops
    compresses well. Ordinary English of a few hundred words is near 0.55; a looping sample near
    0.1-0.3. Very short text exceeds 1 (zlib's fixed overhead), so compare texts of similar length.
    """
    data = text.encode()
    return len(zlib.compress(data)) / len(data) if data else 0.0
