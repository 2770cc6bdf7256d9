"""A role's `chat_template_kwargs` reach its chat template wherever tessy renders a prompt: the
sample's own prompt (`tessy synth`), a method's side prompts (tessy/engine/methods.py), `tessy eval` and
the student's prompt in `tessy analyze`; and what the backends send is that rendered prompt.

The packaged models have no gpt-oss or Qwen3 tokenizer, so the packaged student's tokenizer is given
a chat template of each one's shape: gpt-oss's harmony system message says "Reasoning: " and the
`reasoning_effort` argument, "medium" where it is not given; Qwen3's generation prompt holds an
empty thinking block when `enable_thinking` is false.
"""

from __future__ import annotations

import json

import pytest
from scripted import CharTokenizer

from tessy.backends import Session
from tessy.config import load_config
from tessy.engine.synth import settings_for, start_sample
from tessy.profiles import Renderer, get_profile, render_prompt
from tessy.prompts import Prompt
from tessy.roles import STUDENT, TEACHER

# gpt-oss's rule (its chat template): the effort defaults to medium, and the system message says it.
GPT_OSS_TEMPLATE = (
    "{%- if reasoning_effort is not defined %}{%- set reasoning_effort = 'medium' %}{%- endif %}"
    "{{- '<|start|>system<|message|>Reasoning: ' + reasoning_effort + '<|end|>' }}"
    "{%- for m in messages %}{{- '<|start|>' + m.role + '<|message|>' + m.content + '<|end|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start|>assistant' }}{%- endif %}"
)
# Qwen3's rule: with enable_thinking false the generation prompt holds an empty thinking block.
QWEN3_TEMPLATE = (
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
QUESTION = [{"role": "user", "content": "Add 2 and 3."}]
EMPTY_THINKING = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


def gpt_oss_prompt(effort: str) -> str:
    """The prompt gpt-oss's rule gives QUESTION, with tessy's prefill of the analysis channel."""
    return (f"<|start|>system<|message|>Reasoning: {effort}<|end|><|start|>user<|message|>Add 2 and 3.<|end|>"
            "<|start|>assistant" + get_profile("gpt-oss").think_open)


def templated(template: str):
    from transformers import AutoTokenizer

    from tessy.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct"))
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def gpt_oss_tokenizer():
    return templated(GPT_OSS_TEMPLATE)


@pytest.fixture(scope="module")
def qwen3_tokenizer():
    return templated(QWEN3_TEMPLATE)


# --- render_prompt ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, effort", [(None, "medium"), ({}, "medium"), ({"reasoning_effort": "high"}, "high"),
                                            ({"reasoning_effort": "low"}, "low")])
def test_render_prompt_gives_gpt_oss_its_reasoning_effort(gpt_oss_tokenizer, kwargs, effort):
    text, used = render_prompt(get_profile("gpt-oss"), gpt_oss_tokenizer, QUESTION, kwargs)
    assert used and text == gpt_oss_prompt(effort)


def test_render_prompt_turns_qwen3_thinking_off_only_when_asked(qwen3_tokenizer):
    qwen3 = get_profile("qwen3")
    default, _ = render_prompt(qwen3, qwen3_tokenizer, QUESTION)
    on, _ = render_prompt(qwen3, qwen3_tokenizer, QUESTION, {"enable_thinking": True})
    off, _ = render_prompt(qwen3, qwen3_tokenizer, QUESTION, {"enable_thinking": False})
    assert default == on == "<|im_start|>user\nAdd 2 and 3.<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert EMPTY_THINKING in off and EMPTY_THINKING not in default


