"""The chat client: `/v1/chat/completions` through the endpoint pool, for the style annotator and
the teacher-score judge."""

from __future__ import annotations

import asyncio
import os

from tessy.backends.openai.pool import BACKOFF_S, Endpoint, EndpointPool
from tessy.backends.protocol import SampleError


class ChatClient:
    """A chat endpoint (`/v1/chat/completions`) for the style annotator and the teacher-score judge.

    `complete` sends every conversation at once (at most `concurrency` per endpoint) and returns one
    answer text per conversation, or a `SampleError` where it failed for good. Each request carries
    the sampling (`temperature`, `top_p`; `top_k` only where it is on, above 0, since OpenAI's own API
    has no such field), `max_tokens`, the `seed`, and `chat_template_kwargs` where given: vLLM and
    llama.cpp's server hand these to the model's chat template (Qwen3: {"enable_thinking": false}).
    """

    def __init__(self, urls: list[str], model: str = "", api_key_env: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 3, concurrency: int = 16, temperature: float = 0.0, max_tokens: int = 512,
                 seed: int | None = 0, backoff_s: float = BACKOFF_S, top_p: float = 1.0, top_k: int = 0,
                 chat_template_kwargs: dict | None = None):
        api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not api_key:
            raise ValueError(f"api_key_env: the environment variable {api_key_env} is not set")
        self.pool = EndpointPool(urls, api_key, timeout_s, max_retries, concurrency, backoff_s)
        self.model, self.temperature, self.max_tokens, self.seed = model, temperature, max_tokens, seed
        self.top_p, self.top_k, self.chat_template_kwargs = top_p, top_k, dict(chat_template_kwargs or {})
        self._next = 0

    @classmethod
    def from_config(cls, spec, endpoint, max_tokens: int) -> "ChatClient":
        """The chat endpoint of a role (tessy.config): its model's sampling and template arguments
        (`ModelSpec`), its servers (`Endpoint`), with answers of up to `max_tokens`."""
        return cls(endpoint.urls, model=spec.model, api_key_env=endpoint.api_key_env, timeout_s=endpoint.timeout_s,
                   max_retries=endpoint.max_retries, concurrency=endpoint.concurrency, temperature=spec.temperature,
                   max_tokens=max_tokens, seed=spec.seed, top_p=spec.top_p, top_k=spec.top_k,
                   chat_template_kwargs=spec.chat_template_kwargs)

    def body(self, messages: list[dict], served_model: str, extra: dict | None = None) -> dict:
        """The JSON body of one request (`extra` adds or replaces fields)."""
        body = {"model": served_model, "messages": messages, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens}
        if self.top_k > 0:
            body["top_k"] = self.top_k
        if self.chat_template_kwargs:
            body["chat_template_kwargs"] = dict(self.chat_template_kwargs)
        if self.seed is not None:
            body["seed"] = self.seed
        return {**body, **(extra or {})}

    def complete(self, conversations: list[list[dict]], **extra) -> list[str | SampleError]:
        return self.pool.run(self._all(conversations, extra))

    async def _all(self, conversations, extra):
        return await asyncio.gather(*(self._one(c, extra) for c in conversations))

    async def _one(self, messages: list[dict], extra: dict) -> str | SampleError:
        async def attempt(ep: Endpoint) -> str:
            body = self.body(messages, await self.pool.served_model(ep, self.model), extra)
            content = (await self.pool.post(ep, "/chat/completions", body))["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError(f"message content is {type(content).__name__}, not a string")
            return content

        start, self._next = self._next % len(self.pool.endpoints), self._next + 1
        try:
            return (await self.pool.call(start, attempt))[0]
        except SampleError as e:
            return e

    def throttling(self) -> dict:
        """How the servers held this client back (`EndpointPool.throttling`)."""
        return self.pool.throttling()

    def close(self) -> None:
        self.pool.close()
