"""The `vllm` backend: vllm.LLM in this process with prefix caching. Skipped where vllm is not
installed (it needs a GPU; `pip install 'tessy[vllm]'`)."""

from __future__ import annotations

import pytest

from tessy.backends.vllm import is_vllm_available

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not is_vllm_available(), reason="vllm is not installed")]


@pytest.fixture(scope="module")
def backend():
    from tessy.backends import make_backend
    from tessy.config import ModelConfig

    b = make_backend(ModelConfig("smollm2-135m-instruct", backend="vllm", temperature=0.0, device="cuda"))
    assert b.llm.llm_engine.cache_config.enable_prefix_caching
    return b


def test_spans_are_the_sampled_ids_and_rollback_keeps_the_prefix(backend):
    s = backend.start("Question: add two numbers in Python.\n\nAnswer:")
    prompt = list(s.ids)
    [span] = backend.generate([s], [12], [()])
    assert s.ids == prompt + span.ids and len(span.ids) <= 12
    backend.rollback(s, len(span.ids) - 4)
    backend.extend(s, " so the result")
    [again] = backend.generate([s], [8], [()])
    # Greedy: the same ids prefilled fresh give the same continuation.
    fresh = backend.start("")
    fresh.ids = s.ids[: len(s.ids) - len(again.ids)]
    [check] = backend.generate([fresh], [8], [()])
    assert check.ids == again.ids


def test_a_stop_marker_ends_the_span(backend):
    s = backend.start("Count: one, two, three, four,")
    [span] = backend.generate([s], [20], [(",",)])
    assert span.finish in ("stop", "eos") and (span.finish != "stop" or "," in span.text)
