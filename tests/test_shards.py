"""Shards: a deterministic split by id, and a merge that reports missing and duplicated ids."""

from __future__ import annotations

import json

import pytest
from scripted import EOS, ScriptedBackend

from tessy.cli import main
from tessy.config import load_config
from tessy.engine.records import errors_path_for, read_records
from tessy.engine.shards import merge, parse_shard, select_shard, shard_of
from tessy.engine.synth import synthesize
from tessy.prompts import Prompt, read_prompts
from tessy.roles import STUDENT, TEACHER


@pytest.mark.parametrize("spec,expected", [("0/1", (0, 1)), ("0/4", (0, 4)), ("3/4", (3, 4)), (" 2/3", (2, 3))])
def test_parse_shard(spec, expected):
    assert parse_shard(spec) == expected


@pytest.mark.parametrize("spec", ["4/4", "-1/4", "1/0", "1", "a/b", "1/2/3", "", "0/-2"])
def test_parse_shard_refuses(spec):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(spec)


def prompts(n: int) -> list[Prompt]:
    return [Prompt(f"id-{i}", ({"role": "user", "content": f"q{i}"},)) for i in range(n)]


@pytest.mark.parametrize("n_shards", [1, 2, 3, 7])
def test_shards_cover_every_prompt_once(n_shards):
    ps = prompts(200)
    parts = [select_shard(ps, i, n_shards) for i in range(n_shards)]
    ids = [p.id for part in parts for p in part]
    assert sorted(ids) == sorted(p.id for p in ps)  # disjoint, and nothing lost
    if n_shards > 1:
        assert all(200 / n_shards / 2 < len(part) < 200 / n_shards * 2 for part in parts)  # roughly even


def test_shard_depends_on_the_id_alone():
    ps = prompts(50)
    before = {p.id: shard_of(p.id, 4) for p in ps}
    more = list(reversed(ps)) + prompts(80)[50:]  # reordered, with prompts added
    assert all(shard_of(p.id, 4) == before[p.id] for p in more if p.id in before)
    assert [p.id for p in select_shard(ps, 1, 4)] == [p.id for p in ps if before[p.id] == 1]  # file order


def write_jsonl(path, rows, tail: str = ""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def test_merge_joins_by_id_and_reports_missing_duplicated_and_failed(tmp_path):
    ids = [f"p{i}" for i in range(6)]
    pfile = write_jsonl(tmp_path / "prompts.jsonl", [{"id": i, "prompt": "x"} for i in ids])
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "p3", "config_hash": "h"}, {"id": "p0", "config_hash": "h"}],
                    tail='{"id": "p1", "config_ha')  # a killed job's half line
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "p2", "config_hash": "h"}, {"id": "p3", "config_hash": "h"}])
    write_jsonl(errors_path_for(b), [{"id": "p5", "error": "HTTP 500", "attempts": 4}])
    summary = merge(tmp_path / "all.jsonl", [a, b], pfile)
    assert [r["id"] for r in read_records(tmp_path / "all.jsonl")] == ["p0", "p2", "p3"]  # prompts order
    assert summary["duplicates"] == {"p3": [str(a), str(b)]}
    assert summary["missing"] == ["p1", "p4", "p5"]
    assert summary["errors"] == {"p5": "HTTP 500"}
    assert summary["config_hashes"] == ["h"]


def test_merge_command_fails_on_missing_ids(tmp_path):
    pfile = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    shard = write_jsonl(tmp_path / "s0.jsonl", [{"id": "a"}])
    assert main(["merge", str(tmp_path / "m.jsonl"), str(shard), "--prompts", str(pfile)]) == 1
    write_jsonl(tmp_path / "s1.jsonl", [{"id": "b"}])
    assert main(["merge", str(tmp_path / "m.jsonl"), str(shard), str(tmp_path / "s1.jsonl"),
                 "--prompts", str(pfile)]) == 0


def test_sharded_runs_merge_into_the_whole_run(tmp_path):
    """Two shards of a real synth run (scripted models) merge into one record per prompt."""
    rows = [{"id": f"p{i}", "prompt": f"Problem {i}"} for i in range(9)]
    pfile = write_jsonl(tmp_path / "prompts.jsonl", rows)
    config = load_config(k=8, max_think_tokens=16, max_answer_tokens=8, batch_size=3)

    def backends():
        return {STUDENT: ScriptedBackend(["Okay, so we add", EOS, "The sum.", EOS], "a"),
                TEACHER: ScriptedBackend(["x = a + b then return x", EOS], "b")}

    outs = []
    for i in range(2):
        out = tmp_path / f"shard{i}.jsonl"
        summary = synthesize(config, pfile, out, backends=backends(), progress=False, shard=(i, 2))
        assert summary["samples"] == len(select_shard(read_prompts(pfile), i, 2))
        outs.append(out)
    summary = merge(tmp_path / "all.jsonl", outs, pfile)
    assert summary["duplicates"] == {} and summary["missing"] == [] and summary["records"] == 9
    assert [r["id"] for r in read_records(tmp_path / "all.jsonl")] == [r["id"] for r in rows]
    assert (tmp_path / "all.config.yaml").exists()
