"""Configs are checked when they load, before any model loads: every shipped file loads, and each
kind of bad value gets a message that names the file, the key and the value (exit status 2)."""

from pathlib import Path

import pytest
import yaml

from tessy.cli import main
from tessy.config import load_config
from tessy.typed import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tessy_configs():
    """The configs/ files tessy reads (accelerate's own configs are accelerate's)."""
    return sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("accelerate"))


@pytest.mark.parametrize("name", tessy_configs())
def test_every_shipped_config_loads(name):
    path = CONFIGS / name
    if name.startswith("sft"):
        from tessy.sft import load_sft_config

        load_sft_config(path, data="records.jsonl", out="runs/sft")
    else:
        config = load_config(path)
        assert config.to_dict()  # and it round-trips through its own YAML
        assert load_config_from_text(config.to_yaml()).hash() == config.hash()


def load_config_from_text(text, tmp=Path("/tmp")):
    path = tmp / "tessy-roundtrip.yaml"
    path.write_text(text)
    return load_config(path)


BAD = [
    ({"k": "twenty"}, "k is 'twenty' (str): expected an integer"),
    ({"k": 0}, "k is 0: it must be at least 1"),
    ({"student": {"temperature": "hot"}}, "student.temperature is 'hot' (str): expected a number"),
    ({"student": {"temperature": -0.1}}, "student.temperature is -0.1: it must be at least 0"),
    ({"teacher": {"top_p": 0}}, "teacher.top_p is 0.0: it must be greater than 0"),
    ({"teacher": {"top_p": 1.5}}, "teacher.top_p is 1.5: it must be at most 1"),
    ({"max_think_tokens": 0}, "max_think_tokens is 0: it must be at least 1"),
    ({"student": {"backend": "vlm"}}, "student.backend is 'vlm': choose one of hf, openai, vllm; did you mean 'vllm'?"),
    ({"teacher": {"profile": "qwen"}}, "teacher.profile is 'qwen': not a built-in profile"),
    ({"method": "teacher_only"}, "method is 'teacher_only': choose one of"),
    ({"handover": "complete"}, "did you mean 'complete-word'?"),
    ({"driver": "fast"}, "driver is 'fast': choose one of auto, events, ticks"),
    ({"final_answer": "both"}, "final_answer is 'both': choose one of student, teacher"),
    ({"profiles": {"mine": {"think_opn": "<t>", "think_close": "</t>"}}, "student": {"profile": "mine"}},
     "profiles.mine: unknown key 'think_opn'; did you mean 'think_open'?"),
    ({"profiles": {"mine": {"think_open": "<t>"}}}, "profiles.mine: needs think_close"),
    ({"profiles": {"mine": "qwen3"}}, "profiles.mine: the config must be a mapping"),
    ({"temprature": 0.6}, "unknown key 'temprature'"),
    ({"student": {"temprature": 0.6}}, "unknown key student.'temprature'; did you mean student.'temperature'?"),
    ({"student": {"urls": ["gpu-node:8000/v1"]}}, "student.urls: 'gpu-node:8000/v1' is not a URL"),
    ({"student": {"urls": "http://a/v1"}}, "student.urls is 'http://a/v1' (str): expected a list of strings"),
    ({"student": "smollm2"}, "student must be a mapping"),
    ({"student_predictor": {"path": "p", "labels": "next"}}, "student_predictor.labels: 'next' is not one of"),
]


@pytest.mark.parametrize("data, message", BAD, ids=[str(d) for d, _ in BAD])
def test_bad_values_are_refused_with_file_key_and_value(tmp_path, data, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_a_yaml_syntax_error_names_its_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("k: 20\nstudent:\n  temperature: [0.6\nteacher: {}\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line 4"):
        load_config(path)


def test_the_cli_exits_2_without_a_traceback_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import tessy.synth as synth

    monkeypatch.setattr(synth, "load_backends", lambda config: pytest.fail("loaded the models"))
    path = tmp_path / "bad.yaml"
    path.write_text("k: twenty\n")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "x"}\n')
    assert main(["synth", "--config", str(path), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "k is 'twenty'" in err and "Traceback" not in err


def test_a_mismatched_config_is_a_value_error():
    from tessy.synth import ConfigMismatchError

    assert issubclass(ConfigMismatchError, ValueError)
