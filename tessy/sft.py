"""Fine-tune the student on synthesized data with TRL's `SFTTrainer` (paper, section 3.1).

The loss is on the assistant's tokens only. TRL's `assistant_only_loss=True` needs a chat template
with `{% generation %}` markers, which SmolLM2's (and most) templates lack, so each record becomes a
prompt/completion pair (`{"prompt": [user msgs], "completion": [assistant msg]}`) and
`completion_only_loss=True` masks the prompt instead. Full fine-tuning or LoRA through PEFT (the
paper's comparison, appendix A.5, uses rank 8 and alpha 16). A checkpoint is written after every
epoch, for appendix A.3's performance over epochs.

Optional system-prompt isolation (appendix A.2): a fixed system prompt is put in front of every
training conversation and recorded beside the model (`tessy_sft.json`), so that `tessy eval`
uses it too.

On GPUs the same command runs under accelerate, e.g. `accelerate launch --num_processes 8 -m tessy.cli sft ...`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tessy.records import json_lines


@dataclass
class SFTRunConfig:
    data: str = field(metadata={"help": "tessy records JSONL (their `messages`), or JSONL of prompt/completion pairs"})
    model: str = field(metadata={"help": "student to fine-tune: embedded name, .gguf, or Hugging Face directory"})
    out: str = field(metadata={"help": "output directory: the model, checkpoints/, train_log.json, tessy_sft.json"})
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (PEFT) instead of all weights; the saved model is merged"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (paper, appendix A.5: 8)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (paper, appendix A.5: 16)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data; a checkpoint is written after each"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate (paper: 5e-5)"})
    batch_size: int = field(default=1, metadata={"help": "sequences per device per step"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation; effective batch = batch_size x grad_accum x devices"})
    max_length: int = field(default=2048, metadata={"help": "longest tokenized sequence; longer ones are truncated"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: run all epochs)"})
    system_prompt: str | None = field(default=None, metadata={"help": "system-prompt isolation (appendix A.2): added to every example and recorded for eval"})
    seed: int = field(default=0, metadata={"help": "training seed"})
    logging_steps: int = field(default=1, metadata={"help": "log the loss every N steps"})


def load_examples(path: str | Path, system_prompt: str | None = None) -> list[dict]:
    """Read records and return prompt/completion pairs: [{"prompt": [msgs], "completion": [assistant msg]}].

    A tessy record's `messages` end with the assistant's reply; everything before it is the prompt.
    """
    examples = []
    for i, row in json_lines(path):
        if "messages" in row:
            messages = row["messages"]
            if not messages or messages[-1].get("role") != "assistant":
                raise ValueError(f"{path}:{i}: `messages` must end with the assistant's reply")
            prompt, completion = messages[:-1], messages[-1:]
        elif "prompt" in row and "completion" in row:
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(prompt, str):
                prompt, completion = [{"role": "user", "content": prompt}], [{"role": "assistant", "content": completion}]
        else:
            raise ValueError(f"{path}:{i}: expected a tessy record (`messages`) or `prompt` and `completion`")
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
        if system_prompt is not None:
            prompt = [{"role": "system", "content": system_prompt}] + [m for m in prompt if m["role"] != "system"]
        examples.append({"prompt": prompt, "completion": [{"role": "assistant", "content": completion[0]["content"]}]})
    if not examples:
        raise ValueError(f"{path}: no training examples")
    return examples


def _as_text(examples: list[dict], tokenizer) -> list[dict]:
    """For a model without a chat template (a base model): the `plain` profile's rendering as strings."""
    from tessy.profiles import PLAIN

    out = []
    for ex in examples:
        user = "\n\n".join(m["content"] for m in ex["prompt"])
        out.append({"prompt": PLAIN.fallback_template.format(prompt=user),
                    "completion": ex["completion"][0]["content"] + (tokenizer.eos_token or "")})  # fmt: skip
    return out


def train(config: SFTRunConfig, console=None) -> dict:
    """Run SFT. Writes the model to `config.out`; returns the training summary (also in train_log.json)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tessy.models import resolve

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.json"
    examples = load_examples(config.data, config.system_prompt)
    path = resolve(config.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        examples = _as_text(examples, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        max_length=config.max_length,
        completion_only_loss=True,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # TRL defaults to bf16, which CPUs refuse
        save_strategy="epoch",  # appendix A.3: performance over epochs
        save_only_model=True,  # weights only: an optimizer state per epoch would triple the disk use
        gradient_checkpointing=torch.cuda.is_available(),  # on CPU memory is not short, time is
        logging_steps=config.logging_steps,
        logging_first_step=True,
        report_to="none",
        seed=config.seed,
        disable_tqdm=True,
    )
    started = time.time()
    log = {"config": dataclasses.asdict(config), "model_path": str(path), "examples": len(examples), "log_history": []}

    class JsonLog(TrainerCallback):  # rewritten at every log event, so a killed run keeps its curve
        def on_log(self, _args, state, _control, logs=None, **_):
            if not state.is_world_process_zero:  # under accelerate, one process writes
                return
            log["log_history"] = state.log_history
            log["wall_s"] = round(time.time() - started, 2)
            log_path.write_text(json.dumps(log, indent=2))
            if console is not None and logs and "loss" in logs:
                console.print(f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}")

    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[JsonLog()])  # fmt: skip
    # The loss covers completion tokens only; record their share, as a check anyone can read.
    labels = trainer.train_dataset["labels"]  # TRL sets the prompt's labels to -100
    log["completion_token_share"] = sum(t != -100 for row in labels for t in row) / max(1, sum(map(len, labels)))
    if console is not None:
        console.print(f"SFT of {config.model} on {len(examples)} examples ({'LoRA' if config.lora else 'full'})")
    result = trainer.train()
    log.update(log_history=trainer.state.log_history, wall_s=round(time.time() - started, 2),
               steps=trainer.state.global_step, train_loss=result.training_loss,
               checkpoints=sorted(str(p) for p in (out / "checkpoints").glob("checkpoint-*")))  # fmt: skip
    if not trainer.is_world_process_zero():
        return log
    if config.lora:
        trainer.model.save_pretrained(out / "adapter")  # before merging: merging removes the LoRA layers
    final = trainer.model.merge_and_unload() if config.lora else trainer.model
    final.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "tessy_sft.json").write_text(json.dumps({"system_prompt": config.system_prompt, "base_model": config.model,
                                                    "lora": config.lora, "data": config.data}, indent=2))  # fmt: skip
    log_path.write_text(json.dumps(log, indent=2))
    if console is not None:
        console.print(f"done: {log['steps']} steps in {log['wall_s']} s, train loss {result.training_loss:.4f}; "
                      f"model in {out}, log in {log_path}")  # fmt: skip
    return log


def plot_loss(logs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> Path:
    """Overlay the training-loss curves of several runs (paper, Figure 15). Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, path in enumerate(logs):
        path = Path(path)
        history = json.loads(path.read_text())["log_history"]
        points = [(h["step"], h["loss"]) for h in history if "loss" in h]
        if not points:
            raise ValueError(f"{path}: the log holds no loss values")
        label = labels[i] if labels else (path.parent.name or path.stem)
        ax.plot(*zip(*points), label=label, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