# --- the synth path: each role's prompt with its own arguments -----------------------------------
class Recording:
    """A backend that only records the prompt each session starts from (a model's first request
    sends exactly that: see the backends' tests below)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.started: list[str] = []

    def start(self, prompt, add_special_tokens=False, key="") -> Session:
        self.started.append(prompt)
        return Session(ids=self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens))


def two_roles(teacher_kwargs: dict | None = None, student_kwargs: dict | None = None, method: str = "tessy"):
    """A config with a gpt-oss teacher and a Qwen3 student, each with the given template arguments."""
    return load_config(method=method,
                       student={"profile": "qwen3", "chat_template_kwargs": student_kwargs or {}},
                       teacher={"profile": "gpt-oss", "chat_template_kwargs": teacher_kwargs or {}})


@pytest.mark.parametrize("teacher_kwargs, effort", [(None, "medium"), ({"reasoning_effort": "high"}, "high")])
@pytest.mark.parametrize("student_kwargs", [None, {"enable_thinking": False}])
def test_start_sample_renders_each_role_with_its_own_arguments(gpt_oss_tokenizer, qwen3_tokenizer, teacher_kwargs,
                                                               effort, student_kwargs):
    config = two_roles(teacher_kwargs, student_kwargs)
    backends = {STUDENT: Recording(qwen3_tokenizer), TEACHER: Recording(gpt_oss_tokenizer)}
    x, _ = start_sample(Prompt("p0", QUESTION), config, backends, settings_for(config, backends))
    [teacher_prompt], [student_prompt] = backends[TEACHER].started, backends[STUDENT].started
    assert teacher_prompt == gpt_oss_prompt(effort)
    assert (EMPTY_THINKING in student_prompt) == bool(student_kwargs)
    assert x.parties[TEACHER].renderer.template_kwargs == (teacher_kwargs or {})
    assert x.parties[STUDENT].renderer.template_kwargs == (student_kwargs or {})


# --- what the backends send is the prompt rendered here ------------------------------------------
@pytest.mark.parametrize("ids", [False, True])
def test_the_openai_backend_sends_the_rendered_prompt(servers, gpt_oss_tokenizer, qwen3_tokenizer, ids):
    from tessy.backends import Sampling
    from tessy.backends.openai import EndpointPool, OpenAIBackend

    srv = servers(ids=ids)
    config = two_roles({"reasoning_effort": "high"})
    pool = EndpointPool([srv.url], None, 5.0, 1, 4, backoff_s=0.01)
    teacher = OpenAIBackend(gpt_oss_tokenizer, pool, Sampling(temperature=0.0, seed=0), model="fake", eos_ids=set())
    backends = {STUDENT: Recording(qwen3_tokenizer), TEACHER: teacher}
    try:
        x, _ = start_sample(Prompt("p0", QUESTION), config, backends, settings_for(config, backends))
        backends[TEACHER].generate([x.parties[TEACHER].session], [2], [()])
    finally:
        backends[TEACHER].close()
    sent = srv.completions()[-1]["prompt"]
    text = gpt_oss_tokenizer.decode(sent, skip_special_tokens=False) if ids else sent
    assert text == gpt_oss_prompt("high")


def test_the_vllm_backend_starts_from_the_rendered_prompt(gpt_oss_tokenizer, qwen3_tokenizer):
    from tessy.backends import Sampling
    from tessy.backends.vllm import VLLMBackend

    config = two_roles({"reasoning_effort": "high"})
    # The engine is not needed: a session is the prompt's ids, which `generate` sends as they are.
    teacher = VLLMBackend(None, gpt_oss_tokenizer, Sampling(temperature=0.0))
    backends = {STUDENT: Recording(qwen3_tokenizer), TEACHER: teacher}
    x, _ = start_sample(Prompt("p0", QUESTION), config, backends, settings_for(config, backends))
    ids = x.parties[TEACHER].session.ids
    assert gpt_oss_tokenizer.decode(ids, skip_special_tokens=False) == gpt_oss_prompt("high")


# --- the config: part of the hash, in `tessy config` and in the saved config --------------------
def test_the_arguments_change_the_config_hash():
    plain, high = two_roles(), two_roles({"reasoning_effort": "high"})
    assert plain.hash() != high.hash()
    assert high.hash() != two_roles({"reasoning_effort": "low"}).hash()
    assert high.hash() == two_roles({"reasoning_effort": "high"}).hash()
    assert plain.hash() != two_roles(student_kwargs={"enable_thinking": False}).hash()


def test_the_arguments_are_read_from_yaml_and_saved_beside_the_output(tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  profile: gpt-oss\n  chat_template_kwargs: {reasoning_effort: high}\n"
                    "student:\n  chat_template_kwargs:\n    enable_thinking: false\n")
    config = load_config(path)
    assert config.teacher.spec.chat_template_kwargs == {"reasoning_effort": "high"}
    assert config.student.spec.chat_template_kwargs == {"enable_thinking": False}
    saved = yaml.safe_load(config.to_yaml())
    assert saved["teacher"]["chat_template_kwargs"] == {"reasoning_effort": "high"}
    again = tmp_path / "again.yaml"
    again.write_text(config.to_yaml())
    assert load_config(again).hash() == config.hash()


def test_a_template_argument_must_be_a_mapping(tmp_path):
    from tessy.typed import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  chat_template_kwargs: reasoning_effort=high\n")
    with pytest.raises(ConfigError, match="teacher.chat_template_kwargs.*expected a mapping"):
        load_config(path)


def test_tessy_config_lists_the_field(capsys):
    from tessy.cli import main

    assert main(["config"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "chat_template_kwargs" in line]
    assert len(lines) == 2 and all(line.startswith("  chat_template_kwargs: {}  # ") for line in lines)  # both roles


# --- a method's side prompts, `tessy eval` and `tessy analyze` -----------------------------------
class TemplatedChars(CharTokenizer):
    """tests/scripted.py's one-character tokens, with GPT_OSS_TEMPLATE as the chat template."""

    chat_template = GPT_OSS_TEMPLATE

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, **kwargs):
        import jinja2

        return jinja2.Environment().from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **kwargs)


