"""configs/predictor-release.yaml: the authors' recipe for the boundary predictors, one config away.

The fast tests hold the file to the release's values (written here from its code: annotator.py,
generate_responses.py, train_predictor.py). The slow test runs the recipe's commands on the embedded
models at a tiny scale: annotate through a chat server on 127.0.0.1, train, evaluate, then synth with
the trained checkpoints, and checks that the cuts come from them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tessy.cli import main
from tessy.config import command_section, load_config, load_recipe
from tessy.roles import STUDENT, TEACHER
from tessy.typed import ConfigError, load, to_flat

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "predictor-release.yaml"

# The release's values, from its code.
RELEASE_ANNOTATE = {  # annotator.py and generate_responses.py
    "window_rule": "pieces", "window_pieces": 60, "windows_per_response": 100, "n": 10000, "seed": 222,
    "parse": "strict", "retries": 0, "out_format": "release", "annotator": "config",
    "sample_temperature": 0.95, "sample_top_p": 0.8, "sample_top_k": 20, "sample_tokens": 40768,
}
RELEASE_ANNOTATOR = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 32768,
                     "chat_template_kwargs": {"enable_thinking": False}}
RELEASE_TRAIN = {  # train_predictor.py
    "base": "Qwen/Qwen3-0.6B-Base", "label_rule": "overlap", "labels": "next-token", "class_weights": False,
    "lr": 1e-5, "lr_schedule": "constant", "batch_size": 32, "epochs": 3, "max_length": 512, "max_samples": 10000,
    "split": "random", "eval_fraction": 0.05, "keep": "best", "metric": "token_accuracy", "seed": 42,
    "dtype": "bfloat16",
}


def test_the_recipe_holds_the_releases_values():
    from tessy.predictors.annotate import AnnotateJob
    from tessy.predictors.learned import TrainConfig

    config, annotator = load_config(RECIPE), load_recipe(RECIPE).annotator
    job = load(AnnotateJob, command_section(RECIPE, "annotate"), "annotate", {"out": "o.jsonl"})
    train = load(TrainConfig, command_section(RECIPE, "predictor_train"), "train", {"data": "d", "out": "o"})
    assert {k: getattr(job, k) for k in RELEASE_ANNOTATE} == RELEASE_ANNOTATE
    assert {k: to_flat(annotator)[k] for k in RELEASE_ANNOTATOR} == RELEASE_ANNOTATOR
    assert {k: getattr(train, k) for k in RELEASE_TRAIN} == RELEASE_TRAIN
    assert annotator.spec.model == "Qwen/Qwen3-32B" and annotator.spec.backend == "openai"
    assert config.teacher.spec.chat_template_kwargs == {"reasoning_effort": "high"}


def test_the_recipe_sections_are_not_part_of_a_synth_runs_hash(tmp_path):
    data = yaml.safe_load(RECIPE.read_text())
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({k: v for k, v in data.items()
                                     if k not in ("annotator", "annotate", "predictor_train")}))
    assert load_config(RECIPE).hash() == load_config(plain).hash()


def test_a_flag_wins_over_the_section_and_a_bad_key_names_the_file(tmp_path, monkeypatch, capsys):
    import tessy.cli as cli

    seen = {}
    monkeypatch.setattr("tessy.predictors.annotate.run_annotate",
                        lambda job, console=None: seen.setdefault("job", job) and {})
    assert main(["annotate", "--config", str(RECIPE), "--records", "r.jsonl", "--seed", "7", "--out", "o.jsonl"]) == 0
    assert seen["job"].seed == 7 and seen["job"].window_pieces == 60 and seen["job"].parse == "strict"

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"predictor_train": {"lable_rule": "overlap"}}))
    assert main(["predictor", "train", "--config", str(bad), "--data", "d.jsonl", "--out", "o"]) == cli.USAGE
    err = capsys.readouterr().err
    assert "predictor_train" in err and "'label_rule'" in err
    with pytest.raises(ConfigError, match="must be a mapping"):
        bad.write_text("annotate: [1, 2]\n")
        command_section(bad, "annotate")


# --- end to end, tiny ------------------------------------------------------------------------------
def _style_answer(body: dict) -> str:
    """The annotator's answer, as a strict annotator writes it: a JSON array of the window's style
    phrases, verbatim and in order (the lexicon's; a window with none names its first word)."""
    from tessy.predictors.lexicon import LexiconPredictor

    prompt = body["messages"][-1]["content"]
    text = re.search(r"<input_text>(.*)</input_text>", prompt, re.S).group(1)
    spans = LexiconPredictor().style_spans([text])[0]
    phrases = [text[s:e] for s, e in spans] or [text.split()[0]]
    return json.dumps(phrases)


@pytest.mark.slow
def test_the_recipe_end_to_end_on_the_embedded_models(servers, tmp_path):
    from tessy.engine.records import read_records
    from tessy.predictors.learned import META_FILE, LearnedPredictor

    annotator = servers()
    annotator.chat_reply = _style_answer
    data = yaml.safe_load(RECIPE.read_text())
    for role in (STUDENT, TEACHER):
        data.pop(role)  # the embedded models, in this process
    data["annotator"].update(model="annotator", urls=[annotator.url], max_retries=0, timeout_s=60)
    data["annotate"].update(sample_tokens=48, window_pieces=6, windows_per_response=4, n=12, batch_size=4)
    data["predictor_train"].update(base="smollm2-135m-instruct", max_length=48, epochs=2, batch_size=4,
                                   eval_fraction=0.25, device="cpu")
    data.update(student_predictor=str(tmp_path / "b_s"), teacher_predictor=str(tmp_path / "b_t"),
                max_think_tokens=48, max_answer_tokens=8, max_rounds=40, batch_size=2)
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(data))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": q}) + "\n" for i, q in enumerate(
        ["Write a function that reverses a string.", "Count the vowels in a word.", "Sum the digits of n.",
         "Is 91 a prime number?"])))

    for role, short in ((STUDENT, "b_s"), (TEACHER, "b_t")):
        segments = tmp_path / f"{role}.jsonl"
        assert main(["annotate", "--config", str(config), "--sample", role, "--prompts", str(prompts),
                     "--out", str(segments)]) == 0
        lines = [json.loads(x) for x in segments.read_text().splitlines()]
        assert lines and all(set(x) == {"id_ddm", "think_text", "pred_result"} for x in lines)
        for x in lines:  # the release's file: each span is its text's [start, end)
            assert all(x["think_text"][p["start"]:p["end"]] == p["span"] for p in x["pred_result"])
            assert len(x["think_text"].split(" ")) == 6
        # Every request to the annotator carried the recipe's sampling and template arguments.
        asked = [b for b in annotator.requests if "messages" in b]
        assert asked and all(b["chat_template_kwargs"] == {"enable_thinking": False} and b["temperature"] == 0.7
                             and b["top_p"] == 0.8 and b["top_k"] == 20 and b["max_tokens"] == 32768 for b in asked)

        out = tmp_path / short
        assert main(["predictor", "train", "--config", str(config), "--data", str(segments), "--source", role,
                     "--out", str(out)]) == 0
        meta = json.loads((out / META_FILE).read_text())
        assert meta["n_train"] + meta["n_eval"] == len(lines)
        assert meta["keep"] == "best" and meta["metric"] == "token_accuracy"
        best = max(range(len(meta["epochs"])), key=lambda i: (meta["epochs"][i]["token_accuracy"], -i))
        assert meta["best_epoch"] == best + 1
        assert meta["config"]["label_rule"] == "overlap" and meta["config"]["class_weights"] is False
        assert meta["dtype"] == "bfloat16"
        assert str(LearnedPredictor.load(out).model.dtype) == "torch.bfloat16"
        assert main(["predictor", "eval", "--data", str(segments), "--source", role, "--predictor", "lexicon",
                     "--predictor", str(out)]) == 0

    records = tmp_path / "records.jsonl"
    assert main(["synth", "--config", str(config), "--prompts", str(prompts), "--out", str(records)]) == 0
    names = {STUDENT: "learned:b_s", TEACHER: "learned:b_t"}
    rows = read_records(records)
    assert len(rows) == 4
    for r in rows:
        assert r["stats"]["predictors"] == names
        assert all(c["predictor"] == names[c["role"]] for c in r["stats"]["cuts"])
    assert any(r["stats"]["cuts"] for r in rows)
