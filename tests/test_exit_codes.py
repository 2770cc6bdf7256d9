"""Exit codes a script can trust (README, "Exit codes"): 0 when every id has its record, 3 when some
ended in an errors file (0 with --allow-errors), 1 when a merge lacks ids that nothing accounts for,
2 for bad input before any work."""

from __future__ import annotations

import json

import pytest
from scripted import EOS, ScriptedBackend

import tessy.engine.synth as synth
from tessy.backends import SampleError
from tessy.cli import EXIT_CODES, FAILED, INCOMPLETE, OK, USAGE, main
from tessy.engine.records import errors_path_for, read_records
from tessy.roles import STUDENT, TEACHER


class DownBackend(ScriptedBackend):
    """A server that is down: every row fails for good, as the openai backend reports it."""

    def generate(self, sessions, max_new_tokens, stops):
        return [SampleError("connection refused", attempts=4, endpoint="http://127.0.0.1:9/v1") for _ in sessions]


def prompts_file(tmp_path, n=3):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Add {i} and 2."}) + "\n" for i in range(n)))
    return path


def scripted(student_down: bool):
    student = DownBackend([], "a") if student_down else ScriptedBackend(["Okay, so ", "</think>", "It is 3.", EOS], "a")
    return {STUDENT: student, TEACHER: ScriptedBackend(["x = 1 + 2 = 3. ", "</think>", "3", EOS], "b")}


def synth_argv(tmp_path, *extra):
    return ["synth", "--prompts", str(prompts_file(tmp_path)), "--out", str(tmp_path / "out.jsonl"),
            "--max-think-tokens", "40", *extra]


def test_synth_exits_3_when_every_sample_failed_and_says_how_many(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synth, "load_backends", lambda config: scripted(student_down=True))
    assert main(synth_argv(tmp_path)) == FAILED
    err = capsys.readouterr().err
    assert "3 ids failed for good" in err and str(errors_path_for(tmp_path / "out.jsonl")) in err
    assert len(errors_path_for(tmp_path / "out.jsonl").read_text().splitlines()) == 3
    assert not (tmp_path / "out.jsonl").exists() or read_records(tmp_path / "out.jsonl") == []

    # The same run again (nothing to do: the failed ids wait for --retry-errors) still reports them.
    assert main(synth_argv(tmp_path)) == FAILED
    assert main(synth_argv(tmp_path, "--allow-errors")) == OK
    assert "--allow-errors" not in capsys.readouterr().err.split("\n")[-2]

    # The server is back: --retry-errors completes every id, and the run is a success.
    monkeypatch.setattr(synth, "load_backends", lambda config: scripted(student_down=False))
    assert main(synth_argv(tmp_path, "--retry-errors")) == OK
    assert sorted(r["id"] for r in read_records(tmp_path / "out.jsonl")) == ["p0", "p1", "p2"]


def test_synth_exits_0_when_nothing_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "load_backends", lambda config: scripted(student_down=False))
    assert main(synth_argv(tmp_path)) == OK
    assert not errors_path_for(tmp_path / "out.jsonl").exists()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def shards(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": i, "prompt": "x"} for i in "abc"])
    s0 = write_jsonl(tmp_path / "s0.jsonl", [{"id": "a"}])
    s1 = write_jsonl(tmp_path / "s1.jsonl", [{"id": "b"}])
    return prompts, s0, s1


def merge_argv(tmp_path, shards, *extra):
    prompts, s0, s1 = shards
    return ["merge", str(tmp_path / "m.jsonl"), str(s0), str(s1), "--prompts", str(prompts), *extra]


def test_merge_exits_1_on_an_id_no_shard_accounts_for(tmp_path, shards):
    assert main(merge_argv(tmp_path, shards)) == INCOMPLETE
    assert main(merge_argv(tmp_path, shards, "--allow-errors")) == INCOMPLETE  # not a failure: a gap


def test_merge_exits_3_when_the_missing_ids_failed_in_a_shard(tmp_path, shards, capsys):
    write_jsonl(errors_path_for(shards[2]), [{"id": "c", "error": "HTTP 500", "attempts": 4}])
    assert main(merge_argv(tmp_path, shards)) == FAILED
    assert "1 id failed for good" in capsys.readouterr().err
    assert main(merge_argv(tmp_path, shards, "--allow-errors")) == OK


def test_merge_exits_0_when_every_id_has_its_record(tmp_path, shards):
    write_jsonl(shards[2], [{"id": "b"}, {"id": "c"}])
    assert main(merge_argv(tmp_path, shards)) == OK


def test_bad_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": \n')
    assert main(["synth", "--prompts", str(bad), "--out", str(tmp_path / "o.jsonl")]) == USAGE
    assert "line 2: malformed JSON" in capsys.readouterr().err


def test_every_exit_code_is_in_the_help_and_the_docs():
    from pathlib import Path

    from tessy.cli import build_parser

    page = (Path(__file__).resolve().parents[1] / "docs" / "exit-codes.md").read_text()
    epilog = build_parser().epilog
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {meaning}" in epilog
        assert f"| {code} |" in page, f"docs/exit-codes.md's table lacks {code}"
