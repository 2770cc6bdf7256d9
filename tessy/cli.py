"""The `tessy` command. Heavy imports happen inside each command, so `--help` is instant.

Every command builds its configs through `tessy.typed.load`, so a value is checked the same way
whether it comes from a flag or from a config file, before any model loads. The exit codes a script
can rely on are `EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

OK = 0
INCOMPLETE = 1  # merge: ids that no shard wrote, or wrote twice; show: no such record; filter: no record kept
USAGE = 2  # a bad flag, config value or input file: refused before any work
FAILED = 3  # synth and merge: ids that ended in an errors file; eval: samples that could not be graded;
#   serve: the server exited with an error; export --push-to-hub: the folder did not reach the hub
INTERRUPTED = 130  # Ctrl-C; a rerun of the same command resumes

EXIT_CODES = {OK: "success", INCOMPLETE: "incomplete output", USAGE: "bad input, nothing run",
              FAILED: "samples failed (see the errors file), or a server or the hub failed", INTERRUPTED: "interrupted"}


def _console():
    from rich.console import Console

    return Console(stderr=False)


def add_fields(parser, cls, skip: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> None:
    """One flag per field of dataclass `cls` (`--max-length` for `max_length`), with the field's type,
    choices and help (as TRL's HfArgumentParser does), so each default and help text lives once, on
    the field. A flag left out is None: the config file, then the dataclass, give the value."""
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _flag_type(hints[f.name])
        if f.name in skip or kind is None:
            continue
        text = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING and f.default not in (None, "") and kind is not bool:
            text += f" (default: {f.default})"
        options = {"dest": f.name, "default": None, "help": text, "required": f.name in required}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
            if "choices" in f.metadata:
                options["choices"] = f.metadata["choices"]
        parser.add_argument("--" + f.name.replace("_", "-"), **options)


def _flag_type(hint):
    """The flag type of a field: int, float, str or bool (an optional one too); None for fields
    that only a config file can hold (mappings, lists, nested configs)."""
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [_flag_type(a) for a in typing.get_args(hint) if a is not type(None)]
        kinds = [k for k in kinds if k is not None]
        return kinds[0] if kinds else None
    return hint if hint in (int, float, str, bool) else None


def given(args, cls) -> dict:
    """The flags of `cls`'s fields that were given."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def cmd_synth(args) -> int:
    from tessy.config import SynthConfig, load_config
    from tessy.synth import synthesize

    # A role's URLs move only its generation to the servers; its tokenizer, profile and sampling stay.
    roles = {role: {"backend": "openai", "urls": list(urls)}
             for role, urls in (("student", args.student_url), ("teacher", args.teacher_url)) if urls}
    config = load_config(args.config, **given(args, SynthConfig), **roles)
    shard = None
    if args.shard:
        from tessy.shards import parse_shard

        shard = parse_shard(args.shard)
    summary = synthesize(config, args.prompts, args.out, limit=args.limit, console=_console(), shard=shard,
                         retry_errors=args.retry_errors)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    return _failed_ids(summary["errors_left"], summary["errors_file"], args.allow_errors)


def cmd_serve(args) -> int:
    import os
    import shlex

    from rich.console import Console
    from rich.markup import escape

    from tessy.serve import ServerError, ServerProcess

    console = _console()
    notes = Console(stderr=True) if args.print_command else console  # stdout carries the command line alone
    if args.engine == "vllm":
        from tessy.serve_vllm import find_vllm, model_for_vllm, vllm_command

        vllm = find_vllm(args.python)
        model, name = model_for_vllm(args.model, args.config)
        cmd, env = vllm_command(vllm, model, served_name=name, host=args.host, port=args.port,
                                parallel=args.parallel, max_model_len=args.max_model_len, dtype=args.dtype,
                                kv_cache_gib=args.kv_cache_gib, threads=args.threads,
                                extra=tuple(shlex.split(args.server_args or "")))
        what, slots = f"vLLM {vllm.version}" + (" (CPU build)" if vllm.cpu_build else ""), "sequences"
    else:
        from tessy.serve import f16_copy, find_llama_server, gguf_of, server_command
        from tessy.serve_weights import choose_weights

        gguf = gguf_of(args.model, args.config)
        binary = find_llama_server(args.llama_server)
        extra = tuple(shlex.split(args.server_args or ""))
        weights = "f16" if args.f16 else args.weights
        if weights == "auto":
            try:
                chosen = choose_weights(binary, gguf, threads=args.threads, parallel=args.parallel, extra=extra,
                                        measure=not args.print_command,
                                        say=lambda line: notes.print(line, soft_wrap=True))
            except Exception as e:  # noqa: BLE001  (a failed measurement serves the file as it is)
                why = e.reason if isinstance(e, ServerError) else str(e)  # one line: the server below echoes its output
                chosen = {"path": gguf, "why": f"[yellow]the measurement failed ({escape(why)}); --weights "
                                               "chooses[/]"}
            notes.print(f"weights: {chosen['path'].name} ({chosen['why']})", soft_wrap=True)
            gguf = chosen["path"]
        elif weights == "f16":
            notes.print(f"the F16 copy of {gguf.name} (written once) ...", soft_wrap=True)
            gguf = f16_copy(gguf)
        cmd = server_command(binary, gguf, host=args.host, port=args.port, parallel=args.parallel,
                             ctx_per_slot=args.ctx_per_slot, threads=args.threads, extra=extra)
        env, name, what, slots = {}, gguf.name, "llama-server", "slots"
    line = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(cmd)])
    if args.print_command:
        print(line)
        return OK
    console.print(f"[bold]{line}", soft_wrap=True)
    root = f"http://{args.host}:{args.port}"
    server = ServerProcess(cmd, root, env={**os.environ, **env} if env else None, name=what)
    code = server.serve(lambda: console.print(
        f"[green]serving {name} at {root}/v1[/] ({what}, {args.parallel} {slots}); give it to `tessy synth` as "
        f"--student-url or --teacher-url {root}/v1; Ctrl-C stops it", soft_wrap=True))
    if code is None:  # Ctrl-C or SIGTERM
        console.print(f"{what} stopped")
        return OK
    if code:
        console.print(f"[red]{what} exited with code {code}: {server.failure()}", soft_wrap=True)
        return FAILED
    console.print(f"{what} exited")
    return OK


