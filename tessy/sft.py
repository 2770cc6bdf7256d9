"""Fine-tune the student on synthesized data with TRL's `SFTTrainer` (paper, section 3.1).

The loss is on the assistant's tokens only. TRL's `assistant_only_loss=True` needs a chat template
with `{% generation %}` markers, which SmolLM2's (and most) templates lack, so each record becomes a
prompt/completion pair (`{"prompt": [user msgs], "completion": [assistant msg]}`) and
`completion_only_loss=True` masks the prompt instead. Full fine-tuning or LoRA through PEFT (the
paper's comparison, appendix A.5, uses rank 8 and alpha 16). A checkpoint is written after every
epoch, for appendix A.3's performance over epochs.

Nothing is cut or left out silently. Before the model loads, records are kept by how their thinking
ended (`keep_stop_reasons`; by default a thinking stopped by the repetition or the rounds guard is
not trained on), then tokenized as they will be trained, and the examples longer than `max_length`
are counted: `too_long` says whether to refuse the run (the default), drop them, or cut the start of
their thinking. TRL gets the tokenized examples, all within `max_length`, so its own truncation, which
keeps the start and would cut the answer, never acts. Counts go to the console and `train_log.json`.

Optional system-prompt isolation (appendix A.2): a fixed system prompt is put in front of every
training conversation and recorded beside the model and in every checkpoint (`tessy_sft.json`), so
that `tessy eval` uses it too.

On GPUs the same command runs under accelerate, e.g. the paper's recipe on 8 GPUs:
`accelerate launch --config_file configs/accelerate-8gpu-fsdp.yaml -m tessy.cli sft --config configs/sft-qwen3-8b.yaml
--data ... --out ...`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tessy.engine.records import json_lines
from tessy.profiles import BUILTIN
from tessy.typed import load, read_yaml

# How a record's thinking ended (`stats.stop_reason`): closed by a party (tessy.engine.loop, tessy.engine.methods)
# or by a guard (tessy.engine.loop.stop_guard).
STOP_REASONS = ("student_closed", "teacher_closed", "think_budget", "max_rounds", "repetition")
# A thinking stopped by the rounds or the repetition guard ends in a loop or mid-thought: not a
# trace to imitate. One spent at the budget was closed by tessy and still ends in an answer.
KEEP_STOP_REASONS = "student_closed,teacher_closed,think_budget"
TOO_LONG = ("error", "drop", "truncate-left")


@dataclass
class SFTRunConfig:
    data: str = field(metadata={"help": "tessy records JSONL (their `messages`), or JSONL of prompt/completion pairs"})
    model: str = field(metadata={"help": "student to fine-tune: embedded name, .gguf, or Hugging Face directory"})
    out: str = field(metadata={"help": "output directory: the model, checkpoints/, train_log.json, tessy_sft.json"})
    lora: bool = field(
        default=False,
        metadata={"help": "train a LoRA adapter (PEFT) instead of all weights; the saved model is merged"},
    )
    lora_r: int = field(default=8, metadata={"min": 1, "help": "LoRA rank (paper, appendix A.5: 8)"})
    lora_alpha: int = field(default=16, metadata={"min": 1, "help": "LoRA alpha (paper, appendix A.5: 16)"})
    epochs: float = field(
        default=1.0,
        metadata={"gt": 0, "help": "passes over the data; a checkpoint is written after each"},
    )
    learning_rate: float = field(default=5e-5, metadata={"gt": 0, "help": "peak learning rate (paper: 5e-5)"})
    batch_size: int = field(default=1, metadata={"min": 1, "help": "sequences per device per step"})
    grad_accum: int = field(
        default=1,
        metadata={"min": 1, "help": "gradient accumulation; effective batch = batch_size x grad_accum x devices"},
    )
    max_length: int = field(
        default=2048,
        metadata={"min": 1, "help": "longest example in tokens, prompt and reply; see too_long"},
    )
    too_long: str = field(
        default="error",
        metadata={"choices": TOO_LONG,
                  "help": "examples over max_length: error (refuse, with their count), drop, or truncate-left "
                          "(cut the thinking's start)"},
    )
    keep_stop_reasons: str = field(
        default=KEEP_STOP_REASONS,
        metadata={"help": "records kept, by how their thinking ended: all, or a comma list of STOP_REASONS"},
    )
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: run all epochs)"})
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "system-prompt isolation (appendix A.2): added to every example and recorded for eval"},
    )
    packing: bool = field(
        default=False,
        metadata={"help": "TRL's BFD packing into rows of max_length (loss mask kept); a batch then counts rows"},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "attention kernel for from_pretrained, e.g. flash_attention_2 (default: sdpa)"},
    )
    seed: int = field(default=0, metadata={"help": "training seed"})
    logging_steps: int = field(default=1, metadata={"help": "log the loss every N steps"})

    def __post_init__(self):
        parse_stop_reasons(self.keep_stop_reasons)


def load_sft_config(path: str | Path | None = None, **overrides) -> SFTRunConfig:
    """The SFT options from a YAML file whose keys are `SFTRunConfig`'s fields, then from `overrides`
    (the command line; None values ignored), each checked by `tessy.typed` as it comes in; missing
    `data`, `model` or `out` is an error."""
    data = read_yaml(path) if path is not None else {}
    if isinstance(data.get("keep_stop_reasons"), list):  # YAML's own list form of the comma list
        data["keep_stop_reasons"] = ",".join(map(str, data["keep_stop_reasons"]))
    return load(SFTRunConfig, data, str(path or "tessy sft"), overrides)


def parse_stop_reasons(spec: str) -> frozenset[str] | None:
    """`--keep-stop-reasons` as a set of stop reasons; None for `all`."""
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    if names == ["all"]:
        return None
    unknown = [s for s in names if s not in STOP_REASONS]
    if unknown or not names:
        raise ValueError(f"--keep-stop-reasons: {', '.join(map(repr, unknown)) or 'nothing given'}; "
                         f"give all, or a comma list of {', '.join(STOP_REASONS)}")
    return frozenset(names)


def load_examples(path: str | Path, system_prompt: str | None = None) -> list[dict]:
    """Read records and return prompt/completion pairs:
    [{"prompt": [msgs], "completion": [assistant msg], "stop_reason": str | None}].

    A tessy record's `messages` end with the assistant's reply; everything before it is the prompt.
    `stop_reason` is the record's `stats.stop_reason`, None where it has none.
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
                prompt, completion = ([{"role": "user", "content": prompt}],
                                      [{"role": "assistant", "content": completion}])
        else:
            raise ValueError(f"{path}:{i}: expected a tessy record (`messages`) or `prompt` and `completion`")
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
        if system_prompt is not None:
            prompt = [{"role": "system", "content": system_prompt}] + [m for m in prompt if m["role"] != "system"]
        stats = row.get("stats") if isinstance(row.get("stats"), dict) else {}
        examples.append({"prompt": prompt, "completion": [{"role": "assistant", "content": completion[0]["content"]}],
                         "stop_reason": stats.get("stop_reason")})
    if not examples:
        raise ValueError(f"{path}: no training examples")
    return examples


