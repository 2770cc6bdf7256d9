"""Per-role sampling knobs (top_k, min_p, repetition_penalty) and turn sizes (k) in every backend.

The hf backend is checked on the embedded student: its knobs must act as transformers' own logits
processors do. The openai backend is checked on what it sends a server; the vllm backend on the
`SamplingParams` it builds (vllm itself needs a GPU machine).
"""

import sys
import types
from pathlib import Path

import pytest
import yaml
from scripted import EOS, run_scripted
from test_openai_backend import backend_on

from tessy.backends import Sampling
from tessy.config import load_config
from tessy.roles import STUDENT, TEACHER

PROMPT = "Question: List the colours of the rainbow, one per line.\n\nAnswer:"


@pytest.fixture(scope="module")
def student():
    from tessy.backends.hf import HFBackend
    from tessy.config import ModelSpec

    return HFBackend.from_config(ModelSpec("smollm2-135m-instruct"))


def sample(student, n=24, key="p1/student", **knobs):
    from tessy.backends.hf import HFBackend

    backend = HFBackend(student.model, student.tokenizer,
                        Sampling(**{"temperature": 1.0, "top_p": 1.0, "seed": 0, **knobs}))
    [span] = backend.generate([backend.start(PROMPT, key=key)], [n], [()])
    return span.ids


def test_top_k_one_and_min_p_one_are_greedy(student):
    greedy = sample(student, temperature=0.0)
    assert sample(student, top_k=1) == greedy
    assert sample(student, min_p=1.0) == greedy
    assert sample(student) != greedy  # at temperature 1 the plain sampler wanders off


def test_top_k_keeps_every_token_among_the_k_likeliest(student):
    """Each sampled token is among the k likeliest of the model's next-token distribution."""
    import torch

    ids = sample(student, n=16, top_k=3, key="p2/student")
    context = student.tokenizer.encode(PROMPT)
    with torch.no_grad():
        logits = student.model(input_ids=torch.tensor([context + ids])).logits[0]
    for i, tok in enumerate(ids):
        top = logits[len(context) + i - 1].topk(3).indices.tolist()
        assert tok in top


def test_repetition_penalty_is_transformers_own(student):
    """Greedy decoding with the penalty equals transformers' `generate` with the same penalty."""
    import torch

    ids = sample(student, n=20, temperature=0.0, repetition_penalty=1.3)
    assert ids != sample(student, n=20, temperature=0.0)
    context = torch.tensor([student.tokenizer.encode(PROMPT)])
    out = student.model.generate(context, attention_mask=torch.ones_like(context), max_new_tokens=20, do_sample=False,
                                 repetition_penalty=1.3, pad_token_id=student.pad_id)
    expected = out[0, context.shape[1]:].tolist()
    expected = expected[: next((i for i, t in enumerate(expected) if t in student.eos_ids), len(expected))]
    assert ids == expected


def test_a_config_sets_the_knobs_per_role(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"k": 20, "student": {"k": 5, "top_k": 20, "min_p": 0.05},
                                    "teacher": {"repetition_penalty": 1.1}}))
    config = load_config(path)
    assert Sampling.of(config.student.spec) == Sampling(0.6, 1.0, 0, 20, 0.05, 1.0)
    # the embedded teacher keeps its own top_k 20 (tessy/config.py) under the file's penalty
    assert Sampling.of(config.teacher.spec) == Sampling(0.6, 1.0, 1, 20, 0.0, 1.1)
    assert (config.student.turn.k, config.teacher.turn.k) == (5, None)  # None: the top-level k

    from tessy.engine.synth import settings_for

    class Tok:
        def get_vocab(self):
            return {}

    backends = {STUDENT: types.SimpleNamespace(tokenizer=Tok()), TEACHER: types.SimpleNamespace(tokenizer=Tok())}
    assert settings_for(config, backends).k == {STUDENT: 5, TEACHER: 20}


def test_another_model_does_not_inherit_the_embedded_teachers_sampling(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"teacher": {"model": "openai/gpt-oss-120b", "profile": "gpt-oss"}}))
    teacher = load_config(path).teacher.spec
    assert (teacher.top_k, teacher.repetition_penalty, teacher.seed) == (0, 1.0, 1)
    release = load_config(Path(__file__).resolve().parents[1] / "configs" / "authors-release.yaml")
    assert Sampling.of(release.teacher.spec) == Sampling(0.7, 0.8, 1, 20, 0.0, 1.0)  # the release's, no penalty


def test_each_role_writes_its_own_k_tokens_per_turn():
    _, student, teacher = run_scripted(["compute", "Hmm", EOS, "Done.", EOS], ["x = 1 ", "Wait", "</think>"],
                                       same_vocab=True, k={STUDENT: 5, TEACHER: 10}, max_answer_tokens=7)
    assert set(student.requests) == {5, 7}  # turns of 5, and the answer's one request
    assert set(teacher.requests) == {10}


# --- what the server backends send -----------------------------------------------------------
def test_openai_sends_the_knobs_to_vllm_and_only_when_set(servers):
    srv = servers(ids=True)
    plain = backend_on(srv)
    plain.generate([plain.start("Q")], [3], [()])
    assert not {"top_k", "min_p", "repetition_penalty"} & set(srv.completions()[-1])
    knobs = backend_on(srv)
    knobs.sampling = Sampling(0.7, 0.8, 0, top_k=20, min_p=0.05, repetition_penalty=1.1)
    knobs.generate([knobs.start("Q")], [3], [()])
    body = srv.completions()[-1]
    assert ((body["temperature"], body["top_p"], body["top_k"], body["min_p"], body["repetition_penalty"])
            == (0.7, 0.8, 20, 0.05, 1.1))


def test_openai_sends_llama_cpp_its_own_names(servers):
    srv = servers(ids=False)
    b = backend_on(srv)
    b.sampling = Sampling(0.7, 0.8, 0, top_k=20, min_p=0.05, repetition_penalty=1.1)
    b.generate([b.start("Q")], [3], [()])
    body = srv.completions()[-1]
    assert (body["top_k"], body["min_p"], body["repeat_penalty"]) == (20, 0.05, 1.1)


def test_vllm_builds_sampling_params_with_the_knobs(monkeypatch):
    """The vllm backend's request, with a stand-in `vllm` module that records the parameters (the
    real engine needs a GPU; tests/test_vllm_backend.py runs it where there is one)."""
    from tessy.backends.openai import load_tokenizer
    from tessy.backends.vllm import VLLMBackend

    made = []

    class SamplingParams:
        def __init__(self, **kw):
            made.append(kw)

    class Output:
        def __init__(self, n):
            self.prompt_token_ids, self.num_cached_tokens = [1] * n, 0
            self.outputs = [types.SimpleNamespace(token_ids=[], finish_reason="length")]

    class LLM:
        def generate(self, prompts, params, use_tqdm=False):
            return [Output(len(p["prompt_token_ids"])) for p in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=SamplingParams))
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    backend = VLLMBackend(LLM(), tokenizer, Sampling(0.7, 0.8, 0, top_k=20, min_p=0.05, repetition_penalty=1.1))
    backend.generate([backend.start("Q", key="a")], [5], [()])
    off = VLLMBackend(LLM(), tokenizer, Sampling(0.7, 0.8, 0))
    off.generate([off.start("Q", key="a")], [5], [()])
    assert {k: made[0][k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")} == {
        "temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1}
    assert (made[1]["top_k"], made[1]["min_p"], made[1]["repetition_penalty"]) == (-1, 0.0, 1.0)
