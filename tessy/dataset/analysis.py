"""`tessy analyze`: put SFT datasets side by side on the prompts they share.

The numbers follow the paper's analysis figures:
- response length in the student's tokens (Figure 12);
- teacher-token share and switches per sample (Figure 17);
- how the thinking closed;
- TF-IDF cosine similarity between datasets' responses to the same prompt (Figure 14's method),
  a PCA scatter of all responses (Figure 8) and a top-words heatmap (Figure 16);
- the student's own negative log-likelihood per token on each dataset's assistant text, split into
  style and capability tokens by a boundary predictor: the quantity of Eq. 2 that TESSY keeps low
  on style tokens.

Text is always counted with the student's tokenizer, since the data is for the student.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tessy.engine.records import read_records
from tessy.roles import TEACHER


@dataclass
class AnalyzeJob:
    files: list[str] = field(metadata={"help": "records JSONL files (one per method)"})
    out: str = field(metadata={"help": "directory for analysis.json, the PNGs and index.html"})
    names: str | None = field(
        default=None,
        metadata={"help": "comma-separated dataset names (default: each file's method, else its stem)"},
    )
    config: str | None = field(
        default=None,
        metadata={"help": "synth config naming the student (default: the embedded student)"},
    )
    predictor: str = field(
        default="lexicon",
        metadata={"help": "splits tokens into style and capability for the NLL: lexicon or a checkpoint"},
    )
    batch_size: int = field(default=4, metadata={"min": 1, "help": "records per forward pass of the student"})
    top_words: int = field(default=10, metadata={"min": 1, "help": "top words per dataset in the heatmap"})
    nll: bool = field(
        default=True,
        metadata={"help": "the student's NLL on each dataset (forward passes of the student; --no-nll skips it)"},
    )


@dataclass
class Dataset:
    name: str
    path: str
    records: dict[str, dict]  # id -> record, only the prompts every dataset shares


def load_datasets(paths: list[str | Path], names: list[str] | None = None) -> list[Dataset]:
    """Read each records file and keep the prompts (ids) that all of them share, in the first
    file's order. Names default to each file's `method` when those are distinct, else file stems."""
    if len(paths) < 1:
        raise ValueError("give at least one records file")
    loaded = [read_records(p) for p in paths]
    for p, recs in zip(paths, loaded):
        if not recs:
            raise ValueError(f"{p} holds no records")
    if names is None:
        methods = [{r.get("method") for r in recs} for recs in loaded]
        single = [next(iter(m)) for m in methods if len(m) == 1]
        distinct = len(single) == len(paths) and None not in single and len(set(single)) == len(single)
        names = single if distinct else [Path(p).stem for p in paths]
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise ValueError(f"need one distinct name per file, got {names}")
    by_id = [{str(r["id"]): r for r in recs} for recs in loaded]
    shared = [i for i in by_id[0] if all(i in d for d in by_id[1:])]
    if not shared:
        raise ValueError("the files share no prompt ids: nothing to compare")
    return [Dataset(n, str(p), {i: d[i] for i in shared}) for n, p, d in zip(names, paths, by_id)]


# --- per record ---------------------------------------------------------------------------------
def assistant_text(record: dict) -> str:
    """The assistant message as it goes into SFT (markers included)."""
    return next((m["content"] for m in reversed(record.get("messages", [])) if m["role"] == "assistant"), "")


def response_text(record: dict) -> str:
    """Thinking and answer without markers (the markers are the same in every dataset)."""
    segments = record.get("segments")
    if not segments:
        return assistant_text(record)
    think = "".join(s["text"] for s in segments if s.get("part", "think") == "think")
    answer = "".join(s["text"] for s in segments if s.get("part") == "answer")
    return f"{think.strip()}\n{answer.strip()}".strip()


def teacher_share(record: dict, count: Callable[[str], int]) -> float:
    """Share of the response's tokens (student tokens, thinking and answer) the teacher wrote."""
    totals = Counter()
    for s in record.get("segments", []):
        totals[s["source"]] += count(s["text"])
    n = sum(totals.values())
    return totals[TEACHER] / n if n else 0.0


def source_switches(record: dict) -> int:
    """How often the writer changes along the response (thinking into answer included)."""
    sources = [s["source"] for s in record.get("segments", []) if s["text"]]
    return sum(a != b for a, b in zip(sources, sources[1:]))


