"""Backends: one small protocol, one class per engine, picked with a plain if/elif.

A backend owns one model. For every sample it keeps a `Session`: the model's own token-id
transcript and whatever cached state its engine has for it. The loop only ever asks three things:
write up to n tokens (batched across samples), append the other model's text, and roll back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class Sampling:
    temperature: float = 0.6  # the paper's setting (section 3.1)
    top_p: float = 1.0
    seed: int | None = 0


@dataclass
class Session:
    """One sample's transcript as one model sees it."""

    ids: list[int]
    n_cached: int = 0  # ids[:n_cached] have cached state in the engine
    state: Any = None  # engine-specific (the hf backend keeps per-layer key/value tensors)


@dataclass
class Span:
    """Up to k tokens a model wrote in one turn.

    `offsets[i]` is the length of the text of `ids[:i+1]`, or -1 where that prefix ends inside a
    character (a UTF-8 sequence cut by the k-token edge): no cut may land there.
    """

    ids: list[int]
    text: str
    offsets: list[int]
    finish: str  # "length" | "eos" | "stop"

    def tokens_within(self, n_chars: int) -> int:
        """The most tokens whose text fits in the first `n_chars` characters."""
        n = 0
        for i, end in enumerate(self.offsets):
            if end == -1:
                continue
            if end > n_chars:
                break
            n = i + 1
        return n

    def text_of(self, n_tokens: int) -> str:
        return self.text[: self.offsets[n_tokens - 1]] if n_tokens else ""


class SampleError(Exception):
    """One row of a `generate` call that failed for good (a server backend gave up after its
    retries). A backend returns it in that row's place; the scheduler drops that sample and reports
    it, and the other rows go on."""

    def __init__(self, message: str, attempts: int = 1, endpoint: str = ""):
        super().__init__(message)
        self.attempts = attempts
        self.endpoint = endpoint


class Backend(Protocol):
    tokenizer: Any
    sampling: Sampling

    def start(self, prompt: str, add_special_tokens: bool = False) -> Session: ...

    def extend(self, session: Session, text: str) -> int: ...

    def generate(self, sessions: list[Session], max_new_tokens: list[int], stop: list[tuple[str, ...]]) -> list[Span | SampleError]: ...

    def rollback(self, session: Session, n_tokens: int) -> None: ...

    def release(self, session: Session) -> None: ...


def span_from_ids(tokenizer, ids: list[int], finish: str) -> Span:
    """Decode `ids` with per-token character offsets (see `Span`)."""
    offsets, text = [], ""
    full = tokenizer.decode(ids, skip_special_tokens=False)
    for i in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:i], skip_special_tokens=False)
        if prefix.endswith("\ufffd") or not full.startswith(prefix):
            offsets.append(-1)
        else:
            offsets.append(len(prefix))
            text = prefix
    return Span(ids=list(ids), text=text, offsets=offsets, finish=finish)


def make_backend(config, role_name: str = "") -> Backend:
    """Build the backend a model config asks for (`backend: hf | openai | vllm`)."""
    if config.backend == "hf":
        from tessy.backends.hf import HFBackend

        return HFBackend.from_config(config)
    elif config.backend == "openai":
        from tessy.backends.openai import OpenAIBackend

        return OpenAIBackend.from_config(config)
    elif config.backend == "vllm":
        from tessy.backends.vllm import VLLMBackend

        return VLLMBackend.from_config(config)
    raise ValueError(f"{role_name or 'model'}: unknown backend {config.backend!r} (available: hf, openai, vllm)")
