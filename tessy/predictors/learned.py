"""Learned boundary predictors: token classifiers trained on annotated segments (paper, section 2.2).

The paper puts a binary head on a small causal LM (Qwen3-0.6B-Base) and labels each token style or
capability. Here any base model works through `AutoModelForTokenClassification`; the default is the
embedded student's checkpoint. A token is style when its first non-space character lies in a style
span (the tokenizer's offset mapping turns character spans into token labels). Optional left
context: tokens of the text before the segment are fed to the model but not scored; at inference
the loop hands the thinking before each span as that context.

Two label semantics (`PredictorSpec.labels`):
- `same-token` (tessy's default): the logits at token t classify token t; the loop cuts with Eq. 5
  over the style spans (tessy/predictors/eq5.py `boundary`).
- `next-token` (the authors' release): training shifts the labels left by one, so the logits at
  token t classify token t+1. The release's rule then cuts: read the thinking so far plus the new
  span, left-truncated to `context_tokens` predictor tokens; skip every token that starts at or
  before the span's first character; at the first remaining token labelled the other kind (style on
  a teacher span, capability on a student span) keep the span through that token's end. With no
  such token the span is kept whole, and the roles still switch when the window's last label is
  the other kind. (`handover: complete-word` then runs the kept text on to the next whitespace.)

A checkpoint directory holds the Hugging Face model and tokenizer plus `tessy_predictor.json`: base,
data, role, label semantics, settings and the held-out metrics of every epoch. A plain checkpoint
(the release's) has no such file and is described by a `PredictorSpec` in the config instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tessy.predictors.eq5 import eq5_cuts
from tessy.roles import TEACHER

META_FILE = "tessy_predictor.json"
CAPABILITY, STYLE = 0, 1
LABELS = {CAPABILITY: "capability", STYLE: "style"}
IGNORE = -100  # label of tokens that are seen but not scored (special tokens, left context, padding)


def is_checkpoint(path) -> bool:
    return (Path(path) / META_FILE).is_file()


@dataclass
class TrainConfig:
    data: str = field(metadata={"help": "annotated segments (JSONL from `tessy annotate`)"})
    out: str = field(metadata={"help": "checkpoint directory to write"})
    base: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "base model: embedded name, .gguf or HF directory (paper: Qwen3-0.6B-Base)"},
    )
    source: str | None = field(
        default=None,
        metadata={"choices": ("student", "teacher"),
                  "help": "train on student segments (B_S) or teacher segments (B_T); None: all"},
    )
    epochs: int = field(default=2, metadata={"min": 1, "help": "passes over the training split"})
    lr: float = field(default=5e-5, metadata={"gt": 0, "help": "AdamW learning rate (linear decay)"})
    batch_size: int = field(default=16, metadata={"min": 1, "help": "segments per optimizer step"})
    max_length: int = field(
        default=128,
        metadata={"min": 8, "help": "most tokens of a segment (plus context) the model reads"},
    )
    left_context: int = field(default=0, metadata={"min": 0, "help": "tokens of preceding text seen but not scored"})
    labels: str = field(
        default="same-token",
        metadata={"choices": ("same-token", "next-token"),
                  "help": "same-token: the logits at token t classify token t; next-token: they classify token t+1 "
                          "(the authors' release), and the release's cut rule applies"},
    )
    class_weights: bool = field(
        default=True,
        metadata={"help": "weigh the loss by inverse class frequency (style is rare)"},
    )
    eval_fraction: float = field(
        default=0.2,
        metadata={"min": 0, "max": 0.9, "help": "share of docs held out for the per-epoch evaluation"},
    )
    seed: int = field(default=0, metadata={"help": "split and shuffle seed"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | auto (cuda where there is one)"})


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# --- encoding -----------------------------------------------------------------------------------------
def token_labels(text: str, offsets: list[tuple[int, int]], spans: list) -> list[int]:
    """STYLE or CAPABILITY per token from character spans; IGNORE for tokens with no characters."""
    labels = []
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1  # byte-level BPE glues the leading space to a word: judge the word
        if start >= end:
            labels.append(IGNORE)
        else:
            labels.append(STYLE if any(s <= start < e for s, e in spans) else CAPABILITY)
    return labels


def encode(tokenizer, text: str, context: str = "", spans: list | None = None, max_length: int = 128,
           left_context: int = 0) -> dict:
    """input_ids, offsets into `text` (None for non-text tokens) and, given `spans`, labels."""
    prefix = tokenizer("", add_special_tokens=True)["input_ids"]  # BOS, for tokenizers that add one
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    room = max(max_length - len(prefix), 1)  # the text first; the context fills what it leaves
    ids, offsets = enc["input_ids"][:room], [tuple(o) for o in enc["offset_mapping"][:room]]
    left_context = min(left_context, max_length - len(prefix) - len(ids))
    ctx = (tokenizer(context, add_special_tokens=False)["input_ids"][-left_context:] if left_context > 0 and context
           else [])
    out = {"input_ids": prefix + ctx + ids, "offsets": [None] * (len(prefix) + len(ctx)) + offsets,
           "truncated": len(enc["input_ids"]) > room}
    if spans is not None:
        out["labels"] = [IGNORE] * (len(prefix) + len(ctx)) + token_labels(text, offsets, spans)
    return out


def shift_left(labels: list[int]) -> list[int]:
    """`next-token` targets: the label at t is the class of token t+1 (the last token has none)."""
    return labels[1:] + [IGNORE]


def collate(batch: list[dict], pad_id: int, device: str) -> dict:
    import torch

    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        mask[i, :n] = 1
        if "labels" in b:
            labels[i, :n] = torch.tensor(b["labels"])
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


# --- the predictor ---------------------------------------------------------------------------------------
class LearnedPredictor:
    """A token classifier behind the `BoundaryPredictor` protocol, batched, on CPU or GPU."""

    def __init__(self, model, tokenizer, meta: dict, name: str = "learned", batch_size: int = 32):
        self.model, self.tokenizer, self.meta, self.name = model, tokenizer, meta, name
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.semantics = meta.get("semantics", "same-token")
        self.style_label = meta.get("style_label", STYLE)
        self.max_length = meta.get("max_length", 128)
        self.left_context = meta.get("left_context", 0)
        # Streamed cuts (tessy/streaming.py). A same-token checkpoint that reads no left context labels
        # the span alone with a causal model, cut from the right where it is too long, so a token's
        # label depends only on the tokens before it: a cut is final once the word it starts is whole
        # (which the loop's own rule waits for). With left context, the context fills what the span
        # leaves, so its share changes as the span grows; and the release's next-token rule reads the
        # last `max_length` tokens of context and span, a window that slides. Neither can promise:
        # their turns run to k.
        self.cut_settled = (lambda text, b: True) if self.semantics == "same-token" and not self.left_context \
            else None
        self.inline = False

    @classmethod
    def load(cls, path, spec=None, device: str = "auto", batch_size: int = 32) -> "LearnedPredictor":
        """A checkpoint of `tessy predictor train`, or with `spec` (a `PredictorSpec`) any 2-label
        token-classification checkpoint, such as the authors' released predictors."""
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        path = Path(path)
        meta = json.loads((path / META_FILE).read_text()) if is_checkpoint(path) else {}
        if spec is not None:
            meta = {**meta, "semantics": spec.labels, "style_label": spec.style_label}
            if spec.context_tokens:
                meta.update(max_length=spec.context_tokens, left_context=spec.context_tokens)
        elif not meta:
            raise ValueError(f"{path}: not a checkpoint of `tessy predictor train`; describe a plain checkpoint "
                             f"with {{path, labels, style_label, context_tokens}}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForTokenClassification.from_pretrained(path, dtype=torch.float32)
        except OSError as e:  # a hub name without the hub, or a directory without the files
            raise ValueError(f"{path}: cannot load the predictor ({str(e).splitlines()[0]}); download the checkpoint "
                             f"and give its directory as `path`") from None
        if model.config.num_labels != 2:
            raise ValueError(f"{path}: a boundary predictor has 2 labels, "
                             f"this checkpoint has {model.config.num_labels}")
        model = model.to(pick_device(device)).eval()
        return cls(model, tokenizer, meta, name=f"learned:{path.name}", batch_size=batch_size)

    # --- what the loop asks -------------------------------------------------------------------
    def cuts(self, texts: list[str], contexts: list[str], role: str) -> list[int | None]:
        if self.semantics == "next-token":
            return self._release_cuts(texts, contexts, role)
        return eq5_cuts(texts, self.style_spans(texts, contexts), role)

    def _release_cuts(self, texts: list[str], contexts: list[str], role: str) -> list[int | None]:
        """The release's rule (module docstring), on character offsets of context + text."""
        other = self.style_label if role == TEACHER else 1 - self.style_label
        windows = [self._window(context + text) for text, context in zip(texts, contexts)]
        out = []
        for text, context, (offsets, labels) in zip(texts, contexts, self._labels(windows)):
            at = len(context)
            cut = next((end for (start, end), label in zip(offsets, labels) if start > at and label == other), None)
            if cut is None and text and labels and labels[-1] == other:
                cut = len(context) + len(text)  # nothing to drop, but the window ends on the other kind
            out.append(None if cut is None else cut - at)
        return out

    def _window(self, text: str) -> dict:
        """`text` as the release reads it: its last `max_length` predictor tokens (the tokenizer's own
        left truncation, special tokens included), with character offsets into `text`."""
        self.tokenizer.truncation_side = "left"
        enc = self.tokenizer(text, add_special_tokens=True, truncation=True, max_length=self.max_length,
                             return_offsets_mapping=True)
        return {"input_ids": enc["input_ids"], "offsets": [tuple(o) for o in enc["offset_mapping"]]}

    def _labels(self, encodings: list[dict]) -> list[tuple[list, list[int]]]:
        """(offsets, argmax class per token) for each encoding, `batch_size` rows per forward pass."""
        import torch

        out = []
        with torch.inference_mode():
            for b in range(0, len(encodings), self.batch_size):
                chunk = encodings[b:b + self.batch_size]
                batch = collate(chunk, self.pad_id, self.device)
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                for enc, row in zip(chunk, logits.argmax(-1).tolist()):
                    out.append((enc["offsets"], row[:len(enc["input_ids"])]))
        return out

    # --- style spans (predictor eval, the NLL split, and Eq. 5 for same-token checkpoints) --------
    def style_spans(self, texts: list[str], contexts: list[str] | None = None) -> list[list[tuple[int, int]]]:
        """For each text, its style spans as [start, end) character offsets (one forward pass per
        `batch_size` texts). Texts longer than the checkpoint's max_length are read in pieces."""
        contexts = contexts or [""] * len(texts)
        if self.semantics == "next-token":
            return self._next_token_spans(texts, contexts)
        pieces = []  # (text index, offset of the piece in the text, encoding)
        for i, (text, context) in enumerate(zip(texts, contexts)):
            start = 0
            while True:
                enc = encode(self.tokenizer, text[start:], context, None, self.max_length, self.left_context)
                pieces.append((i, start, enc))
                last = max((o[1] for o in enc["offsets"] if o), default=0)
                if not enc["truncated"] or not last:
                    break
                context, start = text[:start + last], start + last
        style: list[list[tuple[int, int]]] = [[] for _ in texts]
        for (i, shift, _), (offsets, labels) in zip(pieces, self._labels([p[2] for p in pieces])):
            for offset, label in zip(offsets, labels):
                if offset is not None and label == self.style_label:
                    style[i].append((offset[0] + shift, offset[1] + shift))
        return [_join(text, _trimmed(text, spans)) for text, spans in zip(texts, style)]

    def _next_token_spans(self, texts: list[str], contexts: list[str]) -> list[list[tuple[int, int]]]:
        """Style spans when the label at t is token t+1's. Context + text is read in windows of
        `max_length` tokens that overlap by half; a token takes its label from the window that shows
        it with the most left context."""
        size = self.max_length
        step = max(size // 2, 1)
        jobs = []  # (text index, context characters, first token of the window, first token it labels, window)
        for i, (text, context) in enumerate(zip(texts, contexts)):
            enc = self.tokenizer(context + text, add_special_tokens=True, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
            a = 0
            while True:
                b = min(a + size, len(ids))
                if b and offsets[b - 1][1] > len(context):  # a window wholly in the context labels nothing
                    jobs.append((i, len(context), a, a + 1 if a == 0 else a + size - step,
                                 {"input_ids": ids[a:b], "offsets": offsets[a:b]}))
                if b >= len(ids):
                    break
                a += step
        style: list[list[tuple[int, int]]] = [[] for _ in texts]
        for (i, at, a, first, _), (offsets, labels) in zip(jobs, self._labels([j[4] for j in jobs])):
            for r in range(max(first - a, 1), len(labels)):
                start, end = offsets[r]
                if start >= at and labels[r - 1] == self.style_label:  # token a+r's class is read at a+r-1
                    style[i].append((start - at, end - at))
        return [_join(text, _trimmed(text, spans)) for text, spans in zip(texts, style)]


def _trimmed(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans without their leading whitespace (byte-level BPE glues the space to the word)."""
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        if s < e:
            out.append((s, e))
    return out


def _join(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent style tokens make one span; only whitespace between them still joins them."""
    out: list[list[int]] = []
    for s, e in sorted(spans):
        if out and not text[out[-1][1]:s].strip():
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


# --- training ----------------------------------------------------------------------------------------------
def split_by_doc(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): whole docs go to one side, so overlapping windows never leak across."""
    docs = sorted({str(r.get("doc") or r.get("id")) for r in rows})
    random.Random(seed).shuffle(docs)
    n_eval = max(1, math.ceil(fraction * len(docs))) if fraction > 0 and len(docs) > 1 else 0
    held = set(docs[:n_eval])
    return ([r for r in rows if str(r.get("doc") or r.get("id")) not in held],
            [r for r in rows if str(r.get("doc") or r.get("id")) in held])


def base_checkpoint(base: str):
    """`tessy.models.resolve`, and a hub id (`Qwen/Qwen3-0.6B-Base`) where the hub can be reached."""
    from tessy.models import resolve

    try:
        return resolve(base)
    except FileNotFoundError:
        if base.count("/") == 1 and not Path(base).exists():
            return base
        raise


def train_predictor(config: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train, evaluate on the held-out split after every epoch, save; return the metadata."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from tessy.predictors.scoring import AllCapability, evaluate
    from tessy.segments import read_segments

    rows = read_segments(config.data, config.source)
    if not rows:
        raise ValueError(f"{config.data}: no annotated segments"
                         + (f" from the {config.source}" if config.source else ""))
    train_rows, eval_rows = split_by_doc(rows, config.eval_fraction, config.seed)
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    base_dir = base_checkpoint(config.base)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForTokenClassification.from_pretrained(
        base_dir, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, dtype=torch.float32
    ).to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id

    if config.labels not in ("same-token", "next-token"):
        raise ValueError(f"labels: {config.labels!r} is not same-token or next-token")
    encoded = [encode(tokenizer, r["text"], r.get("context", ""), r["style_spans"], config.max_length,
                      config.left_context)
               for r in train_rows]
    if config.labels == "next-token":
        for e in encoded:
            e["labels"] = shift_left(e["labels"])
    counts = [sum(lab == c for e in encoded for lab in e["labels"]) for c in (CAPABILITY, STYLE)]
    # Inverse class frequency: style tokens are a small minority of thinking text.
    weights = [sum(counts) / (2 * max(c, 1)) for c in counts] if config.class_weights else [1.0, 1.0]
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, device=device), ignore_index=IGNORE)
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, steps_per_epoch // 10),
                                               steps_per_epoch * config.epochs)
    log(f"train {len(train_rows)} segments, held out {len(eval_rows)}; "
        f"tokens capability {counts[0]}, style {counts[1]}; "
        f"class weights {[round(w, 2) for w in weights]}; device {device}")

    predictor = LearnedPredictor(model, tokenizer, {"max_length": config.max_length,
                                                    "left_context": config.left_context,
                                                    "semantics": config.labels})
    history, losses = [], []
    rng = random.Random(config.seed)
    t0 = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = list(range(len(encoded)))
        rng.shuffle(order)
        epoch_losses = []
        for step in range(steps_per_epoch):
            batch = collate([encoded[i] for i in order[step * config.batch_size:(step + 1) * config.batch_size]],
                            tokenizer.pad_token_id, device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = loss_fn(logits.view(-1, 2).float(), batch["labels"].view(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            epoch_losses.append(loss.item())
            if (step + 1) % 10 == 0 or step + 1 == steps_per_epoch:
                log(f"epoch {epoch} step {step + 1}/{steps_per_epoch} "
                    f"loss {sum(epoch_losses[-10:]) / len(epoch_losses[-10:]):.4f}")
        losses.extend(epoch_losses)
        model.eval()
        metrics = {"epoch": epoch, "train_loss": round(sum(epoch_losses) / len(epoch_losses), 4)}
        if eval_rows:
            metrics.update(evaluate(predictor, eval_rows, batch_size=config.batch_size))
        history.append(metrics)
        log(f"epoch {epoch}: " + ", ".join(f"{k} {v}" for k, v in metrics.items() if k != "epoch"))

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {
        "kind": "tessy boundary predictor",
        "role": config.source or "+".join(sorted({r.get("source", "?") for r in rows})),
        "labels": {str(k): v for k, v in LABELS.items()},
        "label_semantics": "per token: style (1) or capability (0); a token is style when its first non-space "
                           "character lies in an annotated style span" + (
                               "; the logits at token t classify token t+1" if config.labels == "next-token" else ""),
        "base": config.base,
        "base_dir": str(base_dir),
        "data": str(config.data),
        "data_sha256": hashlib.sha256(Path(config.data).read_bytes()).hexdigest(),
        "n_train": len(train_rows),
        "n_eval": len(eval_rows),
        "semantics": config.labels,
        "style_label": STYLE,
        "max_length": config.max_length,
        "left_context": config.left_context,
        "class_weights": weights,
        "config": asdict(config),
        "train_losses": [round(x, 4) for x in losses],
        "epochs": history,
        "baseline_all_capability": evaluate(AllCapability(), eval_rows) if eval_rows else None,
        "train_s": round(time.perf_counter() - t0, 1),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta
