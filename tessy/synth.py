"""`tessy synth`: read prompts, run the cooperative loop over them, append records, summarise."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from tessy.config import SynthConfig
from tessy.loop import LoopSettings, tessy_sample
from tessy.predictors import STUDENT, TEACHER, load_predictor
from tessy.profiles import get_profile, render_prompt
from tessy.prompts import Prompt, read_prompts
from tessy.records import RecordWriter, done_ids
from tessy.scheduler import Scheduler
from tessy.transcript import Party, Transcript


class ConfigMismatchError(RuntimeError):
    pass


def config_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".config.yaml")


def load_backends(config: SynthConfig) -> dict:
    from tessy.backends import make_backend

    return {STUDENT: make_backend(config.student, STUDENT), TEACHER: make_backend(config.teacher, TEACHER)}


def same_vocabulary(a, b) -> bool:
    return a is b or a.get_vocab() == b.get_vocab()


def settings_for(config: SynthConfig, backends: dict) -> LoopSettings:
    return LoopSettings(
        k=config.k,
        max_think_tokens=config.max_think_tokens,
        max_answer_tokens=config.max_answer_tokens,
        max_rounds=config.max_rounds,
        same_vocab=same_vocabulary(backends[STUDENT].tokenizer, backends[TEACHER].tokenizer),
    )


def start_sample(prompt: Prompt, config: SynthConfig, backends: dict, settings: LoopSettings, predictors: dict | None = None):
    """A new transcript for `prompt`, each model's prompt rendered by its own profile."""
    parties = {}
    for role in (STUDENT, TEACHER):
        backend = backends[role]
        profile = get_profile(getattr(config, role).profile, config.profiles)
        text, used_template = render_prompt(profile, backend.tokenizer, list(prompt.messages))
        parties[role] = Party(backend, profile, backend.start(text, add_special_tokens=not used_template))
    x = Transcript(prompt.id, list(prompt.messages), parties)
    x.predictors = {role: p.name for role, p in (predictors or {}).items()}
    return x, tessy_sample(x, settings)


def synthesize(config: SynthConfig, prompts_path, out_path, limit: int | None = None, backends: dict | None = None,
               console=None, progress: bool = True) -> dict:
    """Run the whole job; return the summary (also printed when `console` is given)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prompts = read_prompts(prompts_path)[:limit] if limit else read_prompts(prompts_path)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = config_path_for(out)
    if out.exists() and cfg_path.exists():
        old = cfg_path.read_text()
        if old != config.to_yaml():
            raise ConfigMismatchError(
                f"{out} was written with another config ({cfg_path}); resume with that config or choose a new --out"
            )
    cfg_path.write_text(config.to_yaml())
    done = done_ids(out)
    todo = [p for p in prompts if p.id not in done]

    summary = {"samples": 0, "skipped": len(prompts) - len(todo), "out": str(out), "config": str(cfg_path)}
    if not todo:
        return _finish(summary, [], 0.0, console)
    backends = backends or load_backends(config)
    settings = settings_for(config, backends)
    predictors = {
        STUDENT: load_predictor(config.student_predictor, config.style_phrases),
        TEACHER: load_predictor(config.teacher_predictor, config.style_phrases),
    }
    scheduler = Scheduler(backends, predictors, max_in_flight=config.batch_size)
    writer = RecordWriter(out)
    records = []
    config_hash = config.hash()
    t0 = time.perf_counter()
    bar = Progress(TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, disable=not progress)

    def on_done(x: Transcript) -> None:
        record = x.record(config.method, config_hash)
        writer.write(record)
        records.append(record)
        bar.update(task, advance=1, info=f"last: {x.id} ({record['stats']['stop_reason']})")

    try:
        with bar:
            task = bar.add_task("synth", total=len(todo), info="")
            starts = (lambda p=p: start_sample(p, config, backends, settings, predictors) for p in todo)
            scheduler.run(starts, on_done)
    finally:
        writer.close()
    wall = time.perf_counter() - t0
    summary["timing"] = {"generate_s": round(scheduler.timing.generate_s, 2), "predict_s": round(scheduler.timing.predict_s, 3),
                         "mean_batch_rows": round(scheduler.timing.batch_rows / max(scheduler.timing.calls, 1), 2)}
    return _finish(summary, records, wall, console)


def summarize(records: list[dict], wall_s: float) -> dict:
    n = len(records)
    stats = [r["stats"] for r in records]
    kept = sum(s["think_tokens"] + s["answer_tokens"] for s in stats)
    generated = sum(sum(s["generated_tokens"].values()) for s in stats)
    both = sum(1 for r in records if {"student", "teacher"} <= {seg["source"] for seg in r["segments"]})
    return {
        "samples": n,
        "teacher_token_share": round(sum(s["teacher_token_share"] for s in stats) / n, 3) if n else 0.0,
        "switches_per_sample": round(sum(s["switches"] for s in stats) / n, 2) if n else 0.0,
        "mean_tokens": round(kept / n, 1) if n else 0.0,
        "records_with_both_sources": both,
        "kept_tokens_per_s": round(kept / wall_s, 2) if wall_s else 0.0,
        "generated_tokens_per_s": round(generated / wall_s, 2) if wall_s else 0.0,
        "stop_reasons": dict(Counter(s["stop_reason"] for s in stats)),
        "wall_s": round(wall_s, 1),
    }


def _finish(summary: dict, records: list[dict], wall: float, console) -> dict:
    summary.update(summarize(records, wall))
    if console is not None:
        from rich.table import Table

        table = Table(title="tessy synth", show_header=False)
        for key in ("samples", "skipped", "teacher_token_share", "switches_per_sample", "mean_tokens",
                    "records_with_both_sources", "kept_tokens_per_s", "generated_tokens_per_s", "wall_s"):
            table.add_row(key.replace("_", " "), str(summary.get(key, "")))
        table.add_row("stop reasons", ", ".join(f"{k}: {v}" for k, v in summary["stop_reasons"].items()) or "-")
        table.add_row("records", summary["out"])
        table.add_row("config", summary["config"])
        console.print(table)
    return summary
