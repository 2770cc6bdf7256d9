"""`tessy predictor eval`: how well a boundary predictor agrees with annotated segments.

Two measures, for any number of predictors side by side:
- Style precision, recall and F1 over word units. Predictors tokenize differently (the lexicon not
  at all), so they are all scored on the same units: words and single punctuation marks
  (`\\w+|[^\\w\\s]`). A unit is style when its first character lies in a style span.
- Boundary accuracy: the cut the loop would make (Eq. 5; `tessy.predictors.eq5.boundary`): the first
  capability character of a student segment, the first style character of a teacher segment.
  Exact, and within one word (the predicted cut falls in the same unit as the true cut, or an
  adjacent one).
"""

from __future__ import annotations

import bisect
import re

from tessy.predictors.eq5 import boundary
from tessy.roles import STUDENT, TEACHER

UNIT = re.compile(r"\w+|[^\w\s]")


def units(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in UNIT.finditer(text)]


def unit_labels(text: str, spans: list) -> list[bool]:
    """For each unit of `text`, whether its first character is inside a style span."""
    starts = sorted((s, e) for s, e in spans)
    out = []
    for u_start, _ in units(text):
        i = bisect.bisect_right(starts, (u_start, float("inf"))) - 1
        out.append(i >= 0 and starts[i][0] <= u_start < starts[i][1])
    return out


def unit_index(text: str, offset: int) -> int:
    """The unit a cut at `offset` falls in: the first unit ending after it (`len(units)` if none)."""
    ends = [e for _, e in units(text)]
    return bisect.bisect_right(ends, offset)


def score(rows: list[dict], predicted: list[list]) -> dict:
    """Metrics of `predicted` style spans against the rows' `style_spans` (see the module doc)."""
    tp = fp = fn = 0
    exact = near = 0
    for row, pred in zip(rows, predicted):
        text, gold = row["text"], row["style_spans"]
        for g, p in zip(unit_labels(text, gold), unit_labels(text, pred)):
            tp += g and p
            fp += p and not g
            fn += g and not p
        role = TEACHER if row.get("source") == TEACHER else STUDENT
        cut_gold = boundary(text, [tuple(s) for s in gold], role)
        cut_pred = boundary(text, [tuple(s) for s in pred], role)
        exact += cut_gold == cut_pred
        near += abs(unit_index(text, cut_gold) - unit_index(text, cut_pred)) <= 1
    n = len(rows)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "style_precision": round(precision, 4),
        "style_recall": round(recall, 4),
        "style_f1": round(f1, 4),
        "boundary_exact": round(exact / n, 4) if n else 0.0,
        "boundary_within_word": round(near / n, 4) if n else 0.0,
        "n_segments": n,
    }


def evaluate(predictor, rows: list[dict], batch_size: int = 64) -> dict:
    """Run `predictor` over the rows' texts in batches and score it."""
    predicted = []
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        predicted.extend(predictor.style_spans([r["text"] for r in batch], [r.get("context", "") for r in batch]))
    return score(rows, predicted)


class AllCapability:
    """The trivial predictor: no style anywhere. Any useful predictor must beat it."""

    name = "all-capability"

    def style_spans(self, texts, contexts=None):
        return [[] for _ in texts]


def results_table(results: dict[str, dict], title: str = "boundary predictors"):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    for key in ("style_precision", "style_recall", "style_f1", "boundary_exact", "boundary_within_word", "n_segments"):
        table.add_row(key.replace("_", " "), *(str(r[key]) for r in results.values()))
    return table
