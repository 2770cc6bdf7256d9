"""Annotated thinking segments: the training and evaluation data of the boundary predictors.

One JSON line per segment: `id`, `source` (the model that wrote it), `text`, `style_spans` ([start,
end) character offsets of the style phrases in `text`), `annotator`, `doc` (the text the window was
cut from), `context` (the text just before the window: the predictor's left context) and `unfound`
(phrases the annotator named that were not found in the text). `tessy annotate` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tessy.records import json_lines


@dataclass
class Segment:
    id: str
    source: str  # student | teacher: the model that wrote the text
    text: str
    doc: str = ""  # the text the window was cut from
    context: str = ""  # text just before the window (left context for the predictor)
    style_spans: list[tuple[int, int]] = field(default_factory=list)
    annotator: str = ""
    unfound: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"id": self.id, "source": self.source, "text": self.text,
                "style_spans": [list(s) for s in self.style_spans], "annotator": self.annotator,
                "doc": self.doc, "context": self.context, "unfound": self.unfound}


def read_segments(path, source: str | None = None) -> list[dict]:
    """Annotated segments from a JSONL file, optionally only one source's. Raises ValueError on a
    line that lacks `text` or `style_spans`, or whose spans fall outside its text."""
    rows = []
    for n, row in json_lines(path):
        if not isinstance(row.get("text"), str) or not isinstance(row.get("style_spans"), list):
            raise ValueError(f"{path}:{n}: an annotated segment needs `text` and `style_spans`")
        if any(not (0 <= s < e <= len(row["text"])) for s, e in row["style_spans"]):
            raise ValueError(f"{path}:{n}: a style span lies outside the text")
        if source is None or row.get("source") == source:
            rows.append(row)
    return rows
