import subprocess
import sys

import pytest
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
    teacher = config.teacher.spec
    assert config.k == 12 and teacher.temperature == 0.0 and teacher.model == SynthConfig().teacher.spec.model
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
    """--model and the sampling flags go into EvalConfig.model (a ModelSpec), --url into its urls;
    --timeout-s is the sandbox's (eval's own), not a server timeout."""
    import tessy.eval.evaluate

    seen = []
    monkeypatch.setattr(tessy.eval.evaluate, "evaluate",
                        lambda config, out=None, console=None: seen.append(config) or {"ungraded": 0})
    assert main(["eval", "--model", "smollm2-135m-instruct", "--profile", "qwen3", "--temperature", "0.7",
                 "--top-k", "20", "--timeout-s", "3", "--n", "2", "--url", "http://a/v1"]) == 0
    [config] = seen
    assert (config.model.model, config.model.profile, config.model.temperature, config.model.top_k) == (
        "smollm2-135m-instruct", "qwen3", 0.7, 20)
    assert config.urls == ["http://a/v1"]
    assert (config.timeout_s, config.n) == (3.0, 2)


# --- one validation gate: flags are checked as config values are, before any work ------------------
def refuses_before_work(monkeypatch, capsys, argv, message, module, function):
    import importlib

    monkeypatch.setattr(importlib.import_module(module), function, lambda *a, **k: pytest.fail("it ran"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "-1"], "--temperature is -1.0: it must be at least 0"),
    (["--n", "0"], "--n is 0: it must be at least 1"),
    (["--top-p", "1.5"], "--top-p is 1.5: it must be at most 1"),
    (["--url", "gpu:8000/v1"], "--urls: 'gpu:8000/v1' is not a URL"),
])
def test_eval_refuses_bad_flags_before_any_model_loads(monkeypatch, capsys, argv, message):
    refuses_before_work(monkeypatch, capsys, ["eval", "--model", "smollm2-135m-instruct", *argv], message,
                        "tessy.eval.evaluate", "evaluate")


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "-1"], "--epochs is -1: it must be at least 1"),
    (["--lr", "0"], "--lr is 0.0: it must be greater than 0"),
    (["--eval-fraction", "1"], "--eval-fraction is 1.0: it must be at most"),
])
def test_predictor_train_refuses_bad_flags_before_training(monkeypatch, capsys, tmp_path, argv, message):
    refuses_before_work(monkeypatch, capsys, ["predictor", "train", "--data", "d.jsonl", "--out", str(tmp_path / "p"),
                                              *argv], message, "tessy.predictors.learned", "train_predictor")


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n is 0: it must be at least 1"),
    (["--context-chars", "-1"], "--context-chars is -1: it must be at least 0"),
])
def test_annotate_refuses_bad_flags_before_any_work(monkeypatch, capsys, tmp_path, argv, message):
    refuses_before_work(monkeypatch, capsys, ["annotate", "--records", "r.jsonl", "--out", str(tmp_path / "s.jsonl"),
                                              *argv], message, "tessy.predictors.annotate", "run_annotate")


def test_a_profile_typo_in_the_config_is_refused_with_its_key(monkeypatch, capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"profiles": {"mine": {"think_opn": "<t>", "think_close": "</t>"}},
                                      "student": {"profile": "mine"}}))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "x"}\n')
    refuses_before_work(monkeypatch, capsys, ["synth", "--config", str(config), "--prompts", str(prompts),
                                              "--out", str(tmp_path / "o.jsonl")],
                        f"{config}: profiles.mine: unknown key 'think_opn'; did you mean 'think_open'?",
                        "tessy.engine.synth", "load_backends")


def test_a_server_url_flag_is_checked_like_the_configs_urls(monkeypatch, capsys, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "x"}\n')
    refuses_before_work(monkeypatch, capsys, ["synth", "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                                              "--student-url", "localhost:8000"], "'localhost:8000' is not a URL",
                        "tessy.engine.synth", "load_backends")


def test_version(capsys):
    from tessy import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"tessy {__version__}"


def test_analyze_refuses_a_bad_batch_size_before_reading_anything(monkeypatch, capsys):
    refuses_before_work(monkeypatch, capsys, ["analyze", "a.jsonl", "--out", "r", "--batch-size", "0"],
                        "--batch-size is 0: it must be at least 1", "tessy.dataset.analysis", "load_datasets")


def test_synth_limit_must_be_at_least_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["synth", "--prompts", "p.jsonl", "--out", "o.jsonl", "--limit", "0"])
    assert e.value.code == 2 and "--limit: 0 is below 1" in capsys.readouterr().err