def _failed_ids(n: int, where: str, allowed: bool) -> int:
    """FAILED when `n` ids failed for good, unless --allow-errors; the count goes to stderr."""
    if not n:
        return OK
    print(f"tessy: {n} id{'s' if n != 1 else ''} failed for good (in {where})"
          + ("" if allowed else f"; exit status {FAILED} (--allow-errors makes it 0)"), file=sys.stderr)
    return OK if allowed else FAILED


def cmd_merge(args) -> int:
    from rich.table import Table

    from tessy.shards import merge

    summary = merge(args.out, args.shards, args.prompts)
    table = Table(title="tessy merge", show_header=False)
    table.add_row("shards", str(len(summary["inputs"])))
    table.add_row("records", str(summary["records"]))
    for key in ("duplicates", "missing", "errors"):
        ids = list(summary[key])
        table.add_row(key, f"{len(ids)}"
                      + (f": {', '.join(ids[:10])}" + (" ..." if len(ids) > 10 else "") if ids else ""))
    if len(summary["config_hashes"]) > 1:
        table.add_row("config hashes",
                      "[red]" + ", ".join(summary["config_hashes"]) + " (shards made with different configs)")
    table.add_row("out", summary["out"])
    _console().print(table)
    failed = set(summary["errors"])
    if summary["duplicates"] or set(summary["missing"]) - failed:
        return INCOMPLETE
    return _failed_ids(len(failed), "the shards' errors files", args.allow_errors)


