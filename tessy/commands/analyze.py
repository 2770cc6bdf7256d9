"""`tessy analyze`: compare datasets on their shared prompts."""

from __future__ import annotations

from tessy.commands.common import OK, add_fields, given, rich_console


def add_parser(sub) -> None:
    """The `analyze` subparser of `sub`."""
    from tessy.dataset.analysis import AnalyzeJob

    p = sub.add_parser("analyze",
                       help="compare datasets on their shared prompts: lengths, teacher share, TF-IDF, student NLL")
    p.add_argument("files", nargs="+", help="records JSONL files (one per method)")
    add_fields(p, AnalyzeJob, skip=("files",), required=("out",))
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.progress import Progress

    from tessy.config import load_config
    from tessy.dataset.analysis import AnalyzeJob, analyze, load_datasets, print_table, student_nll
    from tessy.dataset.plots import write_report
    from tessy.models import load
    from tessy.predictors import load_predictor
    from tessy.typed import load as load_job

    job = load_job(AnalyzeJob, {}, "tessy analyze", given(args, AnalyzeJob))
    console = rich_console()
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
