"""Backends: one small protocol, one class per engine, picked with a plain if/elif.

A backend owns one model. For every sample it keeps a `Session`: the model's own token-id
transcript and whatever cached state its engine has for it. The loop only ever asks three things:
write up to n tokens, append the other model's text, and roll back.

Writing comes in two shapes, for the scheduler's two drivers (tessy/engine/scheduler.py):
- `generate`: one batched call over many sessions, which returns when every row is done. In-process
  engines (`hf`, `vllm`) are served this way: a batch is what keeps a CPU or GPU efficient.
- `submit`: one session's request, answered by a future as soon as that request returns. Server
  engines (`openai`, `concurrent = True`) are served this way, so no sample waits for another.
"""

from __future__ import annotations

from tessy.backends.protocol import (  # noqa: F401  (the protocol, as callers name it: tessy.backends.Span)
    Backend,
    SampleError,
    Sampling,
    Session,
    Span,
    answered,
    failed,
    span_from_ids,
)


def make_backend(config, role_name: str = "") -> Backend:
    """Build the backend a role's config asks for (`backend: hf | openai | vllm`): a `RoleConfig`
    (tessy.config), whose model spec the in-process engines read and whose endpoint the openai one
    reads too."""
    spec = config.spec
    if spec.backend == "hf":
        from tessy.backends.hf import HFBackend

        return HFBackend.from_config(spec)
    elif spec.backend == "openai":
        from tessy.backends.openai import OpenAIBackend

        return OpenAIBackend.from_config(spec, config.endpoint)
    elif spec.backend == "vllm":
        from tessy.backends.vllm import VLLMBackend

        return VLLMBackend.from_config(spec)
    raise ValueError(f"{role_name or 'model'}: unknown backend {spec.backend!r} (available: hf, openai, vllm)")