def cmd_export(args) -> int:
    from tessy.export import PushError, check_push, export, push_to_hub

    hub = args.format == "hub"
    for flag, value in (("--push-to-hub", args.push_to_hub), ("--license", args.license)):
        if value and not hub:
            raise ValueError(f"{flag} goes with --format hub (a folder with a dataset card)")
    if args.public and not args.push_to_hub:
        raise ValueError("--public goes with --push-to-hub")
    if args.push_to_hub:
        check_push(args.push_to_hub)  # a bad name or no token: refused before anything is written
    summary = export(args.records, args.format, args.out, **({"license": args.license, "repo": args.push_to_hub}
                                                              if hub else {}))
    skipped = summary["skipped"]
    line = f"wrote {summary['written']} records to {summary['out']} ({summary['format']})"
    if skipped:
        line += (f"; skipped {len(skipped)} with an error: {', '.join(skipped[:10])}"
                 + (" ..." if len(skipped) > 10 else ""))
    print(line)
    if not hub:
        return OK
    print(f"  files: {', '.join(summary['files'])} (README.md is the dataset card)")
    for warning in summary["warnings"]:
        print(f"  card warning: {warning}")
    if not args.push_to_hub:
        print(f"  not pushed; to push: tessy export {args.records} --format hub --out {args.out} "
              "--push-to-hub USER/NAME")
        return OK
    try:
        url = push_to_hub(Path(args.out), args.push_to_hub, args.public)
    except PushError as e:
        print(f"tessy: error: not pushed: {e}\n  the folder stays at {args.out}; push it later with this command "
              f"again, or `hf upload {args.push_to_hub} {args.out} . --repo-type dataset"
              f"{'' if args.public else ' --private'}`", file=sys.stderr)
        return FAILED
    print(f"  pushed to {url} ({'public' if args.public else 'private'} if it was new; an existing repo keeps "
          "its visibility)")
    return OK


def cmd_filter(args) -> int:
    from tessy.filter import FilterJob, filter_path_for, run_filter
    from tessy.typed import load

    job = load(FilterJob, {}, "tessy filter", {**given(args, FilterJob), "records": args.records})
    report = run_filter(job, console=_console())
    if not report["counts"]["kept"]:
        print(f"tessy: no record of {job.records} was kept, so {job.out} is not written (the reasons are in "
              f"{filter_path_for(job.out)}); exit status {INCOMPLETE}", file=sys.stderr)
        return INCOMPLETE
    return OK


def cmd_config(args) -> int:
    from tessy.config import ROLE_KEYS, Recipe, RoleConfig, SynthConfig
    from tessy.typed import flat_keys

    print("# tessy synth config. Save it, edit it, run: tessy synth --config FILE --prompts P --out O")
    # The synth config, then the predictor recipe's sections that the same file can hold.
    for config in (SynthConfig(), Recipe()):
        data = config.to_dict() if isinstance(config, SynthConfig) else dataclasses.asdict(config)
        for f in dataclasses.fields(config):
            print(f"\n# {f.metadata['help']}")
            if isinstance(getattr(config, f.name), RoleConfig):
                keys = flat_keys(RoleConfig)
                print(f"{f.name}:")
                for key in ROLE_KEYS:
                    print(f"  {key}: {json.dumps(data[f.name][key])}  # {keys[key][0].metadata['help']}")
            else:
                print(f"{f.name}: {json.dumps(data[f.name])}")
    return OK


def cmd_show(args) -> int:
    from tessy.records import read_records
    from tessy.show import print_record, record_html

    records = read_records(args.file)
    if args.id is not None:
        records = [r for r in records if str(r["id"]) == args.id]
        if not records:
            print(f"no record with id {args.id!r} in {args.file}", file=sys.stderr)
            return INCOMPLETE
    if not records:
        print(f"{args.file} holds no records", file=sys.stderr)
        return INCOMPLETE
    print_record(records[0], _console())
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(record_html(records if args.id is None else records[:1]))
        print(f"wrote {args.html}")
    return OK


def cmd_annotate(args) -> int:
    from tessy.annotate import AnnotateJob, run_annotate
    from tessy.config import command_section
    from tessy.typed import load

    sample = ["student", "teacher"] if args.sample == "both" else [args.sample] if args.sample else None
    # The config file's `annotate:` section gives the options no flag gives (configs/predictor-release.yaml).
    job = load(AnnotateJob, command_section(args.config, "annotate"),
               f"{args.config}: annotate" if args.config else "tessy annotate",
               {**given(args, AnnotateJob), "sample": sample})
    summary = run_annotate(job, _console())
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    return OK


