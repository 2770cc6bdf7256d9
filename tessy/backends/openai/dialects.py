"""The three server dialects an OpenAI-compatible endpoint may speak, one class each.

- **ids** (vLLM): `/v1/completions` with the session's own token ids as the prompt; the answer
  carries the sampled ids (`return_token_ids`). A model's own span is kept as the exact ids it
  sampled, and the server's prefix cache (vLLM: full 16-token blocks) reuses everything up to the
  last rollback, so a sample's cost grows linearly with its length.
- **native** (llama.cpp's `llama-server`, whose `/v1/completions` takes token ids but answers text
  only): its own `/completion` route at the server root (the base URL without its `/v1`), with the
  token-id prompt, `return_tokens` (the sampled ids come back as they are) and `cache_prompt` (the
  slot's cached prefix is reused). The role's sampling goes under llama.cpp's names, with the
  sampler chain in transformers' order; `timings.cache_n` and `tokens_evaluated` give the span's
  cached and prompt tokens.
- **text** (a server that takes neither, such as llama-cpp-python's): the session keeps its text as
  well; the sampled text is encoded with the role's tokenizer for ids and per-token offsets. The
  server re-tokenizes the whole prompt, so its view of a model's own span may differ from what it
  sampled: a limit of such servers, not of tessy.

Each dialect builds its request body (`request`), reads a whole answer or one stream event into an
`Answer` (`read`), makes the answer's span (`span`) and its prompt figures (`figures`), and says
whether an endpoint speaks it (`probe`). `DIALECTS` holds them in the order an endpoint is probed:
a one-token `/v1/completions` request with a token-id prompt and `return_token_ids`, answered with
`token_ids`: ids; else a one-token `/completion` request at the root with a token-id prompt and
`return_tokens`, answered with `tokens`: native; else text, once a text prompt has gone through. A
probe that gets no answer at all decides nothing: it raises `RequestFailed`.

Special tokens are kept in both directions where the server allows (`add_special_tokens=false`,
`skip_special_tokens=false`; native sends ids and reads ids), so think markers survive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tessy.backends.openai.pool import Endpoint, EndpointPool, RequestFailed
from tessy.backends.protocol import Sampling, Span, SpanDecoder, span_from_ids

# llama.cpp's sampler chain for a role: transformers' order (penalty, temperature, top-k, top-p,
# min-p), and none of the server's other samplers (DRY, XTC, typical, top-n-sigma), whatever its
# command line set.
NATIVE_SAMPLERS = ["penalties", "temperature", "top_k", "top_p", "min_p"]
# The fields of llama.cpp's last answer that tessy reads: not the prompt echoed back, nor the settings.
NATIVE_FIELDS = ["content", "tokens", "stop", "stop_type", "stopping_word", "tokens_predicted", "tokens_evaluated",
                 "tokens_cached", "timings", "truncated"]


@dataclass
class Probe:
    """What the probes of one endpoint share: the one-token prompt's ids, and whether its
    `/v1/completions` has already answered one of them (then a text prompt needs no trial)."""

    ids: list[int]
    answered: bool = False


class Dialect(Protocol):
    name: str  # "ids", "native" or "text"
    ids: bool  # True: the prompt goes as token ids and the sampled ids come back

    def request(self, ep: Endpoint, prompt: list[int] | str, sampling: Sampling, seed: int | None, n: int,
                stop: list[str], stream: bool) -> tuple[str, dict]:
        """The URL and JSON body of one request for up to `n` tokens after `prompt`."""
        ...

    def read(self, answer: Answer, event: dict, whole: bool) -> None:
        """Add a whole answer (`whole`) or one stream event to `answer`."""
        ...

    def span(self, answer: Answer) -> Span:
        """The span of a complete answer, with its prompt figures."""
        ...

    def figures(self, answer: Answer, span: Span) -> Span:
        """`span` with the answer's prompt and cached-prompt token counts, where the server gave them."""
        ...

    async def probe(self, pool: EndpointPool, ep: Endpoint, probe: Probe) -> bool:
        """Whether the endpoint speaks this dialect; `RequestFailed` where its server did not answer."""
        ...


