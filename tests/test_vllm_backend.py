"""The `vllm` backend: vllm.LLM in this process with prefix caching, on a GPU where there is one and on
vLLM's CPU build otherwise. `make test` runs this module in .venv-vllm/ (scripts/install_vllm.sh), where
vLLM is installed; in an environment without vLLM it skips."""

from __future__ import annotations

import pytest

from tessy.backends.vllm import is_vllm_available

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not is_vllm_available(), reason="vllm is not installed")]


@pytest.fixture(scope="module")
def backend():
    import torch

    from tessy.backends import make_backend
    from tessy.config import role_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    b = make_backend(role_config("smollm2-135m-instruct", backend="vllm", temperature=0.0, device=device))
    config = b.llm.llm_engine.vllm_config.cache_config
    assert config.enable_prefix_caching and config.block_size == (16 if device == "cuda" else 32)
    return b


def test_spans_are_the_sampled_ids_and_rollback_keeps_the_prefix(backend):
    s = backend.start("Question: write a Python function that takes two numbers, checks that both are integers, "
                      "raises a ValueError otherwise, and returns their sum. Explain each step.\n\nAnswer:")
    prompt = list(s.ids)
    [span] = backend.generate([s], [12], [()])
    assert s.ids == prompt + span.ids and len(span.ids) <= 12
    backend.rollback(s, len(span.ids) - 4)
    backend.extend(s, " so the result")
    [again] = backend.generate([s], [8], [()])
    assert again.cached_tokens and again.cached_tokens >= 32  # the kept prefix's full blocks, found in the cache
    # Greedy: the same ids prefilled fresh give the same continuation.
    fresh = backend.start("")
    fresh.ids = s.ids[: len(s.ids) - len(again.ids)]
    [check] = backend.generate([fresh], [8], [()])
    assert check.ids == again.ids


def test_a_stop_marker_ends_the_span(backend):
    s = backend.start("Count: one, two, three, four,")
    [span] = backend.generate([s], [20], [(",",)])
    assert span.finish in ("stop", "eos") and (span.finish != "stop" or "," in span.text)


def test_seeded_sampling_repeats_and_every_row_of_a_batch_is_its_own(backend):
    import dataclasses

    backend.sampling = dataclasses.replace(backend.sampling, temperature=0.8)
    try:
        rows = [backend.start("Write a short poem about the sea.\n", key=f"p{i}") for i in range(3)]
        first = backend.generate(rows, [10, 10, 10], [(), (), ()])
        again = [backend.start("Write a short poem about the sea.\n", key=f"p{i}") for i in range(3)]
        second = backend.generate(again, [10, 10, 10], [(), (), ()])
        assert [s.ids for s in first] == [s.ids for s in second]
        assert len({tuple(s.ids) for s in first}) > 1  # three seed streams, not one
    finally:
        backend.sampling = dataclasses.replace(backend.sampling, temperature=0.0)