def keep_by_stop_reason(examples: list[dict], spec: str) -> tuple[list[dict], Counter]:
    """The examples whose thinking ended in one of `spec`'s stop reasons (`parse_stop_reasons`), and
    a Counter of the dropped ones by stop reason. Examples without a stop reason (plain pairs) stay."""
    keep = parse_stop_reasons(spec)
    kept, dropped = [], Counter()
    for ex in examples:
        reason = ex.get("stop_reason")
        if keep is None or reason is None or reason in keep:
            kept.append(ex)
        else:
            dropped[reason] += 1
    return kept, dropped


def _as_text(examples: list[dict], tokenizer) -> list[dict]:
    """For a model without a chat template (a base model): the `plain` profile's rendering as strings."""
    from tessy.profiles import PLAIN

    out = []
    for ex in examples:
        user = "\n\n".join(m["content"] for m in ex["prompt"])
        out.append({"prompt": PLAIN.fallback_template.format(prompt=user),
                    "completion": ex["completion"][0]["content"] + (tokenizer.eos_token or "")})
    return out


def tokenize(example: dict, tokenizer) -> dict:
    """One prompt/completion pair as it will be trained:
    {"input_ids": [int], "completion_mask": [0 or 1, 1 where the loss is], "length": int}.

    The same steps as TRL's own preparation of such pairs: the prompt with the generation prompt,
    the whole conversation, and the completion from where the two tokenizations part.
    """
    from trl.data_utils import common_prefix_length

    prompt, completion = example["prompt"], example["completion"]
    if isinstance(prompt, str):  # no chat template (`_as_text`)
        prompt_ids = tokenizer(text=prompt)["input_ids"]
        ids = tokenizer(text=prompt + completion)["input_ids"]
    else:
        render = tokenizer.apply_chat_template
        prompt_ids = render(prompt, tokenize=True, return_dict=True, add_generation_prompt=True)["input_ids"]
        ids = render(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    start = common_prefix_length(prompt_ids, ids)
    return {"input_ids": ids, "completion_mask": [0] * start + [1] * (len(ids) - start), "length": len(ids)}


THINK_OPENS = tuple(sorted({p.think_open.strip() for p in BUILTIN.values()}))
THINK_CLOSES = tuple(sorted({p.think_close for p in BUILTIN.values()}))


def cut_thinking(row: dict, max_length: int, tokenizer) -> dict:
    """Fit an over-long example (a `tokenize` row) into `max_length` by cutting tokens from the start
    of its thinking. Returns the row cut, or unchanged when it cannot be cut (the caller drops it).

    Kept whole: the prompt, without which the reply answers nothing; the think-open marker, which
    tessy prefills at inference, so the trained thinking still follows it; and the end of the reply,
    the last of the thinking, its close marker and the answer, the part that SFT is for. The cut
    starts mid-thought, which the loss then teaches once per cut example; cutting at the right
    instead would lose the answer. A reply whose first close marker would not survive (the prompt
    and answer alone are too long), or that has none, cannot be cut.
    """
    ids, mask = row["input_ids"], row["completion_mask"]
    start = mask.index(1) if 1 in mask else len(ids)
    reply = ids[start:]
    head = _think_open_end(reply, tokenizer)
    cut = head + len(ids) - max_length  # reply[head:cut] goes
    close = _first_close_end(reply, tokenizer)
    if close is None or cut > close or not any(m in tokenizer.decode(reply[cut:close]) for m in THINK_CLOSES):
        return row
    reply = reply[:head] + reply[cut:]
    mask = [0] * start + [1] * len(reply)
    return {"input_ids": ids[:start] + reply, "completion_mask": mask, "length": len(mask)}


def _think_open_end(reply: list[int], tokenizer, within: int = 32) -> int:
    """How many tokens the reply's think-open marker (and the whitespace after it) takes; 0 without one."""
    for i in range(1, min(len(reply), within) + 1):
        if any(m in tokenizer.decode(reply[:i]) for m in THINK_OPENS):
            while i < len(reply) and not tokenizer.decode(reply[i : i + 1]).strip():
                i += 1
            return i
    return 0


def _first_close_end(reply: list[int], tokenizer) -> int | None:
    """The shortest prefix of the reply that holds a think-close marker, in tokens; None without one.
    A binary search: whether a prefix holds the marker only changes once, from no to yes."""
    if not any(m in tokenizer.decode(reply) for m in THINK_CLOSES):
        return None
    lo, hi = 1, len(reply)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(m in tokenizer.decode(reply[:mid]) for m in THINK_CLOSES):
            hi = mid
        else:
            lo = mid + 1
    return lo


def fit(data, max_length: int, too_long: str, tokenizer):
    """Apply the `too_long` policy to a `datasets.Dataset` of `tokenize` rows.

    Returns (dataset of rows within `max_length`, report) with report
    {"examples", "max_length", "too_long", "longest", "policy", "truncated", "dropped"}.
    Raises ValueError under `error` when any example is too long.
    """
    lengths = list(data["length"])
    n_long = sum(n > max_length for n in lengths)
    report = {"examples": len(lengths), "max_length": max_length, "too_long": n_long,
              "longest": max(lengths, default=0), "policy": too_long, "truncated": 0, "dropped": 0}
    if not n_long:
        return data, report
    if too_long == "error":
        raise ValueError(f"{n_long} of {len(lengths)} examples are longer than --max-length {max_length} tokens "
                         f"(longest {report['longest']}); choose --too-long drop or truncate-left")
    if too_long == "truncate-left":
        data = data.map(lambda row: cut_thinking(row, max_length, tokenizer) if row["length"] > max_length else row)
        report["truncated"] = n_long - sum(n > max_length for n in data["length"])
    report["dropped"] = n_long - report["truncated"]
    return data.filter(lambda n: n <= max_length, input_columns="length"), report


def write_sft_record(directory: str | Path, config: SFTRunConfig) -> Path:
    """`tessy_sft.json` beside a model or in a checkpoint: what `tessy eval` needs to know about it."""
    path = Path(directory) / "tessy_sft.json"
    path.write_text(json.dumps({"system_prompt": config.system_prompt, "base_model": config.model,
                                "lora": config.lora, "data": config.data}, indent=2))
    return path


def train(config: SFTRunConfig, console=None) -> dict:
    """Run SFT. Writes the model to `config.out`; returns the training summary (also in train_log.json)."""
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    from trl import SFTConfig, SFTTrainer

    from tessy.models import resolve

    main_process = PartialState().is_main_process  # under accelerate, one process speaks

    def say(text: str) -> None:
        if console is not None and main_process:
            console.print(text)

    out = Path(config.out)
    log_path = out / "train_log.json"
    records = load_examples(config.data, config.system_prompt)
    examples, dropped = keep_by_stop_reason(records, config.keep_stop_reasons)
    if dropped:
        say(f"dropped {sum(dropped.values())} of {len(records)} records by how their thinking ended: "
            + ", ".join(f"{reason} {n}" for reason, n in dropped.most_common())
            + f" (--keep-stop-reasons {config.keep_stop_reasons})")
    if not examples:
        raise ValueError(f"{config.data}: no records left after --keep-stop-reasons {config.keep_stop_reasons}")
    path = resolve(config.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        examples = _as_text(examples, tokenizer)
    pairs = Dataset.from_list([{"prompt": ex["prompt"], "completion": ex["completion"]} for ex in examples])
    data = pairs.map(tokenize, fn_kwargs={"tokenizer": tokenizer}, remove_columns=pairs.column_names)
    data, fitted = fit(data, config.max_length, config.too_long, tokenizer)  # refuses here, before the model loads
    if fitted["truncated"]:
        say(f"cut the start of the thinking of {fitted['truncated']} of {fitted['examples']} examples to fit "
            f"--max-length {config.max_length} tokens (longest was {fitted['longest']})")
    if fitted["dropped"]:
        why = "their prompt and answer alone do not fit" if config.too_long == "truncate-left" else "--too-long drop"
        say(f"dropped {fitted['dropped']} of {fitted['examples']} examples longer than --max-length "
            f"{config.max_length} tokens (longest {fitted['longest']}; {why})")
    if not len(data):
        raise ValueError(f"{config.data}: no examples fit --max-length {config.max_length}")
    data = data.remove_columns("length")
    out.mkdir(parents=True, exist_ok=True)
    kernel = {"attn_implementation": config.attn_implementation} if config.attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kernel)
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        max_length=config.max_length,  # every example already fits: TRL's truncation has nothing to cut
        packing=config.packing,
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
    log = {"config": dataclasses.asdict(config), "model_path": str(path), "examples": len(data), "log_history": [],
           "data": {"records": len(records), "dropped_by_stop_reason": dict(dropped), **fitted}}

    class JsonLog(TrainerCallback):  # rewritten at every log event, so a killed run keeps its curve
        def on_log(self, _args, state, _control, logs=None, **_):
            if not state.is_world_process_zero:  # under accelerate, one process writes
                return
            log["log_history"] = state.log_history
            log["wall_s"] = round(time.time() - started, 2)
            log_path.write_text(json.dumps(log, indent=2))
            if console is not None and logs and "loss" in logs:
                console.print(f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}")

    class RecordInCheckpoints(TrainerCallback):  # a checkpoint is evaluated like the final model: same system prompt
        def on_save(self, args, state, _control, **_):
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if state.is_world_process_zero and checkpoint.is_dir():
                write_sft_record(checkpoint, config)

    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[JsonLog(), RecordInCheckpoints()])
    # The loss covers completion tokens only; record their share, as a check anyone can read.
    labels = trainer.train_dataset["labels"]  # TRL sets the prompt's labels to -100
    log["completion_token_share"] = sum(t != -100 for row in labels for t in row) / max(1, sum(map(len, labels)))
    if not config.packing and (len(labels) != len(data) or max(map(len, labels)) > config.max_length):
        raise RuntimeError(f"TRL changed the fitted data: {len(labels)} of {len(data)} examples left")  # never silently
    say(f"SFT of {config.model} on {len(data)} examples ({'LoRA' if config.lora else 'full'})")
    result = trainer.train()
    log.update(log_history=trainer.state.log_history, wall_s=round(time.time() - started, 2),
               steps=trainer.state.global_step, train_loss=result.training_loss,
               checkpoints=sorted(str(p) for p in (out / "checkpoints").glob("checkpoint-*")))
    if not config.lora:
        trainer.save_model(str(out))  # on every process: under FSDP or ZeRO-3 the weights are gathered from all
    if not trainer.is_world_process_zero():
        return log
    if config.lora:
        trainer.model.save_pretrained(out / "adapter")  # before merging: merging removes the LoRA layers
        trainer.model.merge_and_unload().save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_sft_record(out, config)
    log_path.write_text(json.dumps(log, indent=2))
    say(f"done: {log['steps']} steps in {log['wall_s']} s, train loss {result.training_loss:.4f}; "
        f"model in {out}, log in {log_path}")
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