@dataclass
class Answer:
    """One answer as it arrives, whole or event by event, in one dialect: the sampled ids (ids and
    native) or text (text), how the server says it finished, and its prompt figures."""

    dialect: Dialect
    tokenizer: object
    eos_ids: set[int]  # the backend's own set: the native dialect may learn an end of generation
    n: int
    stop: tuple[str, ...]  # the non-empty stop strings
    ids: list[int] = field(default_factory=list)  # as the server sent them (ids and native)
    text: str = ""  # text
    reason: str | None = None  # the server's word for how it finished; None until it says
    ended: bool = False  # an EOS id arrived
    stopped: bool = False  # a stop string arrived
    lost: bool = False  # the server sampled more tokens than its stream carried
    usage: dict = field(default_factory=dict)  # ids and text: the answer's `usage`
    prompt_tokens: int | None = None  # native: from every event
    cached_tokens: int | None = None
    decoder: SpanDecoder | None = None  # ids and native: the span so far, decoded as it grows

    @classmethod
    def of(cls, dialect: Dialect, tokenizer, eos_ids: set[int], n: int, stop: tuple[str, ...]) -> Answer:
        """An empty answer to a request for up to `n` tokens with these stop strings."""
        return cls(dialect, tokenizer, eos_ids, n, tuple(s for s in stop if s),
                   decoder=SpanDecoder(tokenizer) if dialect.ids else None)

    @property
    def finished(self) -> bool:
        """The server said the answer is complete."""
        return self.reason is not None

    @property
    def complete(self) -> bool:
        """Nothing more will be added to the span: the server finished, or an EOS, a stop string or
        the last of the `n` tokens arrived."""
        return self.finished or self.ended or self.stopped or self._written() >= self.n

    def _written(self) -> int:
        return len(self.decoder.ids) if self.decoder is not None else 0

    def add(self, event: dict, whole: bool) -> bool:
        """Read a whole answer, or one stream event; whether it added tokens to the span."""
        before = (self._written(), len(self.text))
        self.dialect.read(self, event, whole)
        if self.stop and not self.stopped:
            text = self.decoder.text if self.decoder is not None else self.text
            self.stopped = any(s in text for s in self.stop)
        return before != (self._written(), len(self.text))

    def add_ids(self, ids) -> None:
        """Sampled ids as they arrive; the span so far stops at an EOS (a trailing one is never part
        of a span)."""
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise ValueError(f"token ids are not a list of ints: {str(ids)[:80]}")
        self.ids.extend(ids)
        if self.ended:
            return
        fresh = []
        for token in ids:
            if token in self.eos_ids:
                self.ended = True
                break
            fresh.append(token)
        self.decoder.add(fresh)

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def so_far(self) -> Span:
        """The span so far, as a watch reads it."""
        if self.decoder is not None:
            return self.decoder.span()
        return span_from_ids(self.tokenizer, self.text_ids(self.text), "length")

    def span(self, cut: bool = False) -> Span:
        """The answer's span: what a complete answer gives, or with `cut` the span so far with
        finish "cut"."""
        if not cut:
            return self.dialect.span(self)
        ids = self.decoder.ids if self.decoder is not None else self.text_ids(self.text)
        return self.dialect.figures(self, span_from_ids(self.tokenizer, list(ids[: self.n]), "cut"))

    def sampled_span(self, ids: list[int], reason: str | None) -> Span:
        """The span of the ids a server sampled, at most `n` of them, through its first stop string."""
        if len(ids) > self.n:  # llama.cpp may finish a UTF-8 character past its n_predict
            ids, reason = ids[: self.n], "length"
        return through_stop(server_span(self.tokenizer, ids, reason, self.stop, self.eos_ids), self.stop)


def server_span(tokenizer, ids: list[int], reason: str | None, stop: tuple[str, ...], eos_ids: set[int]) -> Span:
    """A `Span` from the ids a server sampled: EOS is never part of a span, and `finish` tells a
    stop string from an end of turn (servers call both "stop")."""
    ids = list(ids)
    ended = False
    while ids and ids[-1] in eos_ids:
        ids.pop()
        ended = True
    span = span_from_ids(tokenizer, ids, "length")
    if any(s and s in span.text for s in stop):
        span.finish = "stop"
    elif ended or reason != "length":
        span.finish = "eos"
    return span


def through_stop(span: Span, stop: tuple[str, ...]) -> Span:
    """`span` up to the token that completes its first stop string (that whole token kept, as vLLM's
    `include_stop_str_in_output` keeps it), finish "stop"; `span` itself when it holds none."""
    ends = [span.text.index(s) + len(s) for s in stop if s and s in span.text]
    if not ends:
        return span
    end = min(ends)
    for i, offset in enumerate(span.offsets):
        if offset != -1 and offset >= end:
            return Span(span.ids[: i + 1], span.text[:offset], span.offsets[: i + 1], "stop",
                        span.prompt_tokens, span.cached_tokens)
    return span


