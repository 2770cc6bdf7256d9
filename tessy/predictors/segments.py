"""Annotated thinking segments: the training and evaluation data of the boundary predictors.

Two line formats, both read by `read_segments` (each line by its own keys), both written by `tessy
annotate --out-format`:

- tessy's: `id`, `source` (the model that wrote it), `text`, `style_spans` ([start, end) character
  offsets of the style phrases in `text`), `annotator`, `doc` (the text the window was cut from),
  `context` (the text just before the window: the predictor's left context) and `unfound` (phrases
  the annotator named that were not found in the text).
- the authors' release's (`Boundary_Predictor/annotator.py`): `{"id_ddm", "think_text",
  "pred_result": [{"span", "start", "end"}, ...]}`, where `id_ddm` names the response the window
  was cut from and each span is `think_text[start:end]`. A release file is one model's windows and
  says not which: the reader's `source` names it. Such a line reads as a tessy row with `doc` =
  `id_ddm`, no context and `annotator` "release".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tessy.engine.records import json_lines

FORMATS = ("tessy", "release")


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

    def to_release(self) -> dict:
        """The line of the release's format: the doc as `id_ddm`, each span with its text."""
        return {"id_ddm": self.doc, "think_text": self.text,
                "pred_result": [{"span": self.text[s:e], "start": s, "end": e} for s, e in self.style_spans]}


def segment_line(segment: Segment, out_format: str = "tessy") -> dict:
    """One output line of `segment` in `out_format` (tessy | release)."""
    if out_format == "release":
        return segment.to_release()
    if out_format == "tessy":
        return segment.to_dict()
    raise ValueError(f"unknown segment format {out_format!r} (known: {', '.join(FORMATS)})")


def is_release_line(row: dict) -> bool:
    return "think_text" in row and "pred_result" in row and "text" not in row


def read_segments(path, source: str | None = None) -> list[dict]:
    """Annotated segments from a JSONL file in either format, as tessy rows (dicts of `Segment`'s
    fields).

    For a tessy line `source` is a filter: only that model's rows are kept (None keeps all). A
    release line has no source: it is taken as `source`'s, and without one it is refused (the reader
    cannot tell a student's window from a teacher's). Raises ValueError on a line that lacks its
    format's keys, or whose spans fall outside its text (or, in a release line, do not match it).
    """
    rows = []
    for n, row in json_lines(path):
        if is_release_line(row):
            if row["pred_result"] is None:  # a window without annotations: the release's trainer drops it too
                continue
            if source is None:
                raise ValueError(f"{path}:{n}: a line of the release's format (id_ddm, think_text, pred_result) "
                                 "does not say which model wrote it; name it with --source student|teacher")
            row = _from_release(row, source, f"{path}:{n}", n)
        elif not isinstance(row.get("text"), str) or not isinstance(row.get("style_spans"), list):
            raise ValueError(f"{path}:{n}: an annotated segment needs `text` and `style_spans` (tessy's format) or "
                             "`think_text` and `pred_result` (the release's)")
        if any(not (0 <= s < e <= len(row["text"])) for s, e in row["style_spans"]):
            raise ValueError(f"{path}:{n}: a style span lies outside the text")
        if source is None or row.get("source") == source:
            rows.append(row)
    return rows


def _from_release(row: dict, source: str, where: str, n: int) -> dict:
    text, spans = row["think_text"], row["pred_result"]
    if not isinstance(text, str) or not isinstance(spans, list):
        raise ValueError(f"{where}: `think_text` must be a string and `pred_result` a list")
    out = []
    for item in spans:
        if not (isinstance(item, dict) and isinstance(item.get("start"), int) and isinstance(item.get("end"), int)):
            raise ValueError(f"{where}: each pred_result item needs integer `start` and `end`")
        s, e = item["start"], item["end"]
        if not 0 <= s < e <= len(text):
            raise ValueError(f"{where}: a style span lies outside the text")
        if "span" in item and item["span"] != text[s:e]:
            raise ValueError(f"{where}: span {item['span']!r} is not think_text[{s}:{e}] ({text[s:e]!r})")
        out.append([s, e])
    doc = str(row.get("id_ddm", n))
    return {"id": f"{doc}#{n}", "source": source, "text": text, "style_spans": out, "annotator": "release",
            "doc": doc, "context": "", "unfound": []}