def describe(d: Dataset, count: Callable[[str], int]) -> dict:
    """Lengths, teacher share, switches and close reasons of one dataset."""
    records = list(d.records.values())
    lengths = [count(assistant_text(r)) for r in records]
    shares = [teacher_share(r, count) for r in records]
    switches = [source_switches(r) for r in records]
    return {
        "samples": len(records),
        "mean_tokens": statistics.fmean(lengths),
        "median_tokens": statistics.median(lengths),
        "teacher_share": statistics.fmean(shares),
        "switches_per_sample": statistics.fmean(switches),
        "close_reasons": dict(Counter(str(r.get("stats", {}).get("stop_reason")) for r in records)),
    }


# --- across datasets ----------------------------------------------------------------------------
def tfidf(datasets: list[Dataset], tokenize: Callable[[str], list[str]]):
    """One TF-IDF row per (dataset, prompt), rows L2-normalised; returns (matrix, vectorizer).
    Rows are ordered dataset by dataset, prompts in the shared order."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [response_text(r) for d in datasets for r in d.records.values()]
    vectorizer = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None)
    return vectorizer.fit_transform(texts), vectorizer


def similarity_matrix(X, n_datasets: int) -> list[list[float]]:
    """Mean cosine similarity of two datasets' responses to the same prompt, for every pair."""
    n = X.shape[0] // n_datasets
    blocks = [X[i * n : (i + 1) * n] for i in range(n_datasets)]
    return [[float(a.multiply(b).sum(axis=1).mean()) for b in blocks] for a in blocks]


def pca_points(X, n_datasets: int) -> dict:
    """Two principal components of all responses (dense: fine for thousands of responses)."""
    from sklearn.decomposition import PCA

    dense = X.toarray()
    k = min(2, dense.shape[0], dense.shape[1])
    if k < 1:
        return {"explained_variance_ratio": [], "xy": [[0.0, 0.0] for _ in range(dense.shape[0])]}
    pca = PCA(n_components=k, random_state=0)
    xy = pca.fit_transform(dense)
    if k == 1:
        xy = [[float(v[0]), 0.0] for v in xy]
    return {"explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_],
            "xy": [[float(a), float(b)] for a, b in xy]}


def top_words(datasets: list[Dataset], tokenize: Callable[[str], list[str]], display: Callable[[str], str],
              per_dataset: int = 10) -> dict:
    """Each dataset's most frequent words (per 1000 word tokens), the union of every dataset's top
    `per_dataset`, ordered by their largest frequency. Words are alphabetic tokens of 2+ letters."""
    freqs = {}
    for d in datasets:
        words = Counter()
        for r in d.records.values():
            for tok in tokenize(response_text(r)):
                w = display(tok).strip().lower()
                if len(w) >= 2 and w.isalpha():
                    words[w] += 1
        total = sum(words.values()) or 1
        freqs[d.name] = {w: 1000 * c / total for w, c in words.items()}
    chosen = []
    for d in datasets:
        for w, _ in sorted(freqs[d.name].items(), key=lambda kv: (-kv[1], kv[0]))[:per_dataset]:
            if w not in chosen:
                chosen.append(w)
    chosen.sort(key=lambda w: -max(f.get(w, 0.0) for f in freqs.values()))
    return {"words": chosen, "per_1000": {n: [round(f.get(w, 0.0), 3) for w in chosen] for n, f in freqs.items()}}


# --- the student's own loss (Eq. 2) -------------------------------------------------------------
def token_labels(body: str, offsets: list[tuple[int, int]], style: list[tuple[int, int]],
                 markers: list[tuple[int, int]]) -> list[str]:
    """Label each token of `body` (character offsets) as marker, style, capability or other.

    A token that touches a style span is style; one that holds a letter or digit otherwise is
    capability; whitespace and punctuation are neither, as in the loop (tessy/predictors/eq5.py)."""

    def touches(a: int, b: int, spans) -> bool:
        return any(a < e and s < b for s, e in spans)

    labels = []
    for a, b in offsets:
        if touches(a, b, markers):
            labels.append("marker")
        elif touches(a, b, style):
            labels.append("style")
        elif any(ch.isalnum() for ch in body[a:b]):
            labels.append("capability")
        else:
            labels.append("other")
    return labels


def scoring_inputs(record: dict, renderer) -> tuple[str, str, list[tuple[int, int]]]:
    """(prompt text, scored body, marker spans in the body) of one record.

    The prompt is rendered as the student saw it at synthesis (`renderer`: the student's profile,
    tokenizer and chat template arguments), think-open prefill included; the body is the rest of the
    assistant message (thinking, close marker, answer)."""
    profile = renderer.profile
    messages = [m for m in record["messages"] if m["role"] != "assistant"]
    prefix, _ = renderer.render(messages)
    content = assistant_text(record)
    body = content[len(profile.think_open):] if content.startswith(profile.think_open) else content
    at = body.rfind(profile.think_close)
    markers = [(at, at + len(profile.think_close) + len(profile.answer_open))] if at != -1 else []
    return prefix, body, markers


