"""SFT: records -> prompt/completion pairs; then the real loop, data -> `tessy sft` -> `tessy eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tessy.cli import main
from tessy.sft import (
    STOP_REASONS,
    cut_thinking,
    fit,
    keep_by_stop_reason,
    load_examples,
    load_sft_config,
    parse_stop_reasons,
    plot_loss,
    tokenize,
)

SYSTEM = "You are tessy-tuned."


def tessy_records(n: int, stop_reason: str = "student_closed", thinking_words: int = 0) -> list[dict]:
    """Records in the shape `tessy synth` writes (README, "Using it": one record per prompt)."""
    qa = [("Add 2 and 3.", "5"), ("Double x in Python.", "def f(x):\n    return 2 * x"), ("7 - 4?", "3"),
          ("Reverse 'ab'.", "'ba'")]
    out = []
    for i in range(n):
        q, a = qa[i % len(qa)]
        thinking = f"Let me see. {q}" + "".join(f" step{j}" for j in range(thinking_words))
        segments = [{"source": "student", "text": "Let me see.", "n_tokens": 4},
                    {"source": "teacher", "text": f" {q}", "n_tokens": 5}]
        out.append({"id": str(i), "prompt": q, "messages": [{"role": "user", "content": q},
                    {"role": "assistant", "content": f"<think>\n{thinking}\n</think>\n\n{a}"}],
                    "segments": segments, "answer": a, "method": "tessy",
                    "stats": {"teacher_token_share": 0.5, "switches": 1, "rounds": 2, "stop_reason": stop_reason,
                              "wall_s": 0.1},
                    "config_hash": "test"})
    return out


MAX_LENGTH = 96  # the short records are 51-67 tokens with SmolLM2's template


def mixed_records() -> list[dict]:
    """Two short records, one over MAX_LENGTH, and one each stopped by the repetition and the rounds guard."""
    return [*tessy_records(2), *tessy_records(1, thinking_words=60), *tessy_records(1, "repetition"),
            *tessy_records(1, "max_rounds")]


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
)
def test_bad_records_are_reported(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        load_examples(write_jsonl(tmp_path / "r.jsonl", [row]))


def test_model_without_chat_template_gets_plain_text_pairs(tmp_path):
    from types import SimpleNamespace

    from tessy.profiles import FALLBACK_TEMPLATE
    from tessy.sft import _as_text

    examples = load_examples(write_jsonl(tmp_path / "r.jsonl", tessy_records(1)), system_prompt=SYSTEM)
    pair = _as_text(examples, SimpleNamespace(eos_token="<eos>"))[0]
    assert pair["prompt"] == FALLBACK_TEMPLATE.format(prompt=f"{SYSTEM}\n\nAdd 2 and 3.")  # as synth renders it
    assert pair["completion"].startswith("<think>\n") and pair["completion"].endswith("5<eos>")


def test_empty_data_is_an_error(tmp_path):
    (tmp_path / "r.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no training examples"):
        load_examples(tmp_path / "r.jsonl")


# --- which records are trained on: how their thinking ended --------------------------------------------
def test_default_drops_the_guards_that_stop_a_loop(tmp_path):
    rows = [r for reason in STOP_REASONS for r in tessy_records(1, reason)] + [{"prompt": "q", "completion": "a"}]
    examples = load_examples(write_jsonl(tmp_path / "r.jsonl", rows))
    kept, dropped = keep_by_stop_reason(examples, "student_closed,teacher_closed,think_budget")
    # a prompt/completion pair has no stop reason: kept
    assert [ex["stop_reason"] for ex in kept] == ["student_closed", "teacher_closed", "think_budget", None]
    assert dropped == {"max_rounds": 1, "repetition": 1}


@pytest.mark.parametrize(
    "spec, keep",
    [("all", None), ("repetition", {"repetition"}), (" student_closed , max_rounds", {"student_closed", "max_rounds"})],
)
def test_keep_stop_reasons_spec(spec, keep):
    assert parse_stop_reasons(spec) == keep


@pytest.mark.parametrize("spec", ["", ",", "student_close", "think_close", "all,repetition", "ALL"])
def test_unknown_stop_reasons_are_refused(spec):
    with pytest.raises(ValueError, match="keep-stop-reasons"):
        parse_stop_reasons(spec)


# --- examples longer than max_length: counted, then refused, dropped or cut from the left ----------------
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tessy.models import resolve

    return AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct"))


def long_example(thinking_words=40, answer="The answer is 5.", question="Add 2 and 3."):
    thinking = " ".join(f"step{i}" for i in range(thinking_words))
    return {"prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": f"<think>\n{thinking}\n</think>\n\n{answer}"}]}


def test_tokenized_as_trained_masks_the_prompt(tokenizer):
    ex = long_example()
    row = tokenize(ex, tokenizer)
    render = tokenizer.apply_chat_template
    prompt = render(ex["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True)["input_ids"]
    assert row["input_ids"] == render(ex["prompt"] + ex["completion"], tokenize=True, return_dict=True)["input_ids"]
    assert row["completion_mask"] == [0] * len(prompt) + [1] * (len(row["input_ids"]) - len(prompt))
    assert row["length"] == len(row["input_ids"])


def test_truncate_left_cuts_the_start_of_the_thinking_only(tokenizer):
    row = tokenize(long_example(), tokenizer)
    start = row["completion_mask"].index(1)
    cut = cut_thinking(row, 80, tokenizer)
    assert cut["length"] == len(cut["input_ids"]) == 80 < row["length"]
    assert cut["input_ids"][:start] == row["input_ids"][:start]  # the prompt, whole
    assert cut["completion_mask"] == [0] * start + [1] * (80 - start)
    reply = tokenizer.decode(cut["input_ids"][start:])
    assert reply.startswith("<think>\n") and "step0 " not in reply  # the open marker stays, the first thoughts go
    assert reply.endswith("step39\n</think>\n\nThe answer is 5.<|im_end|>\n")  # the last thoughts and the answer stay


@pytest.mark.parametrize(
    "example",
    [long_example(question="Add 2 and 3. " * 10),  # the prompt alone is longer
     long_example(answer="x " * 60),  # so is the answer
     {"prompt": [{"role": "user", "content": "q"}],
      "completion": [{"role": "assistant", "content": "word " * 90}]}],  # no thinking at all
)
def test_what_cannot_be_cut_is_dropped_and_counted(tokenizer, example):
    from datasets import Dataset

    short = tokenize(long_example(thinking_words=1), tokenizer)  # 57 tokens
    data = Dataset.from_list([tokenize(example, tokenizer), short])
    fitted, report = fit(data, 80, "truncate-left", tokenizer)
    assert report["too_long"] == 1 and report["truncated"] == 0 and report["dropped"] == 1
    assert fitted["input_ids"] == [short["input_ids"]]


def test_fit_refuses_with_the_count_or_drops(tokenizer):
    from datasets import Dataset

    rows = [tokenize(long_example(n), tokenizer) for n in (1, 40, 60)]
    longest = rows[2]["length"]
    message = rf"^2 of 3 examples are longer than --max-length 60 tokens \(longest {longest}\); choose --too-long drop"
    with pytest.raises(ValueError, match=message + " or truncate-left$"):
        fit(Dataset.from_list(rows), 60, "error", tokenizer)
    fitted, report = fit(Dataset.from_list(rows), 60, "drop", tokenizer)
    assert (len(fitted), report["dropped"], report["truncated"]) == (1, 2, 0)


def test_over_long_record_is_refused_with_its_count(tmp_path, capsys):
    data = write_jsonl(tmp_path / "r.jsonl", mixed_records())
    argv = ["sft", "--data", str(data), "--model", "smollm2-135m-instruct", "--out", str(tmp_path / "out"),
            "--max-length", str(MAX_LENGTH)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"1 of 3 examples are longer than --max-length {MAX_LENGTH} tokens" in err and "--too-long drop" in err
    assert not (tmp_path / "out").exists()  # refused before the model loads and anything is written


# --- the recipe's config files ----------------------------------------------------------------------------
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_recipe_config_maps_onto_sft_options():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_sft_config(CONFIGS / "sft-qwen3-8b.yaml", data="records.jsonl", out="runs/x", epochs=None)
    assert (config.model, config.lora, config.learning_rate, config.epochs) == ("Qwen/Qwen3-8B", False, 5e-5, 9.0)
    assert parse_stop_reasons(config.keep_stop_reasons) == {"student_closed", "teacher_closed", "think_budget"}
    assert config.too_long == "error"
    launch = load_config_from_file(str(CONFIGS / "accelerate-8gpu-fsdp.yaml"))
    assert launch.distributed_type == "FSDP" and launch.num_processes == 8
    assert config.batch_size * config.grad_accum * launch.num_processes == 128  # the paper's global batch
    assert launch.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # save_only_model refuses sharded ones
    known = {a.dest for a in launch_command_parser()._actions}
    assert set(launch.fsdp_config) <= known  # accelerate ignores a misspelt key silently


def test_command_line_overrides_the_config(tmp_path):
    config = load_sft_config(CONFIGS / "sft-qwen3-8b.yaml", data="d", out="o", epochs=2.0, lora=True, too_long="drop")
    assert (config.epochs, config.lora, config.too_long, config.learning_rate) == (2.0, True, "drop", 5e-5)
    # through the command: the config's too_long: error stops an over-long record; model and length from flags
    data = write_jsonl(tmp_path / "r.jsonl", mixed_records())
    assert main(["sft", "--config", str(CONFIGS / "sft-qwen3-8b.yaml"), "--data", str(data), "--out", str(tmp_path),
                 "--model", "smollm2-135m-instruct", "--max-length", str(MAX_LENGTH)]) == 2


@pytest.mark.parametrize(
    "text, message",
    [("lr: 1.0e-5\n", "unknown key 'lr'"), ("epochs: many\n", "epochs is 'many' \\(str\\): expected a number"),
     ("lora: yes please\n", "lora is 'yes please' \\(str\\): expected true or false"),
     ("batch_size: 1.5\n", "batch_size is 1.5 \\(float\\): expected an integer"),
     ("too_long: cut\n", "too_long is 'cut': choose one of error, drop, truncate-left"), ("- data\n", "mapping"),
     ("keep_stop_reasons: [repetition, loops]\n", "keep-stop-reasons"), ("model: m\n", "needs --data, --out")],
)
def test_bad_sft_configs_are_refused(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    overrides = {} if text.startswith("model") else {"data": "d", "model": "m", "out": "o"}
    with pytest.raises(ValueError, match=message):
        load_sft_config(tmp_path / "c.yaml", **overrides)


def test_yaml_numbers_written_as_strings_are_read_as_numbers(tmp_path):
    text = "learning_rate: 5e-5\nepochs: 3\nkeep_stop_reasons: [student_closed, think_budget]\n"
    (tmp_path / "c.yaml").write_text(text)
    config = load_sft_config(tmp_path / "c.yaml", data="d", model="m", out="o")  # YAML reads 5e-5 as a string
    assert (config.learning_rate, config.epochs, config.keep_stop_reasons) == (5e-5, 3.0, "student_closed,think_budget")


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
# Both runs read mixed_records(): two short records, one over MAX_LENGTH, two stopped by a guard. LoRA
# cuts the long one's thinking (3 examples); full fine-tuning drops it (2) and runs 2 epochs.
EPOCHS = {"lora": 1, "full": 2}


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    import contextlib
    import io

    root = tmp_path_factory.mktemp("sft")
    data = write_jsonl(root / "records.jsonl", mixed_records())
    runs = {}
    for mode in ("lora", "full"):
        out = root / mode
        argv = ["sft", "--data", str(data), "--model", "smollm2-135m-instruct", "--out", str(out),
                "--batch-size", "4", "--max-length", str(MAX_LENGTH), "--epochs", str(EPOCHS[mode])]
        argv += (["--lora", "--system-prompt", SYSTEM, "--too-long", "truncate-left"] if mode == "lora"
                 else ["--learning-rate", "1e-5", "--too-long", "drop"])
        with contextlib.redirect_stdout(io.StringIO()) as console:
            assert main(argv) == 0
        runs[mode] = out
        (out / "console.txt").write_text(console.getvalue())
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_sft_writes_model_checkpoint_and_log(sft_runs, mode):
    out = sft_runs[mode]
    log = json.loads((out / "train_log.json").read_text())
    losses = [h["loss"] for h in log["log_history"] if "loss" in h]
    assert log["steps"] == EPOCHS[mode] and losses and all(0 < v < 20 for v in losses)  # one batch per epoch
    assert 0 < log["completion_token_share"] < 1  # the prompt is masked out of the loss
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file() == (mode == "lora")
    assert not any("lora" in k for k in _weight_names(out / "model.safetensors"))  # LoRA is merged in
    recorded = json.loads((out / "tessy_sft.json").read_text())
    assert recorded["system_prompt"] == (SYSTEM if mode == "lora" else None)
    assert recorded["lora"] == (mode == "lora")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_every_checkpoint_carries_tessy_sft_json(sft_runs, mode):
    checkpoints = sorted((sft_runs[mode] / "checkpoints").glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == [f"checkpoint-{e}" for e in range(1, EPOCHS[mode] + 1)]  # one per epoch
    final = json.loads((sft_runs[mode] / "tessy_sft.json").read_text())
    assert all(json.loads((p / "tessy_sft.json").read_text()) == final for p in checkpoints)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, examples, truncated, dropped, said",
    [("lora", 3, 1, 0, f"cut the start of the thinking of 1 of 3 examples to fit --max-length {MAX_LENGTH} tokens"),
     ("full", 2, 0, 1, f"dropped 1 of 3 examples longer than --max-length {MAX_LENGTH} tokens")],
)
def test_sft_says_what_it_left_out(sft_runs, mode, examples, truncated, dropped, said):
    log = json.loads((sft_runs[mode] / "train_log.json").read_text())
    assert log["examples"] == examples
    assert log["data"]["records"] == 5 and log["data"]["dropped_by_stop_reason"] == {"repetition": 1, "max_rounds": 1}
    assert (log["data"]["too_long"], log["data"]["truncated"], log["data"]["dropped"]) == (1, truncated, dropped)
    console = " ".join((sft_runs[mode] / "console.txt").read_text().split())  # rich wraps long lines
    assert "dropped 2 of 5 records by how their thinking ended: repetition 1, max_rounds 1" in console
    assert said in console


def _weight_names(path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


@pytest.mark.slow
def test_sft_then_eval_on_five_humaneval_problems(sft_runs, tmp_path):
    from tessy.eval.evaluate import recorded_system_prompt

    model = sft_runs["lora"]
    assert recorded_system_prompt(str(model)) == SYSTEM  # evaluation uses the isolation prompt too
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(model), "--benchmark", "humaneval", "--limit", "5", "--out", str(out),
                 "--max-think-tokens", "4", "--max-answer-tokens", "16", "--batch-size", "5"]) == 0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["task_id"] for r in results] == [f"HumanEval/{i}" for i in range(5)]
    assert all(isinstance(r["passed"], bool) and r["completion"].startswith("<think>\n") for r in results)
    assert all(r["passed"] == (r["verdict"] == "accepted") for r in results)
    assert summary["problems"] == 5 and summary["samples"] == 5 and 0 <= summary["pass@1"] <= 1
    assert summary["model"] == str(model)


@pytest.mark.slow
def test_plot_loss_of_real_runs(sft_runs, tmp_path):
    logs = [str(sft_runs[m] / "train_log.json") for m in ("lora", "full")]
    assert main(["plot-loss", *logs, "--out", str(tmp_path / "loss.png"), "--labels", "lora", "full"]) == 0
    assert (tmp_path / "loss.png").stat().st_size > 1000
