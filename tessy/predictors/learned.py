"""Learned boundary predictors: token classifiers trained on annotated segments (paper, section 2.2).

The paper puts a binary head on a small causal LM (Qwen3-0.6B-Base) and labels each token style or
capability. Here any base model works through `AutoModelForTokenClassification`; the default is the
embedded student's checkpoint. The tokenizer's offset mapping turns character spans into token
labels, by one of two rules (`TrainConfig.label_rule`):
- `first-char` (tessy's default): a token is style when its first non-space character lies in a
  style span; whitespace-only tokens are not scored;
- `overlap` (the authors' release): a token is style when its characters overlap a style span,
  whitespace-only tokens included; special tokens are capability.
Optional left context: tokens of the text before the segment are fed to the model but not scored;
at inference the loop hands the thinking before each span as that context.

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

Training (`train_predictor`) runs transformers' `Trainer`: a held-out split by document or at random,
a cross-entropy loss with or without inverse-frequency class weights, an evaluation after every
epoch, and the last epoch or the best one by a named held-out metric kept.

A checkpoint directory holds the Hugging Face model and tokenizer plus `tessy_predictor.json`: base,
data, role, label rule and semantics, inference dtype, settings, the held-out metrics of every epoch
and the epoch kept. A plain checkpoint (the release's) has no such file and is described by a
`PredictorSpec` in the config instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tessy.predictors.eq5 import eq5_cuts
from tessy.roles import TEACHER

META_FILE = "tessy_predictor.json"
DTYPES = ("float32", "bfloat16", "float16")  # torch dtypes a learned predictor can run in
CAPABILITY, STYLE = 0, 1
LABELS = {CAPABILITY: "capability", STYLE: "style"}
IGNORE = -100  # label of tokens that are seen but not scored (special tokens, left context, padding)
LABEL_RULES = ("first-char", "overlap")
# The held-out metrics an epoch can be kept by: the Trainer's token-level ones (on the training
# labels of the held-out segments) and those of `tessy.predictors.scoring.evaluate`.
METRICS = ("token_accuracy", "eval_loss", "style_f1", "style_precision", "style_recall", "boundary_exact",
           "boundary_within_word")
LOWER_IS_BETTER = {"eval_loss"}


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
    epochs: int = field(default=2, metadata={"min": 1, "help": "passes over the training split (the release: 3)"})
    lr: float = field(default=5e-5, metadata={"gt": 0, "help": "AdamW peak learning rate (the release: 1e-5)"})
    lr_schedule: str = field(
        default="linear",
        metadata={"choices": ("linear", "constant"),
                  "help": "linear: warm-up over a tenth of an epoch, then linear decay to 0; constant: lr throughout, "
                          "no warm-up (the release)"},
    )
    batch_size: int = field(default=16, metadata={"min": 1, "help": "segments per optimizer step (the release: 32)"})
    max_length: int = field(
        default=128,
        metadata={"min": 8, "help": "most tokens of a segment (plus context) the model reads (the release: 512)"},
    )
    max_samples: int | None = field(
        default=None,
        metadata={"min": 1, "help": "train and hold out at most this many segments, drawn at random with the seed "
                                    "(the release: 10000); None: all"},
    )
    left_context: int = field(default=0, metadata={"min": 0, "help": "tokens of preceding text seen but not scored"})
    label_rule: str = field(
        default="first-char",
        metadata={"choices": LABEL_RULES,
                  "help": "first-char: a token is style when its first non-space character is in a style span, "
                          "whitespace-only tokens unscored; overlap: when its characters overlap a style span, "
                          "whitespace-only tokens included (the release)"},
    )
    labels: str = field(
        default="same-token",
        metadata={"choices": ("same-token", "next-token"),
                  "help": "same-token: the logits at token t classify token t; next-token: they classify token t+1 "
                          "(the authors' release), and the release's cut rule applies"},
    )
    class_weights: bool = field(
        default=True,
        metadata={"help": "weigh the cross-entropy by inverse class frequency (style is rare); "
                          "--no-class-weights: plain cross-entropy (the release)"},
    )
    split: str = field(
        default="doc",
        metadata={"choices": ("doc", "random"),
                  "help": "held-out split: doc holds out whole docs (no window overlaps across); random holds out "
                          "random segments (the release)"},
    )
    eval_fraction: float = field(
        default=0.2,
        metadata={"min": 0, "max": 0.9, "help": "share of docs (split doc) or of segments (split random) held out "
                                                "for the per-epoch evaluation (the release: 0.05)"},
    )
    keep: str = field(
        default="last",
        metadata={"choices": ("last", "best"),
                  "help": "the epoch whose weights are saved: the last, or the best by --metric on the held-out "
                          "split (the release: best by token accuracy)"},
    )
    metric: str = field(
        default="token_accuracy",
        metadata={"choices": METRICS,
                  "help": "held-out metric that picks the best epoch: token_accuracy and eval_loss (the training "
                          "loss) on the training labels, or a `tessy predictor eval` metric; eval_loss: lowest, the "
                          "others: highest; the first epoch wins a tie"},
    )
    dtype: str = field(
        default="float32",
        metadata={"choices": DTYPES,
                  "help": "torch dtype the predictor runs in at inference, saved with it (the release: bfloat16); "
                          "training is in float32"},
    )
    seed: int = field(default=0, metadata={"help": "sample, split, head and shuffle seed (the release: 42)"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | auto (cuda where there is one)"})


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# --- encoding -----------------------------------------------------------------------------------------
def token_labels(text: str, offsets: list[tuple[int, int]], spans: list) -> list[int]:
    """The `first-char` rule: STYLE when a token's first non-space character lies in a span;
    IGNORE for tokens with no such character (whitespace-only tokens, special tokens)."""
    labels = []
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1  # byte-level BPE glues the leading space to a word: judge the word
        if start >= end:
            labels.append(IGNORE)
        else:
            labels.append(STYLE if any(s <= start < e for s, e in spans) else CAPABILITY)
    return labels


def overlap_labels(offsets: list[tuple[int, int]], spans: list) -> list[int]:
    """The `overlap` rule (the authors' release): STYLE when a token starts inside a span or a span
    starts inside the token, whatever its characters (whitespace too). A token with offsets (0, 0)
    is a special token there and stays CAPABILITY, scored like any other."""
    labels = []
    for start, end in offsets:
        special = start == 0 and end == 0
        labels.append(STYLE if not special and any(s <= start < e or start <= s < end for s, e in spans)
                      else CAPABILITY)
    return labels


def encode(tokenizer, text: str, context: str = "", spans: list | None = None, max_length: int = 128,
           left_context: int = 0, rule: str = "first-char") -> dict:
    """input_ids, offsets into `text` (None for non-text tokens) and, given `spans`, labels by `rule`
    (`LABEL_RULES`). The tokenizer's own leading special tokens (a BOS) come first; under `overlap`
    they are labelled CAPABILITY as the release labels them, under `first-char` they are not scored.
    Left-context tokens are never scored."""
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
        if rule == "overlap":
            out["labels"] = [CAPABILITY] * len(prefix) + [IGNORE] * len(ctx) + overlap_labels(offsets, spans)
        elif rule == "first-char":
            out["labels"] = [IGNORE] * (len(prefix) + len(ctx)) + token_labels(text, offsets, spans)
        else:
            raise ValueError(f"label rule {rule!r} is not one of {', '.join(LABEL_RULES)}")
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
    """A token classifier behind the `BoundaryPredictor` protocol, batched, on CPU or GPU; a
    `StreamingPredictor` where its checkpoint can promise a final cut (`cut_settled` below)."""

    def __init__(self, model, tokenizer, meta: dict, name: str = "learned", batch_size: int = 32):
        self.model, self.tokenizer, self.meta, self.name = model, tokenizer, meta, name
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.semantics = meta.get("semantics", "same-token")
        self.style_label = meta.get("style_label", STYLE)
        self.max_length = meta.get("max_length", 128)
        self.left_context = meta.get("left_context", 0)
        # Streamed cuts (tessy/engine/streaming.py). A same-token checkpoint that reads no left context labels
        # the span alone with a causal model, cut from the right where it is too long, so a token's
        # label depends only on the tokens before it: a cut is final once the word it starts is whole
        # (which the loop's own rule waits for). With left context, the context fills what the span
        # leaves, so its share changes as the span grows; and the release's next-token rule reads the
        # last `max_length` tokens of context and span, a window that slides. Neither can promise:
        # their turns run to k: `cut_settled` is None, so it is no `StreamingPredictor`.
        self.cut_settled = (lambda text, b: True) if self.semantics == "same-token" and not self.left_context \
            else None
        self.inline = False  # a forward pass per reading: streamed spans are read in micro-batches

    @classmethod
    def load(cls, path, spec=None, device: str = "auto", batch_size: int = 32) -> "LearnedPredictor":
        """A checkpoint of `tessy predictor train`, or with `spec` (a `PredictorSpec`) any 2-label
        token-classification checkpoint, such as the authors' released predictors. The weights load in
        the spec's dtype, else the one `tessy_predictor.json` records, else float32."""
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        path = Path(path)
        meta = json.loads((path / META_FILE).read_text()) if is_checkpoint(path) else {}
        if spec is not None:
            meta = {**meta, "semantics": spec.labels, "style_label": spec.style_label}
            if spec.context_tokens:
                meta.update(max_length=spec.context_tokens, left_context=spec.context_tokens)
            if spec.dtype:
                meta["dtype"] = spec.dtype
        elif not meta:
            raise ValueError(f"{path}: not a checkpoint of `tessy predictor train`; describe a plain checkpoint "
                             f"with {{path, labels, style_label, context_tokens, dtype}}")
        dtype = meta.setdefault("dtype", "float32")
        if dtype not in DTYPES:
            raise ValueError(f"{path}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForTokenClassification.from_pretrained(path, dtype=getattr(torch, dtype))
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


def split_random(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out) as the release splits: the rows shuffled by `random.Random(seed)`, the first
    max(1, int(fraction * n)) held out (none when `fraction` is 0)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_eval = max(1, int(len(rows) * fraction)) if fraction > 0 else 0
    return rows[n_eval:], rows[:n_eval]


def sample_rows(rows: list[dict], max_samples: int | None, seed: int) -> list[dict]:
    """At most `max_samples` rows, drawn as the release draws them (`random.Random(seed).sample`)."""
    if max_samples is None or max_samples >= len(rows):
        return rows
    return random.Random(seed).sample(rows, max_samples)


def pick_epoch(history: list[dict], keep: str, metric: str) -> dict | None:
    """The epoch `keep` saves: the last, or the best by `metric` (lowest for `LOWER_IS_BETTER`,
    else highest; the first epoch wins a tie, as the release keeps an epoch only when it is strictly
    better). None when no epoch has the metric (nothing held out)."""
    if keep == "last":
        return history[-1] if history else None
    scored = [h for h in history if h.get(metric) is not None]
    if not scored:
        return None
    sign = -1 if metric in LOWER_IS_BETTER else 1
    return max(scored, key=lambda h: (sign * h[metric], -h["epoch"]))


def base_checkpoint(base: str):
    """`tessy.models.resolve`, and a hub id (`Qwen/Qwen3-0.6B-Base`) where the hub can be reached."""
    from tessy.models import resolve

    try:
        return resolve(base)
    except FileNotFoundError:
        if base.count("/") == 1 and not Path(base).exists():
            return base
        raise



def encode_rows(tokenizer, rows: list[dict], config: TrainConfig) -> list[dict]:
    """Training features of annotated rows: input_ids and labels by the config's rule, shifted
    left by one for `next-token` semantics."""
    out = []
    for r in rows:
        enc = encode(tokenizer, r["text"], r.get("context", ""), r["style_spans"], config.max_length,
                     config.left_context, config.label_rule)
        labels = shift_left(enc["labels"]) if config.labels == "next-token" else enc["labels"]
        out.append({"input_ids": enc["input_ids"], "labels": labels})
    return out


def inverse_frequency(features: list[dict]) -> list[float]:
    """Class weights n / (2 n_c) over the scored labels: style tokens are a small minority."""
    counts = [sum(lab == c for f in features for lab in f["labels"]) for c in (CAPABILITY, STYLE)]
    return [sum(counts) / (2 * max(c, 1)) for c in counts]


def cross_entropy(weights: list[float] | None):
    """The Trainer's loss hook (`compute_loss_func`): token cross-entropy over the scored labels,
    weighted by class when `weights` is given (the weighted mean, as torch takes it). The batch's own
    mean: training runs without gradient accumulation, so `num_items_in_batch` is not needed."""
    import torch
    import torch.nn.functional as F

    weight = torch.tensor(weights, dtype=torch.float32) if weights else None

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).to(logits.device),
                               weight=None if weight is None else weight.to(logits.device), ignore_index=IGNORE)

    return loss


