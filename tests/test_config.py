"""Configs are checked when they load, before any model loads: every shipped file loads, and each
kind of bad value gets a message that names the file, the key and the value (exit status 2)."""

import json
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
    import tessy.engine.synth as synth

    monkeypatch.setattr(synth, "load_backends", lambda config: pytest.fail("loaded the models"))
    path = tmp_path / "bad.yaml"
    path.write_text("k: twenty\n")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "x"}\n')
    assert main(["synth", "--config", str(path), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "k is 'twenty'" in err and "Traceback" not in err


def test_an_output_written_with_another_config_is_not_resumed(tmp_path, monkeypatch, capsys):
    """A rerun with a config that writes other records is refused before any model loads, and leaves
    the output and its saved config as they were; a change in where or how requests run resumes."""
    import tessy.engine.synth as synth

    monkeypatch.setattr(synth, "load_backends", lambda config: pytest.fail("loaded the models"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "x"}\n')
    out, saved = tmp_path / "o.jsonl", tmp_path / "o.config.yaml"
    record = json.dumps({"id": "a", "messages": [], "config_hash": load_config().hash()}) + "\n"
    out.write_text(record)
    saved.write_text(load_config().to_yaml())
    before = saved.read_text()
    args = ["synth", "--prompts", str(prompts), "--out", str(out)]
    assert main([*args, "--k", "10"]) == 2
    assert "was written with another config" in capsys.readouterr().err
    assert out.read_text() == record and saved.read_text() == before
    with pytest.raises(synth.ConfigMismatchError):
        synth.synthesize(load_config(student={"temperature": 0.0}), prompts, out, progress=False)
    # how the samples are scheduled is no part of what they are: the run resumes, and "a" is done
    assert main([*args, "--batch-size", "4", "--in-flight", "3"]) == 0
    assert out.read_text() == record
    # nor is where a server is
    served = {"backend": "openai", "urls": ["http://127.0.0.1:9/v1"], "timeout_s": 5.0}
    saved.write_text(load_config(student=served).to_yaml())
    moved = load_config(student={**served, "urls": ["http://127.0.0.1:10/v1"], "max_retries": 0})
    assert synth.synthesize(moved, prompts, out, progress=False)["skipped"] == 1


# --- the config hash ----------------------------------------------------------------------------

# These hashes pin resumability across tessy versions: a run resumes only where its config's hash
# matches the one in its records, so an unchanged config must hash to the same value in every version.
# Each file is hashed as it loads and with one change per variant; `saved:` files are configs that
# `tessy synth` saved beside its outputs (tests/data/saved_configs/), the older ones with fewer keys.
SAVED = Path(__file__).resolve().parent / "data" / "saved_configs"
ROOT = CONFIGS.parent
VARIANTS = {
    "as-is": {},
    "k 10": {"k": 10},
    "teacher temperature": {"teacher": {"temperature": 0.3}},
    "student k 5": {"student": {"k": 5}},
    "stream_cuts": {"student": {"stream_cuts": True}, "teacher": {"stream_cuts": False}},
    "a url": {"teacher": {"backend": "openai", "urls": ["http://gpu:8000/v1"]}},
    "a price": {"student": {"price_per_million_tokens": {"input": 0.1, "output": 0.4}}},
    "scheduling": {"driver": "ticks", "batch_size": 3, "in_flight": 5, "stream_every": 2, "warm_prompts": False},
    "template kwargs": {"teacher": {"chat_template_kwargs": {"reasoning_effort": "high"}}},
}
PINNED = {
    "default":
        ["3448dfc12241ab2b", "aee5044c1eb71814", "a501f3fc3223ff7e", "fa7f443aa90ab2dd", "3448dfc12241ab2b",
         "b278d434e32636b6", "3448dfc12241ab2b", "3448dfc12241ab2b", "0c24600491b82968"],
    "configs/authors-release.yaml":
        ["988df0ebb61521af", "af0be99bd1959054", "efbc9525b2bf8ce6", "988df0ebb61521af", "988df0ebb61521af",
         "e19ab8c434ac0c23", "988df0ebb61521af", "988df0ebb61521af", "5eb44c069db8fbe5"],
    "configs/predictor-paper.yaml":
        ["02c9794008f0e57d", "303e6ebff066c9e3", "8f072ad5c4a43031", "be07c798fbfc9139", "02c9794008f0e57d",
         "02c9794008f0e57d", "02c9794008f0e57d", "02c9794008f0e57d", "7f74ac6f0a4b6ce9"],
    "configs/predictor-release.yaml":
        ["7f74ac6f0a4b6ce9", "6bfe00c10c04ab94", "af9e8fe53296f6b4", "334ee07eeeae72d7", "7f74ac6f0a4b6ce9",
         "7f74ac6f0a4b6ce9", "7f74ac6f0a4b6ce9", "7f74ac6f0a4b6ce9", "7f74ac6f0a4b6ce9"],
    "configs/scale-qwen3-8b-gpt-oss-120b.yaml":
        ["8149566d294e853a", "658d121784d86042", "6d5114fb1ac46ff9", "4d9dbeba45dd1d59", "8149566d294e853a",
         "8149566d294e853a", "8149566d294e853a", "8149566d294e853a", "e5020e924fe52f4e"],
    "examples/report/config.yaml":
        ["3448dfc12241ab2b", "aee5044c1eb71814", "a501f3fc3223ff7e", "fa7f443aa90ab2dd", "3448dfc12241ab2b",
         "b278d434e32636b6", "3448dfc12241ab2b", "3448dfc12241ab2b", "0c24600491b82968"],
    "saved:demo.config.yaml":
        ["00564d9f4c82322c", "c6c33f9b833d78ee", "0655ab6eb5068413", "522bf43237e2c0fe", "00564d9f4c82322c",
         "5a632a98edb4241e", "00564d9f4c82322c", "00564d9f4c82322c", "dfb8d9d15b23b646"],
    "saved:report-student-only.config.yaml":
        ["1bd19d23d2e5269a", "75dabb2d4f0aa489", "03f0f2aeec0ec3be", "b6aa234e2c293604", "1bd19d23d2e5269a",
         "253aeb2ecf1fa4a3", "1bd19d23d2e5269a", "1bd19d23d2e5269a", "bdf297e372f667f5"],
    "saved:report-teacher-mix.config.yaml":
        ["ce666911fabf6e23", "22580603b8c8013f", "c1565ce5fea33e32", "efb49d7ead08ab84", "ce666911fabf6e23",
         "b8dc11089421545a", "ce666911fabf6e23", "ce666911fabf6e23", "35908a8b130053c0"],
    "saved:report-teacher-only.config.yaml":
        ["d384c5bf0f66bb99", "9648559cd4849d20", "1c3af3de55242be6", "4c241cde04b74ea4", "d384c5bf0f66bb99",
         "2f75a0be7a13d424", "d384c5bf0f66bb99", "d384c5bf0f66bb99", "c1f8a30f11124bc8"],
    "saved:report-tessy.config.yaml":
        ["3448dfc12241ab2b", "aee5044c1eb71814", "a501f3fc3223ff7e", "fa7f443aa90ab2dd", "3448dfc12241ab2b",
         "b278d434e32636b6", "3448dfc12241ab2b", "3448dfc12241ab2b", "0c24600491b82968"],
}


def _pinned_path(name):
    if name == "default":
        return None
    return SAVED / name.removeprefix("saved:") if name.startswith("saved:") else ROOT / name


@pytest.mark.parametrize("name", list(PINNED))
def test_an_unchanged_config_keeps_its_hash(name):
    got = [load_config(_pinned_path(name), **overrides).hash() for overrides in VARIANTS.values()]
    assert dict(zip(VARIANTS, got)) == dict(zip(VARIANTS, PINNED[name]))


def test_every_shipped_synth_config_has_pinned_hashes():
    shipped = {f"configs/{name}" for name in tessy_configs() if not name.startswith("sft")}
    assert shipped <= set(PINNED)


# --- a role's config by kind --------------------------------------------------------------------


def test_a_role_is_one_flat_mapping_of_its_model_endpoint_and_turn(tmp_path):
    from tessy.config import ROLE_KEYS, RoleConfig
    from tessy.typed import flat_keys

    assert set(ROLE_KEYS) == set(flat_keys(RoleConfig))  # every key printed and saved, once
    path = tmp_path / "c.yaml"
    path.write_text("teacher: {model: m, temperature: 0.3, urls: ['http://a/v1'], k: 7, stream_cuts: true}\n")
    teacher = load_config(path).teacher
    assert (teacher.spec.model, teacher.spec.temperature) == ("m", 0.3)
    assert teacher.endpoint.urls == ["http://a/v1"] and (teacher.turn.k, teacher.turn.stream_cuts) == (7, True)
    saved = yaml.safe_load(load_config(path).to_yaml())["teacher"]
    assert list(saved) == list(ROLE_KEYS) and saved["urls"] == ["http://a/v1"] and saved["k"] == 7


def test_the_hash_leaves_out_what_does_not_change_the_records():
    """A role's endpoint and every field marked `records: False` are left out; all else is in."""
    import dataclasses

    from tessy.config import Endpoint, SynthConfig

    base = SynthConfig()
    served = dataclasses.replace(base, student=dataclasses.replace(
        base.student, endpoint=Endpoint(urls=["http://x/v1"], concurrency=3, api_key_env="K")))
    assert served.hash() == base.hash()
    assert dataclasses.replace(base, handover="complete-word").hash() != base.hash()
    for f in dataclasses.fields(SynthConfig):
        if f.metadata.get("records") is False:
            other = {bool: lambda v: not v, int: lambda v: v + 1, str: lambda v: "ticks" if v != "ticks" else "auto"}
            changed = dataclasses.replace(base, **{f.name: other[type(getattr(base, f.name))](getattr(base, f.name))})
            assert changed.hash() == base.hash(), f.name


def test_a_synth_config_ignores_the_predictor_recipe(tmp_path):
    """One file serves annotate, predictor train and synth: synth reads none of the recipe's sections."""
    from tessy.config import load_recipe

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"k": 10, "annotator": {"model": "q", "max_tokens": 9},
                                    "annotate": {"n": 3}, "predictor_train": {"epochs": 1}}))
    assert load_config(path).hash() == load_config(k=10).hash()
    assert "annotator" not in load_config(path).to_dict()
    recipe = load_recipe(path)
    assert (recipe.annotator.spec.model, recipe.annotator.max_tokens) == ("q", 9)
    assert (recipe.annotate, recipe.predictor_train) == ({"n": 3}, {"epochs": 1})


def test_eval_flags_are_the_model_specs_fields():
    """`tessy eval` offers every field of a role's model spec as a flag, and no endpoint or turn field but --url."""
    import dataclasses

    from tessy.cli import build_parser
    from tessy.config import Endpoint, ModelSpec, Turn

    [eval_parser] = [a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "eval"]
    flags = {o for action in eval_parser[1]._actions for o in action.option_strings}
    assert {"--" + f.name.replace("_", "-") for f in dataclasses.fields(ModelSpec)} <= flags
    others = {"--" + f.name.replace("_", "-") for cls in (Endpoint, Turn) for f in dataclasses.fields(cls)}
    assert others & flags <= {"--timeout-s"}  # eval's own: the sandbox's limit
    assert "--url" in flags