def cmd_predictor_train(args) -> int:
    from tessy.config import command_section
    from tessy.predictors.learned import TrainConfig, train_predictor
    from tessy.typed import load

    config = load(TrainConfig, command_section(args.config, "predictor_train"),
                  f"{args.config}: predictor_train" if args.config else "tessy predictor train",
                  given(args, TrainConfig))
    meta = train_predictor(config, log=_console().print)
    saved = meta["epochs"][meta["saved_epoch"] - 1]
    print(f"saved {args.out} (role {meta['role']}, {meta['n_train']} train / {meta['n_eval']} held out, "
          f"{meta['train_s']} s), epoch {meta['saved_epoch']} ({meta['keep']}); held-out "
          f"{meta['metric']} {saved.get(meta['metric'], '-')}, style F1 {saved.get('style_f1', '-')}, "
          f"boundary exact {saved.get('boundary_exact', '-')}")
    return OK


def cmd_predictor_eval(args) -> int:
    from tessy.predictors import load_predictor
    from tessy.predictors.scoring import evaluate, results_table
    from tessy.segments import read_segments

    rows = read_segments(args.data, args.source)
    if not rows:
        raise ValueError(f"{args.data}: no annotated segments" + (f" from the {args.source}" if args.source else ""))
    results = {}
    for spec in args.predictor:
        predictor = load_predictor(spec)
        results[spec if spec == "lexicon" else predictor.name] = evaluate(predictor, rows)
    _console().print(results_table(results,
                                   f"{args.data} ({len(rows)} segments{', ' + args.source if args.source else ''})"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return OK


def cmd_sft(args) -> int:
    from tessy.sft import SFTRunConfig, load_sft_config, train

    train(load_sft_config(args.config, **given(args, SFTRunConfig)), console=_console())
    return OK


def cmd_eval(args) -> int:
    from tessy.config import ModelSpec
    from tessy.eval.evaluate import EvalConfig, evaluate
    from tessy.typed import load

    own = {k: v for k, v in given(args, EvalConfig).items() if k != "model"}  # --model names the ModelSpec's model
    config = load(EvalConfig, {"model": {"model": ""}}, "tessy eval", {**own, "model": given(args, ModelSpec)},
                  nested={"model": ModelSpec})
    summary = evaluate(config, out=args.out, console=_console())
    return _ungraded(summary.get("ungraded", 0), args.allow_errors)


def _ungraded(n: int, allowed: bool) -> int:
    if not n:
        return OK
    print(f"tessy: {n} sample{'s' if n != 1 else ''} could not be graded (see the failures in the summary)"
          + ("" if allowed else f"; exit status {FAILED} (--allow-errors makes it 0)"), file=sys.stderr)
    return OK if allowed else FAILED


def cmd_plot_loss(args) -> int:
    from tessy.sft import plot_loss

    print(f"wrote {plot_loss(args.logs, args.out, args.labels)}")
    return OK


def cmd_analyze(args) -> int:
    from rich.progress import Progress

    from tessy.analysis import AnalyzeJob, analyze, load_datasets, print_table, student_nll
    from tessy.config import load_config
    from tessy.models import load
    from tessy.plots import write_report
    from tessy.predictors import load_predictor
    from tessy.typed import load as load_job

    job = load_job(AnalyzeJob, {}, "tessy analyze", given(args, AnalyzeJob))
    console = _console()
    names = job.names.split(",") if job.names else None
    datasets = load_datasets(job.files, names)
    config = load_config(job.config)
    console.print(f"analyze: {len(datasets)} datasets, {len(next(iter(datasets)).records)} shared prompts; "
                  f"loading the student {config.student.spec.model}")
    spec = config.student.spec
    model, tokenizer = load(spec.model, dtype=spec.dtype, device=spec.device)
    if job.nll:
        predictor = load_predictor(job.predictor, config.style_phrases)
        renderer = config.student.renderer(tokenizer, config.profiles)
        total = sum(len(d.records) for d in datasets)
        bar = Progress(console=console)
        task = bar.add_task("student NLL", total=total)

        def nll(d):
            return student_nll(list(d.records.values()), model, renderer, predictor, job.batch_size,
                               progress=lambda n: bar.update(task, advance=n))

        with bar:
            result = analyze(datasets, tokenizer, nll, top_n=job.top_words)
        result["predictor"] = predictor.name
    else:
        result = analyze(datasets, tokenizer, None, top_n=job.top_words)
    result["student"] = spec.model
    files = write_report(result, job.out)
    print_table(result, console)
    console.print(f"wrote {files['json']}, {files['html']} and {len(files) - 2} PNGs")
    return OK


def _count(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def _json_object(text: str) -> dict:
    """An argparse type: a JSON object, such as '{"reasoning_effort": "high"}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object")
    return value


def _json_flag(parser, cls, name: str) -> None:
    """A flag for a mapping field of `cls` (which `add_fields` leaves to config files), given as a JSON
    object, with the field's own help."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    parser.add_argument("--" + name.replace("_", "-"), dest=name, type=_json_object, default=None,
                        metavar="JSON", help=f.metadata["help"] + " (a JSON object)")


def _allow_errors(parser, what: str) -> None:
    parser.add_argument("--allow-errors", action="store_true",
                        help=f"exit 0 even when {what}; without it the exit status is {FAILED}")


def build_parser() -> argparse.ArgumentParser:
    # The configs' modules are light (no torch): their fields become the flags.
    from tessy import __version__
    from tessy.analysis import AnalyzeJob
    from tessy.annotate import AnnotateJob
    from tessy.config import ModelSpec, SynthConfig
    from tessy.eval.evaluate import EvalConfig
    from tessy.export import FORMATS as EXPORT_FORMATS  # light: json and pathlib only
    from tessy.filter import FilterJob
    from tessy.predictors.learned import TrainConfig
    from tessy.sft import SFTRunConfig

    parser = argparse.ArgumentParser(
        prog="tessy",
        description="Teacher-student cooperation data synthesis (TESSY): the student writes the style tokens, "
        "the teacher writes the capability tokens.",
        epilog="exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"tessy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="synthesize an SFT dataset with the cooperative loop (Algorithm 1)")
    p.add_argument("--config", help="YAML config (see `tessy config`); default: the embedded models")
    p.add_argument("--prompts", required=True, help="JSONL with `id` and `prompt` or `messages`")
    p.add_argument("--out", required=True, help="output JSONL; the config is saved beside it; a rerun resumes")
    p.add_argument("--limit", type=_count, help="only the first N prompts")
    # The config's own fields (a flag overrides the --config file); roles' settings stay in the file.
    add_fields(p, SynthConfig, skip=("student", "teacher", "style_phrases", "profiles"))
    p.add_argument("--summary-json", help="also write the summary as JSON here")
    p.add_argument("--student-url", action="append", metavar="URL",
                   help="serve the student from this OpenAI-compatible server (base URL ending in /v1; repeat for "
                   "several); its tokenizer, profile and sampling stay from the config")
    p.add_argument("--teacher-url", action="append", metavar="URL", help="the same for the teacher")
    p.add_argument("--shard", metavar="i/N", help="run only shard i of N (0-based; split by a hash of the id)")
    p.add_argument("--retry-errors", action="store_true",
                   help="run only the ids in OUT's errors file that are not done yet")
    _allow_errors(p, "ids failed for good (written to OUT's errors file)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("serve",
                       help="serve a model with llama.cpp's llama-server or vLLM, set up for turn-taking requests")
    p.add_argument("model", help="student or teacher (that role's model in --config, default: the embedded one), "
                   "an embedded model's name, or a .gguf file; with --engine vllm also a Hugging Face directory or "
                   "hub name")
    p.add_argument("--engine", choices=["llama.cpp", "vllm"], default="llama.cpp",
                   help="llama.cpp's llama-server for a GGUF (default), or vLLM's OpenAI server")
    p.add_argument("--config", help="the synth config whose role names the model")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8010, help="(default: 8010)")
    p.add_argument("--parallel", type=_count, default=8,
                   help="requests batched at once: llama-server's slots, vLLM's --max-num-seqs (default: 8)")
    p.add_argument("--ctx-per-slot", type=_count, default=4096,
                   help="the context of each slot, in tokens: prompt plus what it writes (default: 4096)")
    p.add_argument("--threads", type=_count, help="CPU threads: llama-server's -t, vLLM's OMP_NUM_THREADS on a CPU "
                   "(default: the engine's, every core); give two servers on one machine their share each")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--weights", choices=["auto", "as-is", "f16"], default="auto",
                         help="llama.cpp: serve the GGUF as it is, or an F16 copy of a quantized one (the same "
                         "weights, dequantized once under TESSY_CACHE); auto (default) times both on this machine "
                         "once, for files under 1 GiB, and serves the faster (with --print-command it uses a kept "
                         "verdict and measures nothing)")
    weights.add_argument("--f16", action="store_true", help="the same as --weights f16")
    p.add_argument("--llama-server", help="the binary (default: $TESSY_LLAMA_SERVER, the one beside this Python, "
                   "then PATH)")
    p.add_argument("--python", help="vllm: the Python that has vLLM (default: $TESSY_VLLM_PYTHON, tessy's own, "
                   "then .venv-vllm/bin/python)")
    p.add_argument("--max-model-len", type=_count, default=4096,
                   help="vllm: the longest sequence, prompt plus what it writes (default: 4096)")
    p.add_argument("--dtype", help="vllm: the weights' dtype (default: float32 on a CPU without bfloat16 "
                   "instructions, else vLLM's)")
    p.add_argument("--kv-cache-gib", type=_count, default=2,
                   help="vllm on a CPU: the KV cache in GiB (VLLM_CPU_KVCACHE_SPACE; default: 2)")
    p.add_argument("--server-args", help="more arguments for the server, as one quoted string")
    p.add_argument("--print-command", action="store_true",
                   help="print the server's command line (with its environment) and exit")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("merge", help="join shard outputs by id; report missing and duplicated ids")
    p.add_argument("out", help="merged JSONL")
    p.add_argument("shards", nargs="+", help="shard output files")
    p.add_argument("--prompts", help="the prompts file: ids it has and no shard has are reported missing")
    _allow_errors(p, "the only missing ids are ones that failed in a shard (its errors file)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("export",
                       help="write records as the release's dialogs, LLaMA-Factory's sharegpt, or Parquet for TRL")
    p.add_argument("records", help="records JSONL (tessy synth or merge output)")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                   help="dialogs: JSONL {id_ddm, dialogs}; sharegpt: JSONL {conversations, system, id}; "
                   "parquet: columns id, messages, prompt, answer, method; hub: a folder for the Hugging Face Hub "
                   "(that Parquet under data/, a dataset card README.md, the config, the filter report)")
    p.add_argument("--out", required=True, help="file to write (hub: folder)")
    p.add_argument("--license", help="hub: the card's license, a Hub license id such as apache-2.0 (default: other, "
                   "with a note that the models' licenses apply)")
    p.add_argument("--push-to-hub", metavar="REPO", help="hub: then upload the folder to this dataset repo "
                   "(USER/NAME), with the token in HF_TOKEN; private unless --public")
    p.add_argument("--public", action="store_true", help="with --push-to-hub: create the repo public")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("filter", help="choose the records to publish: passed, not in a benchmark, not duplicated; "
                       "kept lines unchanged, every drop counted in KEPT.filter.json")
    p.add_argument("records", help="records JSONL (tessy synth or merge output)")
    add_fields(p, FilterJob, skip=("records", "decontaminate", "verdicts", "grade"), required=("out",))
    correct = p.add_mutually_exclusive_group()
    for name in ("verdicts", "grade"):
        f = next(f for f in dataclasses.fields(FilterJob) if f.name == name)
        correct.add_argument("--" + name, dest=name, metavar="RESULTS" if name == "verdicts" else "BENCHMARK",
                             help=f.metadata["help"])
    p.add_argument("--decontaminate", nargs="+", metavar="BENCHMARK",
                   help=next(f for f in dataclasses.fields(FilterJob) if f.name == "decontaminate").metadata["help"])
    p.set_defaults(func=cmd_filter)

    p = sub.add_parser("analyze",
                       help="compare datasets on their shared prompts: lengths, teacher share, TF-IDF, student NLL")
    p.add_argument("files", nargs="+", help="records JSONL files (one per method)")
    add_fields(p, AnalyzeJob, skip=("files",), required=("out",))
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("config", help="print the full default config, with comments")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("show", help="print a record with student and teacher spans in two colours")
    p.add_argument("file", help="records JSONL")
    p.add_argument("--id", help="the record to show (default: the first)")
    p.add_argument("--html", help="also write the records (or the one --id) as an HTML page")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("annotate", help="cut thinking segments and annotate their style spans (Table 2)")
    add_fields(p, AnnotateJob, skip=("records", "sample"), required=("out",))
    p.add_argument("--records", action="append", help="JSONL of synth records or generations (repeatable)")
    p.add_argument("--sample", choices=["student", "teacher", "both"],
                   help="also sample fresh thinking from these models")
    p.add_argument("--summary-json", help="also write the summary as JSON here")
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser("predictor", help="train and evaluate learned boundary predictors")
    psub = p.add_subparsers(dest="predictor_command", required=True)
    q = psub.add_parser("train", help="train a token classifier on annotated segments (B_S: --source student)")
    add_fields(q, TrainConfig, required=("data", "out"))
    q.add_argument("--config", help="a config file whose `predictor_train:` section gives the options no flag gives "
                                    "(configs/predictor-release.yaml)")
    q.set_defaults(func=cmd_predictor_train)
    q = psub.add_parser("eval", help="score predictors against annotated segments, side by side")
    q.add_argument("--data", required=True, help="annotated segments JSONL")
    q.add_argument("--predictor", action="append", required=True, help="lexicon or a checkpoint directory (repeatable)")
    q.add_argument("--source", choices=["student", "teacher"], help="only this role's segments")
    q.add_argument("--json", help="write {predictor: metrics} here")
    q.set_defaults(func=cmd_predictor_eval)
    p = sub.add_parser("sft", help="fine-tune the student on records with TRL (loss on assistant tokens only)")
    p.add_argument("--config", help="YAML of these options, keys with _ (configs/sft-qwen3-8b.yaml); flags override it")
    add_fields(p, SFTRunConfig)  # data, model and out: here or in --config
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("eval", help="pass@1 on humaneval or a benchmark JSONL; code runs in a sandbox")
    add_fields(p, EvalConfig, skip=("model", "urls"))
    p.add_argument("--out", help="directory for results.jsonl and summary.json")
    # The model: the same fields, help and defaults as a role of the synth config.
    model = p.add_argument_group("the model that samples (as a role of the synth config)")
    add_fields(model, ModelSpec)
    _json_flag(model, ModelSpec, "chat_template_kwargs")
    p.add_argument("--url", dest="urls", action="append", help="openai backend: a base URL ending in /v1 (repeatable)")
    _allow_errors(p, "samples could not be graded (a generation that failed, a sandbox that refused)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot-loss", help="overlay the loss curves of several SFT runs (paper, Figure 15)")
    p.add_argument("logs", nargs="+", help="train_log.json files written by tessy sft")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--labels", nargs="+", help="one label per log (default: the run directory names)")
    p.set_defaults(func=cmd_plot_loss)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tessy.prompts import PromptFileError

    try:
        return args.func(args)
    except (PromptFileError, FileNotFoundError, ValueError) as e:  # ConfigError, ConfigMismatchError included
        print(f"tessy: error: {e}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("tessy: interrupted (tessy synth, run again, resumes where it stopped)", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