def _argmax(logits, labels):
    return logits.argmax(-1)  # the Trainer keeps classes, not logits, for `token_accuracy`


def token_accuracy(prediction) -> dict:
    """The release's validation accuracy: argmax classes against the training labels of the
    held-out segments, over the scored tokens."""
    predicted, labels = prediction.predictions, prediction.label_ids
    scored = labels != IGNORE
    total = int(scored.sum())
    return {"token_accuracy": round(float((predicted[scored] == labels[scored]).sum()) / total, 4) if total else 0.0}


def _epoch_recorder(config: TrainConfig, tokenizer, eval_rows: list[dict], steps_per_epoch: int,
                    log: Callable[[str], None]):
    """A `TrainerCallback` that logs the running loss, scores each epoch on the held-out rows
    (`tessy.predictors.scoring.evaluate`, beside the Trainer's token accuracy and loss), and keeps a
    copy of the weights of the best epoch so far when `config.keep` is `best`."""
    from transformers import TrainerCallback

    from tessy.predictors import scoring

    class EpochRecorder(TrainerCallback):
        def __init__(self):
            self.history: list[dict] = []
            self.losses: list[float] = []
            self.epoch_losses: list[float] = []
            self.best_state = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            self.losses.append(logs["loss"])
            self.epoch_losses.append(logs["loss"])
            step = state.global_step - steps_per_epoch * len(self.history)
            if step % 10 == 0 or step == steps_per_epoch:
                recent = self.epoch_losses[-10:]
                log(f"epoch {len(self.history) + 1} step {step}/{steps_per_epoch} "
                    f"loss {sum(recent) / len(recent):.4f}")

        def on_epoch_end(self, args, state, control, **kwargs):
            if not eval_rows:  # no evaluation follows: the epoch ends here
                self._record({})

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            predictor = LearnedPredictor(model, tokenizer, {"max_length": config.max_length,
                                                            "left_context": config.left_context,
                                                            "semantics": config.labels})
            scores = {"eval_loss": round(metrics["eval_loss"], 4),
                      "token_accuracy": metrics["eval_token_accuracy"],
                      **scoring.evaluate(predictor, eval_rows, batch_size=config.batch_size)}
            self._record(scores)
            if config.keep == "best" and pick_epoch(self.history, "best", config.metric) is self.history[-1]:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

        def _record(self, scores: dict) -> None:
            losses = self.epoch_losses or [float("nan")]
            metrics = {"epoch": len(self.history) + 1, "train_loss": round(sum(losses) / len(losses), 4), **scores}
            self.history.append(metrics)
            self.epoch_losses = []
            log(f"epoch {metrics['epoch']}: " + ", ".join(f"{k} {v}" for k, v in metrics.items() if k != "epoch"))

    return EpochRecorder()


