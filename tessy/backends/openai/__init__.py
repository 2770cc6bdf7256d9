"""The `openai` backend: any OpenAI-compatible server (vLLM, SGLang, llama.cpp), in four modules.

- `pool`: the endpoint pool (one async HTTP client, retries, throttling, server-sent events);
- `dialects`: one class per server dialect (ids, native, text): its request body and how to read its
  answers and stream events;
- `backend`: `OpenAIBackend` (sessions, requests, streaming with watches, warm-ups, server counters);
- `chat`: `ChatClient`, the chat endpoint for the annotator and the judge.
"""

from tessy.backends.openai.backend import (
    SERVER_COUNTERS,
    OpenAIBackend,
    WatchFailed,
    ask,
    eos_ids_of,
    load_tokenizer,
)
from tessy.backends.openai.chat import ChatClient
from tessy.backends.openai.dialects import (
    DIALECTS,
    NATIVE_FIELDS,
    NATIVE_SAMPLERS,
    Answer,
    Ids,
    Native,
    Text,
    server_span,
    through_stop,
    with_usage,
)
from tessy.backends.openai.pool import (
    BACKOFF_S,
    Endpoint,
    EndpointPool,
    RequestFailed,
    SSEDecoder,
    _failure,
    compact_json,
)

__all__ = [
    "BACKOFF_S", "DIALECTS", "NATIVE_FIELDS", "NATIVE_SAMPLERS", "SERVER_COUNTERS", "Answer", "ChatClient",
    "Endpoint", "EndpointPool", "Ids", "Native", "OpenAIBackend", "RequestFailed", "SSEDecoder", "Text",
    "WatchFailed", "_failure", "ask", "compact_json", "eos_ids_of", "load_tokenizer", "server_span",
    "through_stop", "with_usage",
]