def with_usage(span: Span, answer: dict) -> Span:
    """The prompt and cached-prompt token counts of the answer's `usage`, where the server gives them
    (vLLM gives cached tokens with --enable-prompt-tokens-details)."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            span.prompt_tokens = usage["prompt_tokens"]
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            span.cached_tokens = details["cached_tokens"]
    return span


def openai_choice(answer: Answer, event: dict, whole: bool) -> dict | None:
    """The first choice of a `/v1/completions` answer or event (a dict), its `usage` kept in
    `answer`; None for vLLM's last stream event (the usage alone)."""
    if isinstance(event.get("usage"), dict):
        answer.usage = event["usage"]
    choices = event["choices"]
    if not choices and not whole:
        return None
    return choices[0]


def finish_reason(answer: Answer, choice: dict) -> None:
    """The choice's `finish_reason`, where it gives one, as how the answer finished."""
    if choice.get("finish_reason") is not None:
        answer.reason = choice["finish_reason"]


def probe_body(ep: Endpoint, prompt: list[int] | str) -> dict:
    """A one-token greedy `/v1/completions` request that asks for the sampled ids."""
    return {"model": ep.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "return_token_ids": True}


def openai_body(ep: Endpoint, sampling: Sampling, seed: int | None, n: int) -> dict:
    """The OpenAI fields of a `/v1/completions` request."""
    body = {"model": ep.model, "max_tokens": n, "temperature": sampling.temperature, "top_p": sampling.top_p}
    if seed is not None:
        body["seed"] = seed
    return body