def label_semantics(config: TrainConfig) -> str:
    """The meaning of a checkpoint's labels, in words, for `tessy_predictor.json`."""
    rule = ("a token is style when its characters overlap an annotated style span (whitespace-only tokens too; "
            "special tokens are capability)" if config.label_rule == "overlap" else
            "a token is style when its first non-space character lies in an annotated style span "
            "(whitespace-only and special tokens are not scored)")
    shift = "; the logits at token t classify token t+1" if config.labels == "next-token" else ""
    return f"per token: style (1) or capability (0); {rule}{shift}"


def train_predictor(config: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Sample and split the segments, train with transformers' `Trainer`, evaluate on the held-out
    split after every epoch, save the kept epoch's weights; return the metadata (`tessy_predictor.json`)."""
    import torch
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from tessy.predictors.scoring import AllCapability, evaluate
    from tessy.predictors.segments import read_segments

    if config.labels not in ("same-token", "next-token"):
        raise ValueError(f"labels: {config.labels!r} is not same-token or next-token")
    if config.label_rule not in LABEL_RULES:
        raise ValueError(f"label_rule: {config.label_rule!r} is not one of {', '.join(LABEL_RULES)}")
    rows = read_segments(config.data, config.source)
    if not rows:
        raise ValueError(f"{config.data}: no annotated segments"
                         + (f" from the {config.source}" if config.source else ""))
    rows = sample_rows(rows, config.max_samples, config.seed)
    split = split_random if config.split == "random" else split_by_doc
    train_rows, eval_rows = split(rows, config.eval_fraction, config.seed)
    if not train_rows:
        raise ValueError(f"{config.data}: no segments left to train on after holding out {len(eval_rows)}")
    if config.keep == "best" and not eval_rows:
        raise ValueError("keep best needs held-out segments to choose by: set eval_fraction above 0")

    set_seed(config.seed)  # the classification head's initialisation too
    base_dir = base_checkpoint(config.base)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForTokenClassification.from_pretrained(
        base_dir, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id

    train_set, eval_set = encode_rows(tokenizer, train_rows, config), encode_rows(tokenizer, eval_rows, config)
    weights = inverse_frequency(train_set) if config.class_weights else None
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    device = pick_device(config.device)
    styled = sum(lab == STYLE for f in train_set for lab in f["labels"])
    scored = sum(lab != IGNORE for f in train_set for lab in f["labels"])
    log(f"train {len(train_rows)} segments, held out {len(eval_rows)} ({config.split} split); "
        f"tokens capability {scored - styled}, style {styled} ({config.label_rule} rule, {config.labels}); "
        f"loss {'class weights ' + str([round(w, 2) for w in weights]) if weights else 'plain cross-entropy'}; "
        f"lr {config.lr} {config.lr_schedule}; device {device}")

    recorder = _epoch_recorder(config, tokenizer, eval_rows, steps_per_epoch, log)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tessy-predictor-") as scratch:  # the Trainer's output_dir: unused
        args = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=config.batch_size,
            learning_rate=config.lr,
            lr_scheduler_type=config.lr_schedule,
            warmup_steps=max(1, steps_per_epoch // 10) if config.lr_schedule == "linear" else 0,
            optim="adamw_torch",
            weight_decay=0.01,  # torch's AdamW default
            max_grad_norm=1.0,
            eval_strategy="epoch" if eval_set else "no",
            save_strategy="no",  # the kept epoch's weights are held by the recorder, then saved to `out`
            logging_strategy="steps",
            logging_steps=1,
            report_to=[],
            disable_tqdm=True,
            seed=config.seed,
            use_cpu=device == "cpu",
            dataloader_pin_memory=device != "cpu",
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE),
            train_dataset=train_set,
            eval_dataset=eval_set or None,
            compute_loss_func=cross_entropy(weights),
            compute_metrics=token_accuracy,
            preprocess_logits_for_metrics=_argmax,
            callbacks=[recorder],
        )
        trainer.remove_callback(PrinterCallback)  # the recorder logs instead
        trainer.train()
    train_s = round(time.perf_counter() - t0, 1)

    history = recorder.history
    kept, best = pick_epoch(history, config.keep, config.metric), pick_epoch(history, "best", config.metric)
    if config.keep == "best":
        model.load_state_dict(recorder.best_state)
        log(f"kept epoch {kept['epoch']} of {len(history)}: best {config.metric} {kept[config.metric]}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {
        "kind": "tessy boundary predictor",
        "role": config.source or "+".join(sorted({r.get("source", "?") for r in rows})),
        "labels": {str(k): v for k, v in LABELS.items()},
        "label_rule": config.label_rule,
        "label_semantics": label_semantics(config),
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
        "dtype": config.dtype,
        "class_weights": weights or [1.0, 1.0],
        "config": asdict(config),
        "train_losses": [round(x, 4) for x in recorder.losses],
        "epochs": history,
        "keep": config.keep,
        "metric": config.metric,
        "best_epoch": best["epoch"] if best else None,
        "best_value": best[config.metric] if best else None,
        "saved_epoch": kept["epoch"],
        "baseline_all_capability": evaluate(AllCapability(), eval_rows) if eval_rows else None,
        "train_s": train_s,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta
