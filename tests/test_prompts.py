import json

import pytest

from tessy.prompts import PromptFileError, read_prompts


def write(tmp_path, lines):
    p = tmp_path / "prompts.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("bad_line, message", [
    ('{"id": "a", "prompt": "x"', "line 2: malformed JSON"),
    ('{"id": "1", "prompt": "dup"}', "line 2: duplicate id '1' (first at line 1)"),
    ('{"id": "b", "prompt": "   "}', "line 2: empty prompt"),
    ('{"id": "b", "messages": [{"role": "user", "content": ""}]}', "line 2: empty prompt"),
    ('{"id": "b"}', "line 2: missing field: each line needs 'prompt', 'messages' or 'dialogs'"),
    ('{"prompt": "no id"}', "line 2: missing field 'id' (or 'id_ddm')"),
    ('{"id_ddm": "", "prompt": "x"}', "line 2: 'id_ddm' must be a non-empty string or integer"),
    ('{"id_ddm": true, "prompt": "x"}', "line 2: 'id_ddm' must be a non-empty string or integer"),
    ('{"id_ddm": "b", "dialogs": []}', "line 2: 'dialogs' must be a non-empty list"),
    ('{"id_ddm": "b", "dialogs": [{"role": "user"}]}', "line 2: each message needs a string 'role' and 'content'"),
    ('{"id_ddm": "b", "dialogs": [{"role": "system", "content": "x"}]}', "line 2: empty prompt"),
    ('{"id_ddm": 1, "dialogs": [{"role": "user", "content": "x"}]}', "line 2: duplicate id '1' (first at line 1)"),
    ('["a list"]', "line 2: expected a JSON object"),
    ('{"id": "b", "messages": "hi"}', "line 2: 'messages' must be a non-empty list"),
])
def test_bad_input_gets_a_clear_error_with_its_line(tmp_path, bad_line, message):
    path = write(tmp_path, [json.dumps({"id": 1, "prompt": "fine"}), bad_line])
    with pytest.raises(PromptFileError) as err:
        read_prompts(path)
    assert message in str(err.value)


def test_every_bad_line_is_listed(tmp_path):
    path = write(tmp_path, ['{"id": 1, "prompt": "ok"}', "{", '{"id": 1, "prompt": "again"}', '{"id": 3}'])
    msg = str(pytest.raises(PromptFileError, read_prompts, path).value)
    assert "3 bad line(s)" in msg and "line 2" in msg and "line 3" in msg and "line 4" in msg


def test_prompt_and_messages_forms(tmp_path):
    path = write(tmp_path, [
        json.dumps({"id": "p", "prompt": "Sum two numbers."}),
        "",
        json.dumps({"id": 7, "messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hi"}]}),
    ])
    a, b = read_prompts(path)
    assert a.id == "p" and a.messages == ({"role": "user", "content": "Sum two numbers."},)
    assert b.id == "7" and [m["role"] for m in b.messages] == ["system", "user"]


def test_release_dialogs_and_id_ddm(tmp_path):
    """The released client's prompt files: `dialogs` for the chat messages, `id_ddm` or an integer `id`."""
    chat = [{"role": "system", "content": "Think step by step."}, {"role": "user", "content": "2+2?"}]
    path = write(tmp_path, [
        json.dumps({"id_ddm": "ddm-1", "dialogs": chat}),
        json.dumps({"id": 42, "dialogs": chat[1:]}),
        json.dumps({"id_ddm": 9, "prompt": "Hi"}),
        json.dumps({"id": "kept", "id_ddm": "ignored", "dialogs": chat}),
    ])
    a, b, c, d = read_prompts(path)
    assert (a.id, a.messages) == ("ddm-1", tuple(chat))
    assert (b.id, b.messages) == ("42", tuple(chat[1:]))
    assert c.id == "9" and d.id == "kept"


def test_shipped_demo_prompts_are_valid():
    from importlib.resources import files

    prompts = read_prompts(files("tessy") / "data" / "demo_prompts.jsonl")
    assert len(prompts) == 20