class Ids:
    """vLLM's (and SGLang's) `/v1/completions`: token-id prompts, the sampled ids in the answer."""

    name = "ids"
    ids = True

    def request(self, ep, prompt, sampling, seed, n, stop, stream):
        body = openai_body(ep, sampling, seed, n)
        # vLLM and SGLang take these beside the OpenAI fields; sent only when set, so a server that
        # knows none of them still answers a config that uses none.
        if sampling.top_k > 0:
            body["top_k"] = sampling.top_k
        if sampling.min_p > 0:
            body["min_p"] = sampling.min_p
        if sampling.repetition_penalty != 1.0:
            body["repetition_penalty"] = sampling.repetition_penalty
        body.update(prompt=list(prompt), stop=stop or None, return_token_ids=True, include_stop_str_in_output=True,
                    skip_special_tokens=False, add_special_tokens=False, spaces_between_special_tokens=False)
        if stream:
            # Usage on every chunk: a stream closed at a cut never reads the last one.
            body.update(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
        return ep.url + "/completions", body

    def read(self, answer, event, whole):
        choice = openai_choice(answer, event, whole)
        if choice is None:
            sampled = answer.usage.get("completion_tokens")
            if isinstance(sampled, int) and sampled != len(answer.ids):
                answer.lost = True  # the stream carried fewer ids than the server sampled
            return
        ids = choice.get("token_ids") if not whole else choice["token_ids"]
        answer.add_ids([] if ids is None else ids)
        finish_reason(answer, choice)

    def span(self, answer):
        return self.figures(answer, answer.sampled_span(list(answer.ids), answer.reason))

    def figures(self, answer, span):
        return with_usage(span, {"usage": answer.usage})

    async def probe(self, pool, ep, probe):
        try:
            reply = await pool.post(ep, "/completions", probe_body(ep, probe.ids))
            probe.answered = True
            return isinstance(reply["choices"][0].get("token_ids"), list)
        except RequestFailed as e:
            if e.status is None or e.throttled:
                raise  # no answer at all (down, timed out), or not now (429): decide on a later try
            return False  # refused: llama-cpp-python's server answers 500 to a token-id prompt
        except (KeyError, IndexError, TypeError, AttributeError):
            return False


class Native:
    """llama.cpp's own `/completion` at the server's root: token-id prompts, `return_tokens`,
    `cache_prompt`, and every event's `timings.cache_n`."""

    name = "native"
    ids = True

    def request(self, ep, prompt, sampling, seed, n, stop, stream):
        s = sampling
        body = {"prompt": list(prompt), "n_predict": n, "temperature": s.temperature, "top_p": s.top_p,
                "top_k": s.top_k, "min_p": s.min_p, "repeat_penalty": s.repetition_penalty,
                # The penalty reads the whole context, as transformers and vLLM do (llama.cpp's
                # default looks back 64 tokens).
                "repeat_last_n": -1,
                "samplers": NATIVE_SAMPLERS, "return_tokens": True, "cache_prompt": True,
                "response_fields": NATIVE_FIELDS}
        if seed is not None:
            body["seed"] = seed
        if stop:
            # A stop string that is one special token (a think marker) is stopped at only where the
            # server renders it: `preserved_tokens` asks for that.
            body.update(stop=stop, preserved_tokens=stop)
        if stream:
            body.update(stream=True, timings_per_token=True)  # every event says what was cached
        return ep.root + "/completion", body

    def read(self, answer, event, whole):
        answer.add_ids(event["tokens"] if whole else event.get("tokens") or [])
        if isinstance(event.get("tokens_evaluated"), int):
            answer.prompt_tokens = event["tokens_evaluated"]
        timings = event.get("timings")
        if isinstance(timings, dict) and isinstance(timings.get("cache_n"), int):
            answer.cached_tokens = timings["cache_n"]
        # llama.cpp leaves the ids of a token that ends inside a UTF-8 character out of its stream
        # (the next event carries only its own); its own count of sampled tokens shows the gap.
        predicted = event.get("tokens_predicted")
        if not whole and isinstance(predicted, int) and predicted != len(answer.ids):
            answer.lost = True
        if event.get("stop") is True or whole:
            reason = event.get("stop_type")
            answer.reason = reason if isinstance(reason, str) and reason != "none" else "limit"

    def span(self, answer):
        ids, reason = list(answer.ids), answer.reason
        # The token that ended an "eos" answer is the server's end of generation, whether or not the
        # role's tokenizer calls it EOS; the backend knows it from now on (a stream's span so far then
        # stops before it too). Only a special token is learned: an answer that ends "eos" on an
        # ordinary token must not make that token an end of generation for every later span.
        specials = getattr(answer.tokenizer, "all_special_ids", None)
        if reason == "eos" and ids and ids[-1] not in answer.eos_ids and (specials is None or ids[-1] in specials):
            answer.eos_ids.add(ids.pop())
        reason = "length" if reason == "limit" else "stop"
        return self.figures(answer, answer.sampled_span(ids, reason))

    def figures(self, answer, span):
        span.prompt_tokens, span.cached_tokens = answer.prompt_tokens, answer.cached_tokens
        return span

    async def probe(self, pool, ep, probe):
        body = {"prompt": probe.ids, "n_predict": 1, "temperature": 0.0, "return_tokens": True, "cache_prompt": False}
        try:
            answer = await pool.post_url(ep.root + "/completion", body)
        except RequestFailed as e:
            if e.status is None or e.status >= 500 or e.throttled:
                raise  # no answer, a failing server, or not now (429): decide on a later try
            return False  # no such route (404), or it refuses token ids
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        return isinstance(tokens, list) and all(isinstance(t, int) for t in tokens)


class Text:
    """Plain OpenAI `/v1/completions`: a text prompt, the sampled text encoded again here."""

    name = "text"
    ids = False

    def request(self, ep, prompt, sampling, seed, n, stop, stream):
        body = openai_body(ep, sampling, seed, n)
        # llama.cpp's own defaults (top_k 40, min_p 0.05, repeat penalty 1.1) would change the role's
        # sampling, so every knob is sent. Its repeat penalty looks back over the last 64 tokens only
        # (`repeat_last_n`), where transformers and vLLM look at the whole context.
        body.update(top_k=sampling.top_k, min_p=sampling.min_p, repeat_penalty=sampling.repetition_penalty,
                    prompt=prompt)
        if stream:
            body["stream"] = True
        return ep.url + "/completions", body

    def read(self, answer, event, whole):
        choice = openai_choice(answer, event, whole)
        if choice is None:
            return
        text = choice["text"]
        if not isinstance(text, str):
            raise TypeError(f"text is {type(text).__name__}, not a string")
        answer.text += text
        finish_reason(answer, choice)

    def span(self, answer):
        # No stop strings go to a text server (it would drop the marker from the text and report an
        # end of turn the same way); the marker is found here instead.
        text, reason = answer.text, answer.reason
        cuts = [text.index(s) + len(s) for s in answer.stop if s in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        span = server_span(answer.tokenizer, answer.text_ids(text), reason, answer.stop, answer.eos_ids)
        return self.figures(answer, span)

    def figures(self, answer, span):
        return with_usage(span, {"usage": answer.usage})

    async def probe(self, pool, ep, probe):
        if not probe.answered:
            # Its `/v1/completions` refused a token-id prompt: that tells only if a text prompt goes
            # through; otherwise the server is failing (`RequestFailed`): decide later.
            await pool.post(ep, "/completions", probe_body(ep, "Hello"))
        return True


DIALECTS: tuple[Dialect, ...] = (Ids(), Native(), Text())  # in the order an endpoint is probed
