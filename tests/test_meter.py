"""The live figures of a run (tessy/engine/meter.py): what the progress line and the summary's cost say."""

import json

import pytest
from scripted import CharTokenizer

from tessy.backends import Sampling
from tessy.backends.openai import EndpointPool, OpenAIBackend
from tessy.config import Price, load_config
from tessy.engine.meter import Meter, role_cost
from tessy.engine.scheduler import RoleStats
from tessy.roles import STUDENT, TEACHER


def record(kept_think: int, kept_answer: int, student: int, teacher: int) -> dict:
    return {"stats": {"think_tokens": kept_think, "answer_tokens": kept_answer,
                      "generated_tokens": {STUDENT: student, TEACHER: teacher}}}


def test_a_role_pays_fresh_input_cached_input_and_output_at_their_own_prices():
    stats = RoleStats(sent_prompt_tokens=3_000_000, cached_tokens=2_000_000, prompt_tokens=3_000_000, tokens=500_000)
    cost = role_cost(Price(input=1.0, output=4.0, cached_input=0.25), stats)
    # 1M fresh x 1.0 + 2M cached x 0.25 + 0.5M out x 4.0
    assert cost == {"input_tokens": 3_000_000, "cached_input_tokens": 2_000_000, "output_tokens": 500_000,
                    "cost": 3.5}
    # without a cached price every prompt token costs the input price
    assert role_cost(Price(input=1.0, output=4.0), stats)["cost"] == 5.0


def test_the_projection_scales_what_was_spent_by_the_samples_left():
    roles = {STUDENT: RoleStats(), TEACHER: RoleStats(sent_prompt_tokens=1_000_000, tokens=250_000)}
    meter = Meter(total=10, prices={STUDENT: None, TEACHER: Price(input=2.0, output=8.0)}, roles=roles)
    assert meter.cost() == {"spent": 4.0, "projected": None, "roles": {TEACHER: role_cost(
        Price(input=2.0, output=8.0), roles[TEACHER])}}
    meter.add(record(30, 10, 20, 24))
    meter.add(None)  # a failed sample counts as finished: its requests were paid for
    assert meter.cost()["projected"] == 20.0  # 4.0 for 2 of 10 samples
    assert (meter.finished, meter.errors, meter.kept, meter.generated) == (2, 1, 40, 44)
    line = meter.line()
    assert "kept tok/s" in line and "1.10 gen/kept" in line and "spent 4 of ~20" in line and "1 failed" in line
    assert "hit" not in line  # no engine reported cached tokens


def test_no_price_no_cost_and_hit_rates_only_where_reported():
    roles = {STUDENT: RoleStats(prompt_tokens=100, cached_tokens=75), TEACHER: RoleStats()}
    meter = Meter(total=1, prices={STUDENT: None, TEACHER: None}, roles=roles)
    assert meter.cost() is None
    assert meter.hit_rates() == {STUDENT: 0.75}
    assert meter.line() == "hit S 75%"


def served(srv, vocab, seed=0):
    pool = EndpointPool([srv.url], None, timeout_s=10.0, max_retries=1, concurrency=16, backoff_s=0.01)
    return OpenAIBackend(CharTokenizer(vocab), pool, Sampling(temperature=0.6, top_p=1.0, seed=seed), model="char",
                         eos_ids={0})


def test_synth_shows_the_figures_as_samples_finish_and_sums_up_the_cost(servers, tmp_path, monkeypatch):
    import tessy.engine.meter

    lines = []
    real_line = tessy.engine.meter.Meter.line
    monkeypatch.setattr(tessy.engine.meter.Meter, "line", lambda self: lines.append(real_line(self)) or lines[-1])
    from tessy.engine.synth import synthesize

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}"}) + "\n" for i in range(3)))
    price = {"input": 0.5, "output": 2.0}
    settings = {"k": 4, "max_think_tokens": 24, "max_answer_tokens": 4, "in_flight": 2, "driver": "events"}
    config = load_config(teacher={"price_per_million_tokens": price}, **settings)
    assert config.hash() == load_config(**settings).hash()  # a price writes nothing
    backends = {STUDENT: served(servers(ids=True), "a"), TEACHER: served(servers(ids=True), "b", seed=1)}
    summary = synthesize(config, prompts, tmp_path / "out.jsonl", backends=backends, progress=False)
    assert summary["samples"] == 3 and len(lines) == 3
    # the servers report cached prompt tokens, so each role's hit rate shows too
    assert all("kept tok/s" in line and "gen/kept" in line and "hit S" in line and "T " in line and "spent" in line
               for line in lines), lines
    teacher = summary["cost"]["roles"][TEACHER]
    assert list(summary["cost"]["roles"]) == [TEACHER]
    assert teacher["output_tokens"] == summary["roles"][TEACHER]["generated_tokens"] > 0
    assert teacher["cost"] == pytest.approx((teacher["input_tokens"] * 0.5 + teacher["output_tokens"] * 2.0) / 1e6)
    assert summary["cost"]["spent"] == summary["cost"]["projected"] == teacher["cost"]


def test_a_bad_price_is_refused_with_its_key():
    from tessy.typed import ConfigError

    with pytest.raises(ConfigError, match="input is -1.0: it must be at least 0"):
        load_config(teacher={"price_per_million_tokens": {"input": -1, "output": 1}})
    with pytest.raises(ConfigError, match="unknown key 'outptu'"):
        load_config(teacher={"price_per_million_tokens": {"input": 1, "outptu": 1}})
