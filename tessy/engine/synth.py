"""`tessy synth`: read prompts, run the cooperative loop over them, append records, summarise."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

from tessy.config import SynthConfig, load_config
from tessy.engine import methods
from tessy.engine.loop import LoopSettings
from tessy.engine.meter import Meter
from tessy.engine.records import RecordWriter, compact_errors, done_ids, errors_path_for
from tessy.engine.scheduler import Scheduler
from tessy.engine.shards import select_shard
from tessy.engine.streaming import role_streams
from tessy.engine.transcript import Party, Transcript
from tessy.engine.variety import compression_ratio, thinking_text
from tessy.predictors import load_predictor
from tessy.prompts import Prompt, read_prompts
from tessy.roles import STUDENT, TEACHER


class ConfigMismatchError(ValueError):
    """An output written with another config: resuming would mix two kinds of records."""


def config_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".config.yaml")


def load_backends(config: SynthConfig) -> dict:
    from tessy.backends import make_backend

    return {STUDENT: make_backend(config.student, STUDENT), TEACHER: make_backend(config.teacher, TEACHER)}


def same_vocabulary(a, b) -> bool:
    return a is b or a.get_vocab() == b.get_vocab()


def settings_for(config: SynthConfig, backends: dict) -> LoopSettings:
    return LoopSettings.of(config, same_vocabulary(backends[STUDENT].tokenizer, backends[TEACHER].tokenizer))


def start_sample(prompt: Prompt, config: SynthConfig, backends: dict, settings: LoopSettings,
                 predictors: dict | None = None,
                 mix: dict[str, str] | None = None):
    """A new transcript for `prompt`, each model's prompt rendered by its role's renderer (profile,
    tokenizer and `chat_template_kwargs`), and the generator of `config.method` over it (`mix`:
    teacher-mix's prompt id -> source)."""
    parties = {}
    for role in (STUDENT, TEACHER):
        backend = backends[role]
        renderer = getattr(config, role).renderer(backend.tokenizer, config.profiles)
        text, used_template = renderer.render(list(prompt.messages))
        session = backend.start(text, add_special_tokens=not used_template, key=f"{prompt.id}/{role}")
        parties[role] = Party(backend, renderer.profile, session, renderer)
    x = Transcript(prompt.id, list(prompt.messages), parties)
    if config.method == "tessy":
        x.predictors = {role: p.name for role, p in (predictors or {}).items()}
    source = (mix or {}).get(prompt.id, STUDENT)
    return x, methods.STEPS[config.method](x, settings, config.score_candidates, source)


def synthesize(config: SynthConfig, prompts_path, out_path, limit: int | None = None, backends: dict | None = None,
               console=None, progress: bool = True, shard: tuple[int, int] | None = None,
               retry_errors: bool = False) -> dict:
    """Run the whole job; return the summary (also printed when `console` is given).

    `shard` (i, n) runs only shard i of n (see `tessy.engine.shards`). A sample whose backend failed for
    good goes to the errors file beside the output, not into it; a later run skips its id unless
    `retry_errors`, which runs only those ids."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column

    prompts = read_prompts(prompts_path)[:limit] if limit else read_prompts(prompts_path)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = config_path_for(out)
    if out.exists() and cfg_path.exists():
        if load_config(cfg_path).hash() != config.hash():  # where the servers are is no part of it
            raise ConfigMismatchError(
                f"{out} was written with another config ({cfg_path}); resume with that config or choose a new --out"
            )
    cfg_path.write_text(config.to_yaml())
    done = done_ids(out)
    errors_path = errors_path_for(out)
    failed = compact_errors(errors_path, done)  # ids whose last try failed for good
    mine = select_shard(prompts, *shard) if shard else prompts
    todo = [p for p in mine if p.id not in done and (p.id in failed) == retry_errors]

    summary = {"samples": 0, "skipped": len(mine) - len(todo), "out": str(out), "config": str(cfg_path),
               "errors": 0, "errors_left": len(failed), "errors_file": str(errors_path)}
    if not todo:
        return _finish(summary, [], 0.0, console)
    # The predictors first: a wrong path should fail before the generators take minutes to load.
    predictors = {role: load_predictor(getattr(config, f"{role}_predictor"), config.style_phrases, f"{role}_predictor")
                  for role in (STUDENT, TEACHER)}
    opened = backends is None  # what synth opens, it closes
    backends = backends or load_backends(config)
    settings = settings_for(config, backends)
    for role in (STUDENT, TEACHER):  # refuses a stream_cuts: true that the backend cannot honour
        role_streams(role, getattr(config, role).turn.stream_cuts, backends[role], predictors[role],
                     getattr(config, role).spec.backend)
    scheduler = Scheduler(backends, predictors, max_in_flight=config.in_flight or 2 * config.batch_size,
                          driver=config.driver, chunk_tokens=settings.longest_turn(),
                          stream_cuts={role: getattr(config, role).turn.stream_cuts for role in (STUDENT, TEACHER)},
                          stream_every=config.stream_every,
                          warm_roles=(STUDENT, TEACHER) if config.method == "tessy" and config.warm_prompts else ())
    writer = RecordWriter(out)
    records = []
    config_hash = config.hash()
    t0 = time.perf_counter()
    bar = Progress(TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(),
                   # the live figures fold onto more lines in a narrow terminal, leaving the bar and ETA whole
                   TextColumn("{task.fields[info]}", table_column=Column(ratio=1, overflow="fold")),
                   console=console, disable=not progress)
    meter = Meter(len(todo), {role: getattr(config, role).endpoint.price_per_million_tokens
                              for role in (STUDENT, TEACHER)},
                  scheduler.timing.roles)

    def on_done(x: Transcript) -> None:
        record = x.record(config.method, config_hash)
        writer.write(record)
        records.append(record)
        meter.add(record)
        bar.update(task, advance=1, info=meter.line())

    error_writer = None

    def on_error(x: Transcript, error) -> None:
        nonlocal error_writer
        error_writer = error_writer or RecordWriter(errors_path)
        before = failed.get(x.id, {}).get("attempts", 0)
        error_writer.write({"id": x.id, "error": str(error), "attempts": before + error.attempts,
                            "endpoint": error.endpoint,
                            "rounds": x.rounds, "method": config.method, "config_hash": config_hash})
        summary["errors"] += 1
        meter.add(None)
        bar.update(task, advance=1, info=meter.line())

    # The engines' own counters (vLLM's /metrics) before and after, where a backend reads them.
    counted = {role: backends[role].server_counters() for role in (STUDENT, TEACHER)}
    try:
        with bar:
            task = bar.add_task("synth", total=len(todo), info="")
            # Teacher-Mix splits the whole prompt set 1:1, so a resumed run keeps the same split.
            mix = config.method == "teacher-mix"
            extra = {"mix": methods.mix_sources([p.id for p in prompts], config.mix_seed)} if mix else {}
            starts = (lambda p=p: start_sample(p, config, backends, settings, predictors, **extra) for p in todo)
            scheduler.run(starts, on_done, on_error)
    finally:
        writer.close()
        if error_writer is not None:
            error_writer.close()
        counted = {role: (before, backends[role].server_counters()) for role, before in counted.items() if before}
        if opened:
            for backend in backends.values():
                backend.close()
        summary["errors_left"] = len(compact_errors(errors_path, done_ids(out)))
    wall = time.perf_counter() - t0
    timing = scheduler.timing
    summary["driver"] = scheduler.driver_name()
    summary["timing"] = {"generate_s": round(timing.generate_s, 2), "predict_s": round(timing.predict_s, 3),
                         "predictor_busy_share": round(timing.predict_s / wall, 4) if wall else 0.0}
    if timing.calls:
        summary["timing"]["mean_batch_rows"] = round(timing.batch_rows / timing.calls, 2)
    summary["roles"] = {role: stats.summary(wall) for role, stats in timing.roles.items()}
    for role, (before, after) in counted.items():
        if after:
            summary["roles"][role]["server"] = server_figures(before, after)
    for role in summary["roles"]:  # how the servers held a role back, where its backend says (openai)
        throttling = backends[role].throttling()
        if throttling is not None:
            summary["roles"][role]["throttling"] = throttling
    summary["stream_cuts"] = {role: scheduler.streams(role) for role in (STUDENT, TEACHER)}
    if meter.cost():
        summary["cost"] = meter.cost()
    return _finish(summary, records, wall, console)


def server_figures(before: dict[str, float], after: dict[str, float]) -> dict:
    """What a role's servers counted over the run, by their own `/metrics`: the prefix-cache hit rate
    (cached prompt tokens over prompt tokens looked up), prompt and generated tokens."""
    moved = {k: after[k] - before.get(k, 0.0) for k in after}
    queries = moved.get("prefix_cache_queries", 0.0)
    return {"prefix_cache_hit_rate": round(moved.get("prefix_cache_hits", 0.0) / queries, 3) if queries else None,
            "prompt_tokens": int(moved.get("prompt_tokens", 0)),
            "generated_tokens": int(moved.get("generated_tokens", 0))}


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
        # Median zlib ratio of the thinking (tessy/dataset/analysis.py): low when samples loop, guard or not.
        "thinking_variety": round(statistics.median(compression_ratio(thinking_text(r)) for r in records), 3)
        if n else 0.0,
        # What a turn costs: tokens the models generated for every token the records keep, per role
        # (the student's spans are mostly cut early, so its rate is the higher one).
        "generated_per_kept": generated_per_kept(records),
        "kept_tokens_per_s": round(kept / wall_s, 2) if wall_s else 0.0,
        "generated_tokens_per_s": round(generated / wall_s, 2) if wall_s else 0.0,
        "stop_reasons": dict(Counter(s["stop_reason"] for s in stats)),
        "wall_s": round(wall_s, 1),
    }


def generated_per_kept(records: list[dict]) -> dict[str, float | None]:
    """Generated tokens over kept tokens, for each role and for both together; None where a role
    kept nothing."""
    generated = Counter()
    kept = Counter()
    for r in records:
        generated.update(r["stats"]["generated_tokens"])
        for seg in r["segments"]:
            kept[seg["source"]] += seg["n_tokens"]
    out = {role: round(generated[role] / kept[role], 3) if kept[role] else None for role in (STUDENT, TEACHER)}
    total = sum(kept.values())
    out["all"] = round(sum(generated.values()) / total, 3) if total else None
    return out


def _finish(summary: dict, records: list[dict], wall: float, console) -> dict:
    summary.update(summarize(records, wall))
    if console is not None:
        from rich.table import Table

        table = Table(title="tessy synth", show_header=False)
        for key in ("samples", "skipped", "errors", "teacher_token_share", "switches_per_sample", "mean_tokens",
                    "records_with_both_sources", "thinking_variety", "kept_tokens_per_s", "generated_tokens_per_s",
                    "wall_s"):
            table.add_row(key.replace("_", " "), str(summary.get(key, "")))
        if summary.get("generated_per_kept", {}).get("all") is not None:
            table.add_row("generated per kept token",
                          ", ".join(f"{k} {v}" for k, v in summary["generated_per_kept"].items() if v is not None))
        table.add_row("stop reasons", ", ".join(f"{k}: {v}" for k, v in summary["stop_reasons"].items()) or "-")
        if "cost" in summary:
            table.add_row("cost", f"{summary['cost']['spent']:.4g} (" + ", ".join(
                f"{role} {r['cost']:.4g}: {r['input_tokens']} input tokens, {r['cached_input_tokens']} of them cached, "
                f"{r['output_tokens']} output" for role, r in summary["cost"]["roles"].items()) + ")")
        if "driver" in summary:
            table.add_row("driver", summary["driver"])
            for role, r in summary.get("roles", {}).items():
                hit = (f", prefix-cache hit rate {r['prefix_cache_hit_rate']}, "
                       f"{r['prompt_tokens_computed_per_request']} prompt tokens computed per request"
                       if "prefix_cache_hit_rate" in r else "")
                early = f", {r['stopped_at_cut']} stopped at their cut" if r.get("stopped_at_cut") else ""
                warm = f", {r['warm_ups']} warm-ups" if r.get("warm_ups") else ""
                if r.get("server", {}).get("prefix_cache_hit_rate") is not None:
                    hit += f", the server's own prefix-cache hit rate {r['server']['prefix_cache_hit_rate']}"
                if r.get("reusable_prompt_share") is not None and (hit or r.get("server")):
                    hit += f" (reusable {r['reusable_prompt_share']}: the prompt tokens it had just seen)"
                table.add_row(f"{role} requests",
                              f"{r['requests']} (mean in flight {r['mean_in_flight']}{hit}{early}{warm})")
                if r.get("throttling", {}).get("throttled"):
                    t = r["throttling"]
                    table.add_row(f"{role} throttled", f"{t['throttled']} 429/503 answers, waited "
                                  f"{t['retry_after_wait_s']:g} s on Retry-After, concurrency went down to "
                                  f"{t['lowest_limit']} of {t['concurrency']}")
            table.add_row("predictor busy", f"{summary['timing']['predictor_busy_share']:.1%} of the run")
        table.add_row("records", summary["out"])
        table.add_row("config", summary["config"])
        if summary.get("errors_left"):
            table.add_row("failed ids", f"[red]{summary['errors_left']} in {summary['errors_file']}; "
                                        "rerun with --retry-errors")
        console.print(table)
    return summary