def student_nll(records: list[dict], model, renderer, predictor, batch_size: int = 4, progress=None) -> dict:
    """The student's mean NLL per token (nats) on the records' assistant text, over all scored
    tokens and over style and capability tokens (labels from `predictor`); each prompt is rendered
    by the student's `renderer` (tessy.profiles.Renderer), whose tokenizer also scores.

    Returns {"all": {"nll", "tokens"}, "style": {...}, "capability": {...}}. Means are per token,
    pooled over the dataset."""
    import torch

    tokenizer = renderer.tokenizer
    sums, counts = Counter(), Counter()
    items = []
    for r in records:
        prefix, body, markers = scoring_inputs(r, renderer)
        enc = tokenizer(prefix + body, add_special_tokens=not getattr(tokenizer, "chat_template", None),
                        return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        scored = [i for i, (a, b) in enumerate(offsets) if i > 0 and a >= len(prefix) and b > a]
        body_offsets = [(offsets[i][0] - len(prefix), offsets[i][1] - len(prefix)) for i in scored]
        style = predictor.style_spans([body])[0]
        items.append((ids, scored, token_labels(body, body_offsets, style, markers)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        width = max(len(ids) for ids, _, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, _, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        for row, (ids, scored, labels) in enumerate(batch):
            if not scored:
                continue
            # Token `pos` is predicted at `pos - 1`; softmax only over the scored rows (memory).
            at = torch.tensor(scored, device=logits.device)
            logp = torch.log_softmax(logits[row, at - 1].float(), dim=-1)
            targets = torch.tensor([ids[pos] for pos in scored], device=logits.device)
            nlls = (-logp.gather(1, targets[:, None])[:, 0]).tolist()
            for nll, label in zip(nlls, labels):
                for key in ("all", label):
                    sums[key] += nll
                    counts[key] += 1
        if progress is not None:
            progress(len(batch))
    return {key: {"nll": sums[key] / counts[key] if counts[key] else None, "tokens": counts[key]}
            for key in ("all", "style", "capability")}


# --- the whole analysis -------------------------------------------------------------------------
def analyze(datasets: list[Dataset], tokenizer, nll: Callable[[Dataset], dict] | None = None, top_n: int = 10) -> dict:
    """Every number of the report, as one JSON-ready dict (see `tessy analyze`).

    `tokenizer` needs `tokenize(text)` and `convert_tokens_to_string(tokens)`; `nll`, when given,
    maps a dataset to `student_nll`'s result."""
    tokenize = tokenizer.tokenize

    def count(text: str) -> int:
        return len(tokenize(text)) if text else 0

    X, _ = tfidf(datasets, tokenize)
    names = [d.name for d in datasets]
    ids = list(datasets[0].records)
    pca = pca_points(X, len(datasets))
    result = {
        "datasets": [{"name": d.name, "path": d.path} for d in datasets],
        "shared_prompts": len(ids),
        "per_dataset": {d.name: describe(d, count) for d in datasets},
        "similarity": {"names": names, "matrix": similarity_matrix(X, len(datasets))},
        "pca": {
            "explained_variance_ratio": pca["explained_variance_ratio"],
            "points": [{"dataset": names[i // len(ids)], "id": ids[i % len(ids)], "x": x, "y": y}
                       for i, (x, y) in enumerate(pca["xy"])],
        },
        "top_words": top_words(datasets, tokenize, lambda t: tokenizer.convert_tokens_to_string([t]), top_n),
    }
    if nll is not None:
        result["nll"] = {d.name: nll(d) for d in datasets}
    return result


def print_table(result: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"tessy analyze: {result['shared_prompts']} shared prompts")
    names = result["similarity"]["names"]
    reference = names[0]
    for col in ("dataset", "mean tok", "median tok", "teacher share", "switches", f"sim. to {reference}", "NLL style",
                "NLL capab.", "closed by"):
        table.add_column(col)
    for i, name in enumerate(names):
        d = result["per_dataset"][name]
        nll = result.get("nll", {}).get(name, {})

        def fmt(v):
            return "-" if v is None else f"{v:.3f}"

        table.add_row(
            name, f"{d['mean_tokens']:.1f}", f"{d['median_tokens']:.1f}", f"{d['teacher_share']:.3f}",
            f"{d['switches_per_sample']:.2f}", f"{result['similarity']['matrix'][i][0]:.3f}",
            fmt(nll.get("style", {}).get("nll")), fmt(nll.get("capability", {}).get("nll")),
            ", ".join(f"{k}: {v}" for k, v in sorted(d["close_reasons"].items())),
        )
    console.print(table)
