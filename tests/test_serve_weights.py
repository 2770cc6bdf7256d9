"""tessy/serve_weights.py: `tessy serve --weights auto` times a quantized GGUF and its F16 copy on real
`llama-server`s, keeps the verdict per machine, and serves the faster."""

import json
import shlex
from pathlib import Path

import pytest
from llama_server import find_binary, free_port, missing_reason

from tessy import serve_weights
from tessy.cli import main
from tessy.models import EMBEDDED, STUDENT_DEFAULT
from tessy.serve import f16_copy
from tessy.serve_weights import choose_weights, probe_seconds


def _binary() -> Path:
    binary = find_binary()
    if binary is None:
        pytest.skip(missing_reason())
    return Path(binary)


@pytest.mark.slow  # the F16 copy, written once
def test_an_unquantized_file_is_served_as_it_is():
    copy = f16_copy(EMBEDDED[STUDENT_DEFAULT]())
    chosen = choose_weights(Path("/nonexistent/llama-server"), copy, threads=1)
    assert chosen == {"path": copy, "form": "as-is", "why": "not quantized", "seconds": {}}


def test_a_large_file_is_served_as_it_is_without_a_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("TESSY_CACHE", str(tmp_path))
    monkeypatch.setattr(serve_weights, "MEASURED_UP_TO", 1 << 20)
    source = EMBEDDED[STUDENT_DEFAULT]()
    chosen = choose_weights(Path("/nonexistent/llama-server"), source, threads=1)
    assert chosen["path"] == source and chosen["form"] == "as-is" and "too large" in chosen["why"]
    assert not (tmp_path / "gguf").exists()


def test_a_server_that_does_not_start_is_an_error_with_its_reason():
    with pytest.raises(RuntimeError, match="did not start"):
        probe_seconds(Path("/bin/false"), EMBEDDED[STUDENT_DEFAULT](), threads=1, parallel=2)


@pytest.mark.slow
def test_auto_times_both_forms_once_and_serves_the_faster(monkeypatch, tmp_path):
    binary = _binary()
    monkeypatch.setenv("TESSY_CACHE", str(tmp_path))
    source = EMBEDDED[STUDENT_DEFAULT]()
    said = []
    chosen = choose_weights(binary, source, threads=1, parallel=4, say=said.append)
    seconds = chosen["seconds"]
    assert set(seconds) == {"as-is", "f16"} and all(s > 0 for s in seconds.values()) and len(said) == 1
    faster = seconds["f16"] <= serve_weights.MARGIN * seconds["as-is"]
    assert chosen["form"] == ("f16" if faster else "as-is")
    assert chosen["path"] == (f16_copy(source) if faster else source)
    assert f"{seconds['f16']:.1f} s on the F16 copy" in chosen["why"]
    [kept] = (tmp_path / "weights").glob("*.json")
    assert json.loads(kept.read_text())["seconds"] == seconds

    def measured_again(*args, **kwargs):
        raise AssertionError("the kept verdict was not used")

    monkeypatch.setattr(serve_weights, "probe_seconds", measured_again)
    assert choose_weights(binary, source, threads=1, parallel=4, say=said.append) == chosen and len(said) == 1


def test_print_command_measures_nothing_and_says_so(monkeypatch, tmp_path, capsys):
    # A job script's command may be printed on another machine than the server's: nothing is timed here.
    binary = _binary()
    monkeypatch.setenv("TESSY_CACHE", str(tmp_path))
    monkeypatch.setattr(serve_weights, "probe_seconds", lambda *a, **k: pytest.fail("measured"))
    assert main(["serve", "student", "--threads", "1", "--print-command"]) == 0
    captured = capsys.readouterr()
    cmd = shlex.split(captured.out)
    assert cmd[0] == str(binary) and cmd[cmd.index("-m") + 1] == str(EMBEDDED[STUDENT_DEFAULT]())
    assert "not measured on this machine yet" in captured.err and not (tmp_path / "weights").exists()


@pytest.mark.slow
def test_a_failed_measurement_serves_the_file_as_it_is(monkeypatch, tmp_path, capsys):
    # A server that will not start times nothing: tessy serve says so, serves the file as it is, and that
    # server's own failure is the exit (3) and its reason.
    _binary()
    monkeypatch.setenv("TESSY_CACHE", str(tmp_path))
    assert main(["serve", "student", "--threads", "1", "--port", str(free_port()),
                 "--server-args=--no-such-option"]) == 3
    out = " ".join(capsys.readouterr().out.split())
    assert f"weights: {EMBEDDED[STUDENT_DEFAULT]().name} (the measurement failed" in out
    assert "llama-server exited with code" in out and not list((tmp_path / "weights").glob("*.json"))


@pytest.mark.slow
def test_a_kept_verdict_that_cannot_be_read_is_measured_again(monkeypatch, tmp_path):
    binary = _binary()
    monkeypatch.setenv("TESSY_CACHE", str(tmp_path))
    source = EMBEDDED[STUDENT_DEFAULT]()
    times = iter([4.0, 1.0, 1.0, 4.0])
    monkeypatch.setattr(serve_weights, "probe_seconds", lambda *a, **k: next(times))
    assert choose_weights(binary, source, threads=1, parallel=2)["form"] == "f16"  # 1.0 s on the copy, 4.0 as is
    [kept] = (tmp_path / "weights").glob("*.json")
    kept.write_text("{ cut short")
    again = choose_weights(binary, source, threads=1, parallel=2)
    assert again["form"] == "as-is" and again["seconds"] == {"as-is": 1.0, "f16": 4.0}
