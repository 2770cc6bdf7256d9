import subprocess
import sys

import yaml

from tessy.cli import main
from tessy.config import SynthConfig, load_config


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "tessy.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("synth", "config", "show"):
        assert command in out


def test_config_prints_a_loadable_default(tmp_path, capsys):
    assert main(["config"]) == 0
    path = tmp_path / "c.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path).to_dict() == SynthConfig().to_dict()


def test_config_file_overrides_and_custom_profile(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "k": 12, "teacher": {"profile": "mine", "temperature": 0.0},
        "profiles": {"mine": {"think_open": "<reason>", "think_close": "</reason>"}},
    }))
    config = load_config(path)
    assert config.k == 12 and config.teacher.temperature == 0.0 and config.teacher.model == SynthConfig().teacher.model
    from tessy.profiles import get_profile

    assert get_profile("mine", config.profiles).think_close == "</reason>"


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("kk: 3\n")
    assert main(["synth", "--config", str(path), "--prompts", "x", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "unknown key 'kk'; did you mean 'k'?" in capsys.readouterr().err


def test_bad_prompts_file_exits_with_its_line(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "a"}\n{oops\n')
    assert main(["synth", "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "line 2: malformed JSON" in capsys.readouterr().err


def test_eval_flags_fill_the_model_config_and_evals_own(monkeypatch):
    """--model and the sampling flags go into EvalConfig.model (a ModelConfig); --timeout-s is the
    sandbox's (eval's own), not the server timeout of the ModelConfig."""
    import tessy.evaluate

    seen = []
    monkeypatch.setattr(tessy.evaluate, "evaluate", lambda config, out=None, console=None: seen.append(config))
    assert main(["eval", "--model", "smollm2-135m-instruct", "--profile", "qwen3", "--temperature", "0.7",
                 "--top-k", "20", "--timeout-s", "3", "--n", "2", "--url", "http://a/v1"]) == 0
    [config] = seen
    assert (config.model.model, config.model.profile, config.model.temperature, config.model.top_k) == (
        "smollm2-135m-instruct", "qwen3", 0.7, 20)
    assert config.model.urls == ["http://a/v1"] and config.model.timeout_s == 120.0
    assert (config.timeout_s, config.n) == (3.0, 2)
