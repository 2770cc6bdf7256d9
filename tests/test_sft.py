"""SFT: records -> prompt/completion pairs; then the real loop, data -> `tessy sft` -> `tessy eval`."""

from __future__ import annotations

import json

import pytest

from tessy.cli import main
from tessy.sft import load_examples, plot_loss

SYSTEM = "You are tessy-tuned."


def tessy_records(n: int) -> list[dict]:
    """Records in the shape `tessy synth` writes (DESIGN.md: one output record per prompt)."""
    qa = [("Add 2 and 3.", "5"), ("Double x in Python.", "def f(x):\n    return 2 * x"), ("7 - 4?", "3"), ("Reverse 'ab'.", "'ba'")]
    out = []
    for i in range(n):
        q, a = qa[i % len(qa)]
        segments = [{"source": "student", "text": "Let me see.", "n_tokens": 4}, {"source": "teacher", "text": f" {q}", "n_tokens": 5}]
        out.append({"id": str(i), "prompt": q, "messages": [{"role": "user", "content": q},
                    {"role": "assistant", "content": f"<think>\nLet me see. {q}\n</think>\n\n{a}"}],
                    "segments": segments, "answer": a, "method": "tessy",
                    "stats": {"teacher_token_share": 0.5, "switches": 1, "rounds": 2, "stop_reason": "think_close", "wall_s": 0.1},
                    "config_hash": "test"})  # fmt: skip
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_records_become_prompt_completion_pairs(tmp_path):
    examples = load_examples(write_jsonl(tmp_path / "r.jsonl", tessy_records(2)))
    assert examples[0]["prompt"] == [{"role": "user", "content": "Add 2 and 3."}]
    assert examples[0]["completion"][0]["role"] == "assistant"
    assert examples[0]["completion"][0]["content"].startswith("<think>\n")


def test_system_prompt_isolation_replaces_any_system_message(tmp_path):
    record = tessy_records(1)[0]
    record["messages"].insert(0, {"role": "system", "content": "old"})
    examples = load_examples(write_jsonl(tmp_path / "r.jsonl", [record]), system_prompt=SYSTEM)
    assert [m["role"] for m in examples[0]["prompt"]] == ["system", "user"]
    assert examples[0]["prompt"][0]["content"] == SYSTEM


@pytest.mark.parametrize(
    "row, message",
    [({"id": 1, "messages": [{"role": "user", "content": "q"}]}, "must end with the assistant"),
     ({"id": 1, "text": "q"}, "expected a tessy record"), ({"id": 1, "messages": []}, "must end with the assistant")],
)  # fmt: skip
def test_bad_records_are_reported(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        load_examples(write_jsonl(tmp_path / "r.jsonl", [row]))


def test_model_without_chat_template_gets_plain_text_pairs(tmp_path):
    from types import SimpleNamespace

    from tessy.sft import _as_text

    examples = load_examples(write_jsonl(tmp_path / "r.jsonl", tessy_records(1)), system_prompt=SYSTEM)
    pair = _as_text(examples, SimpleNamespace(eos_token="<eos>"))[0]
    assert pair["prompt"] == f"Question: {SYSTEM}\n\nAdd 2 and 3.\n\nAnswer: "
    assert pair["completion"].startswith("<think>\n") and pair["completion"].endswith("5<eos>")


def test_empty_data_is_an_error(tmp_path):
    (tmp_path / "r.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no training examples"):
        load_examples(tmp_path / "r.jsonl")


def test_plot_loss_overlays_runs(tmp_path):
    logs = []
    for name, losses in (("tessy", [2.0, 1.5, 1.2]), ("teacher-only", [2.4, 2.0, 1.9])):
        (tmp_path / name).mkdir()
        history = [{"step": i + 1, "loss": v} for i, v in enumerate(losses)] + [{"step": 3, "train_loss": 1.0}]
        logs.append(tmp_path / name / "train_log.json")
        logs[-1].write_text(json.dumps({"log_history": history}))
    assert main(["plot-loss", *map(str, logs), "--out", str(tmp_path / "loss.png")]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty.json").write_text(json.dumps({"log_history": []}))
    with pytest.raises(ValueError, match="no loss"):
        plot_loss([tmp_path / "empty.json"], tmp_path / "x.png")


# --- the real thing: the embedded student, a step or two each ----------------------------------------
@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    data = write_jsonl(root / "records.jsonl", tessy_records(2))
    runs = {}
    for mode in ("lora", "full"):
        out = root / mode
        argv = ["sft", "--data", str(data), "--model", "smollm2-135m-instruct", "--out", str(out),
                "--batch-size", "2", "--max-length", "64", "--epochs", "1"]  # fmt: skip
        argv += ["--lora", "--system-prompt", SYSTEM] if mode == "lora" else ["--learning-rate", "1e-5"]
        assert main(argv) == 0
        runs[mode] = out
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_sft_writes_model_checkpoint_and_log(sft_runs, mode):
    out = sft_runs[mode]
    log = json.loads((out / "train_log.json").read_text())
    losses = [h["loss"] for h in log["log_history"] if "loss" in h]
    assert log["steps"] == 1 and losses and all(0 < v < 20 for v in losses)
    assert 0 < log["completion_token_share"] < 1  # the prompt is masked out of the loss
    assert (out / "checkpoints" / "checkpoint-1").is_dir()  # one per epoch
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file() == (mode == "lora")
    assert not any("lora" in k for k in _weight_names(out / "model.safetensors"))  # LoRA is merged in
    recorded = json.loads((out / "tessy_sft.json").read_text())
    assert recorded["system_prompt"] == (SYSTEM if mode == "lora" else None)
    assert recorded["lora"] == (mode == "lora")


def _weight_names(path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


@pytest.mark.slow
def test_sft_then_eval_on_five_humaneval_problems(sft_runs, tmp_path):
    from tessy.evaluate import recorded_system_prompt

    model = sft_runs["lora"]
    assert recorded_system_prompt(str(model)) == SYSTEM  # evaluation uses the isolation prompt too
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(model), "--benchmark", "humaneval", "--limit", "5", "--out", str(out),
                 "--max-think-tokens", "4", "--max-answer-tokens", "16", "--batch-size", "5"]) == 0  # fmt: skip
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["task_id"] for r in results] == [f"HumanEval/{i}" for i in range(5)]
    assert all(isinstance(r["passed"], bool) and r["completion"].startswith("<think>\n") for r in results)
    assert all(r["passed"] or r["reason"] for r in results)
    assert summary["problems"] == 5 and summary["samples"] == 5 and 0 <= summary["pass@1"] <= 1
    assert summary["model"] == str(model)


@pytest.mark.slow
def test_plot_loss_of_real_runs(sft_runs, tmp_path):
    logs = [str(sft_runs[m] / "train_log.json") for m in ("lora", "full")]
    assert main(["plot-loss", *logs, "--out", str(tmp_path / "loss.png"), "--labels", "lora", "full"]) == 0
    assert (tmp_path / "loss.png").stat().st_size > 1000
