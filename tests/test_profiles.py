import pytest

from tessy.profiles import BUILTIN, FALLBACK_TEMPLATE, get_profile, render_prompt


class NoTemplate:
    chat_template = None


class R1Like:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "<｜User｜>" + messages[-1]["content"] + "<｜Assistant｜><think>\n"


def test_builtin_profiles():
    assert set(BUILTIN) == {"qwen3", "deepseek-r1", "gpt-oss", "plain"}
    assert get_profile("gpt-oss").think_close == "<|end|>"
    assert get_profile("gpt-oss").answer_open == "<|start|>assistant<|channel|>final<|message|>"


def test_fallback_rendering_for_a_model_without_template():
    text, used = render_prompt(get_profile("plain"), NoTemplate(), [{"role": "user", "content": "Add 2 and 3."}])
    assert text == FALLBACK_TEMPLATE.format(prompt="Add 2 and 3.") + "<think>\n" and not used
    assert text.endswith("Problem:\nAdd 2 and 3.\n\nSolution:\n<think>\n")


def test_template_that_opens_thinking_is_not_opened_twice():
    text, used = render_prompt(get_profile("deepseek-r1"), R1Like(), [{"role": "user", "content": "hi"}])
    assert text.count("<think>") == 1 and used


def test_response_uses_the_profile_markers():
    assert get_profile("qwen3").response(" thought ", " 42 ") == "<think>\nthought\n</think>\n\n42"


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("nope")