def effort_of(prompt: str) -> str:
    return prompt.split("Reasoning: ", 1)[1].split("<|end|>", 1)[0]


@pytest.mark.parametrize("method, side", [("teacher-score", "Rate the response"),
                                          ("teacher-reference", "reference answer")])
def test_a_methods_side_prompts_keep_the_roles_arguments(tmp_path, method, side):
    from test_methods import make_backends

    from tessy.engine.synth import synthesize

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "Question 0: add 1 and 2."}) + "\n")
    config = load_config(method=method, score_candidates=2,
                         student={"chat_template_kwargs": {"reasoning_effort": "low"}},
                         teacher={"chat_template_kwargs": {"reasoning_effort": "high"}})
    backends = make_backends()
    for backend in backends.values():
        backend.tokenizer = TemplatedChars(backend.tokenizer.name)
    synthesize(config, prompts, tmp_path / "out.jsonl", backends=backends, progress=False)
    started = {role: backends[role].started for role in (STUDENT, TEACHER)}
    assert any(side in p for p in started[STUDENT] + started[TEACHER])  # the side prompts were rendered
    assert len(started[STUDENT] + started[TEACHER]) > 2
    assert {effort_of(p) for p in started[STUDENT]} == {"low"}
    assert {effort_of(p) for p in started[TEACHER]} == {"high"}


@pytest.mark.parametrize("kwargs, effort", [({}, "medium"), ({"reasoning_effort": "high"}, "high")])
def test_eval_renders_with_the_models_arguments(kwargs, effort):
    from scripted import EOS, ScriptedBackend

    from tessy.config import ModelSpec
    from tessy.eval.evaluate import EvalConfig, Problem, generate

    class Started(ScriptedBackend):
        def __init__(self, script):
            super().__init__(script)
            self.tokenizer, self.started = TemplatedChars("a"), []

        def start(self, prompt, add_special_tokens=False, key=""):
            self.started.append(prompt)
            return super().start(prompt, add_special_tokens, key)

    backend = Started(["x</think>", "42", EOS])
    config = EvalConfig(model=ModelSpec("", chat_template_kwargs=kwargs), max_think_tokens=12, max_answer_tokens=8)
    generate(config, [Problem("m1", "math", "What is 6 * 7?", {"answer": "42"})], backend=backend)
    [prompt] = backend.started
    assert effort_of(prompt) == effort and "What is 6 * 7?" in prompt


def test_eval_takes_the_arguments_as_a_json_flag(monkeypatch, capsys):
    import tessy.eval.evaluate as evaluate
    from tessy.cli import USAGE, main

    seen = []
    monkeypatch.setattr(evaluate, "evaluate", lambda config, out=None, console=None: seen.append(config) or {})
    assert main(["eval", "--benchmark", "humaneval", "--model", "m",
                 "--chat-template-kwargs", '{"reasoning_effort": "high"}']) == 0
    assert seen[0].model.chat_template_kwargs == {"reasoning_effort": "high"}
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "m", "--chat-template-kwargs", '["high"]'])
    assert e.value.code == USAGE and "not a JSON object" in capsys.readouterr().err


def test_analyze_renders_the_students_prompt_with_its_arguments(gpt_oss_tokenizer):
    from tessy.dataset.analysis import scoring_inputs

    gpt_oss = get_profile("gpt-oss")
    reply = gpt_oss.think_open + "thinking" + gpt_oss.think_close + gpt_oss.answer_open + "5"
    record = {"messages": [*QUESTION, {"role": "assistant", "content": reply}]}
    prefix, body, _ = scoring_inputs(record, Renderer(gpt_oss, gpt_oss_tokenizer, {"reasoning_effort": "high"}))
    assert prefix == gpt_oss_prompt("high") and body.startswith("thinking")
    assert scoring_inputs(record, Renderer(gpt_oss, gpt_oss_tokenizer))[0] == gpt_oss_prompt("medium")


@pytest.mark.slow
def test_the_hf_backend_samples_after_the_rendered_prompt():
    from tessy.backends import make_backend
    from tessy.models import STUDENT_DEFAULT

    config = load_config(teacher={"model": STUDENT_DEFAULT, "profile": "gpt-oss",
                                  "chat_template_kwargs": {"reasoning_effort": "high"}})
    teacher = make_backend(config.teacher)
    teacher.tokenizer.chat_template = GPT_OSS_TEMPLATE
    backends = {STUDENT: Recording(templated(QWEN3_TEMPLATE)), TEACHER: teacher}
    x, _ = start_sample(Prompt("p0", QUESTION), config, backends, settings_for(config, backends))
    session = x.parties[TEACHER].session
    assert teacher.tokenizer.decode(session.ids, skip_special_tokens=False) == gpt_oss_prompt("high")
    prompt = list(session.ids)
    [span] = teacher.generate([session], [4], [()])
    assert session.ids == prompt + span.ids and span.ids
