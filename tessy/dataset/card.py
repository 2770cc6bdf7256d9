"""The dataset card: the README.md of a `tessy export --format hub` folder.

A reader of a synthetic dataset has to trust how it was made, so the card says what the run's own
files say, and nothing else: the models and their profiles, the boundary predictors and the sha256 of
their checkpoints' weights, the config and its hash (and the hashes the records carry), the run's
figures (computed by `tessy.engine.synth`'s own summary), and `tessy filter`'s report when the records went
through it. What a file does not say (no config beside the records, a checkpoint not on this
machine) the card says is unknown.

The YAML front matter is the Hub's dataset-card metadata: license, task_categories, tags,
size_categories and `configs`, which points the default config's train split at the Parquet files.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import yaml

from tessy import __version__
from tessy.config import load_config
from tessy.engine.records import errors_path_for, filter_path_for, read_errors
from tessy.engine.synth import config_path_for, summarize

DATA_FILE = "data/train-00000-of-00001.parquet"
CONFIG_FILE = "tessy_config.yaml"
FILTER_FILE = "filter.json"
TAGS = ["tessy", "reasoning", "synthetic", "sft"]
DEFAULT_LICENSE = "other"
# The weights of a checkpoint directory (transformers' save_pretrained writes safetensors, older
# versions pytorch_model*.bin).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
# The Hub's buckets, by upper bound.
SIZE_CATEGORIES = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]
CITATION = """@misc{tessy2026,
  title         = {How to Fine-Tune a Reasoning Model? A Teacher-Student Cooperation Framework to Synthesize
                   Student-Consistent SFT Data},
  year          = {2026},
  eprint        = {2604.14164},
  archivePrefix = {arXiv},
}"""


def size_category(n: int) -> str:
    return next((name for bound, name in SIZE_CATEGORIES if n < bound), "n>1T")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def predictor_lines(spec, phrases: list[str] | None) -> list[str]:
    """What a predictor spec of the config is, in card lines: the lexicon and its phrase list, or a
    checkpoint directory with the sha256 of each weight file."""
    if spec == "lexicon":
        if phrases is None:
            return ["lexicon, the built-in phrase list (no checkpoint)"]
        digest = hashlib.sha256(json.dumps(phrases).encode()).hexdigest()
        return [f"lexicon, {len(phrases)} phrases of the config (sha256 of the list `{digest}`; no checkpoint)"]
    path = spec.get("path") if isinstance(spec, dict) else spec
    how = f" ({', '.join(f'{k}: {v}' for k, v in spec.items() if k != 'path')})" if isinstance(spec, dict) else ""
    if not isinstance(path, str) or not Path(path).is_dir():
        return [f"checkpoint `{path}`{how}: not found on the machine that exported this card, so not hashed"]
    weights = sorted({p for pattern in WEIGHT_PATTERNS for p in Path(path).rglob(pattern) if p.is_file()})
    if not weights:
        return [f"checkpoint `{path}`{how}: no weight files found in it"]
    return [f"checkpoint `{path}`{how}"] + [f"  - `{p.relative_to(path)}` sha256 `{sha256_file(p)}`"
                                           for p in weights]


def read_filter_report(path: Path) -> dict | None:
    """`tessy filter`'s report as a JSON object, or None when there is none; only `counts` is relied on."""
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(report, dict):
        raise ValueError(f"{path}: expected a JSON object (tessy filter's report)")
    return report


def front_matter(n: int, license: str) -> str:
    meta = {
        "license": license,
        "task_categories": ["text-generation"],
        "tags": TAGS,
        "size_categories": [size_category(n)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]


def dataset_card(records_path: Path, records: list[dict], skipped: list[str], license: str | None = None,
                 repo: str | None = None) -> tuple[str, list[str]]:
    """(the README.md text, the warnings it carries) for the exported `records` of `records_path`
    (`skipped`: ids of records with an error)."""
    license = license or DEFAULT_LICENSE
    warnings: list[str] = []
    config_path = config_path_for(records_path)
    config, config_error = None, None
    if config_path.is_file():
        try:
            config = load_config(config_path)
        except ValueError as e:  # a config another tessy version wrote: the card says so, the export goes on
            config_error = str(e)
    record_hashes = Counter(str(r.get("config_hash")) for r in records)
    if len(record_hashes) > 1:
        warnings.append(f"the records carry {len(record_hashes)} config hashes "
                        f"({', '.join(f'`{h}` x{n}' for h, n in record_hashes.most_common())}): "
                        "they were made with different configs")
    if config is not None and record_hashes and set(record_hashes) != {config.hash()}:
        warnings.append(f"the config's hash `{config.hash()}` is not the one the records carry: the config beside "
                        "the records is not the one that made them, or another tessy version hashed it")

    lines = [front_matter(len(records), license)]
    lines += [f"# {repo.split('/')[-1] if repo else records_path.stem}", "",
              f"Synthetic SFT data written by tessy {__version__}, an implementation of TESSY "
              "([arXiv 2604.14164](https://arxiv.org/abs/2604.14164)): a student and a teacher model take turns, the "
              "student writing the style spans and the teacher the capability spans, so that the data reads like the "
              "student it will train.", ""]
    if warnings:
        lines += ["> **Warning**", *(f"> - {w}" for w in warnings), ""]
    lines += ["## How to load", "", "```python", "from datasets import load_dataset", "",
              f'ds = load_dataset("{repo or "USER/NAME"}", split="train")',
              'print(ds[0]["messages"])  # [{"role": "user", ...}, {"role": "assistant", "content": "<think>..."}]',
              "```", "",
              "Columns: `id`, `messages` (role/content; the last is the assistant's reply, thinking included, which "
              "TRL's SFTTrainer trains on), `prompt`, `answer`, `method`.", ""]
    if license == DEFAULT_LICENSE:
        lines += ["License: not set (`other`). The text was written by the models below, whose licenses apply; "
                  "`tessy export --license` sets it.", ""]

    lines += ["## How it was made", ""]
    methods = Counter(str(r.get("method", "")) for r in records)
    rows = [("tessy", __version__), ("method", ", ".join(f"{m} ({n})" for m, n in methods.most_common()) or "-")]
    if config is not None:
        for role in ("student", "teacher"):
            model = getattr(config, role).spec
            rows.append((role, f"`{model.model}` (profile `{model.profile}`, backend {model.backend}, temperature "
                               f"{model.temperature}, top_p {model.top_p})"))
        rows += [("final answer", config.final_answer), ("k (tokens per turn)", str(config.k)),
                 ("config hash", f"`{config.hash()}`")]
    rows.append(("records' config hash", ", ".join(f"`{h}`" for h in record_hashes) or "-"))
    lines += _table(rows) + [""]
    if config is None:
        lines += [f"The config is unknown: {config_error or f'no `{config_path.name}` beside the records'}.", ""]

    lines += ["### Boundary predictors", ""]
    if config is not None:
        for role, paper in (("student", "B_S"), ("teacher", "B_T")):
            first, *more = predictor_lines(getattr(config, f"{role}_predictor"), config.style_phrases)
            lines += [f"- {paper} ({role}_predictor): {first}", *more]
    else:
        named = Counter(f"{role}: {name}" for r in records
                        for role, name in (r.get("stats", {}).get("predictors") or {}).items())
        lines += [f"- {name} (named by the records; checkpoint unknown)" for name in sorted(named)] or ["- unknown"]
    lines.append("")

    lines += ["## Figures", ""]
    errors = read_errors(errors_path_for(records_path))
    rows = [("records", str(len(records))), ("skipped (records with an error)", str(len(skipped)))]
    if errors:
        rows.append((f"ids in `{errors_path_for(records_path).name}`", str(len(errors))))
    try:
        figures = summarize(records, 0.0)
    except (KeyError, TypeError, AttributeError) as e:  # records without tessy synth's stats
        lines += _table(rows) + ["", f"The records lack the stats the figures need ({e!r}).", ""]
    else:
        per_kept = ", ".join(f"{k} {v}" for k, v in figures["generated_per_kept"].items() if v is not None)
        rows += [("teacher token share (mean)", str(figures["teacher_token_share"])),
                 ("switches per sample", str(figures["switches_per_sample"])),
                 ("tokens per record (mean)", str(figures["mean_tokens"])),
                 ("generated per kept token", per_kept or "-"),
                 ("stop reasons", ", ".join(f"{k}: {v}" for k, v in figures["stop_reasons"].items()) or "-")]
        lines += _table(rows) + [""]

    report = read_filter_report(filter_path_for(records_path))
    if report is not None:
        lines += ["## Filter and decontamination (`tessy filter`)", ""]
        counts = report.get("counts") if isinstance(report.get("counts"), dict) else {}
        dropped = counts.get("dropped") if isinstance(counts.get("dropped"), dict) else {}
        rows = [("read", str(counts.get("read", "-"))), ("kept", str(counts.get("kept", "-")))]
        rows += [(f"dropped: {reason}", str(n)) for reason, n in dropped.items()]
        lines += _table(rows) + [""]
        if "settings" in report:
            lines += ["Settings:", "", "```json", json.dumps(report["settings"], indent=2, ensure_ascii=False),
                      "```", ""]
        lines += [f"The whole report is `{FILTER_FILE}`.", ""]
        if isinstance(counts.get("kept"), int) and counts["kept"] != len(records) + len(skipped):
            warnings.append(f"the filter report kept {counts['kept']} records; the records file holds "
                            f"{len(records) + len(skipped)}")
            lines += [f"> **Warning**: {warnings[-1]}.", ""]

    lines += ["## Config", ""]
    if config_path.is_file():
        lines += [f"`{CONFIG_FILE}` is the config the run saved beside its records:", "", "<details>",
                  f"<summary>{CONFIG_FILE}</summary>", "", "```yaml",
                  config_path.read_text(encoding="utf-8").rstrip("\n"), "```", "", "</details>", ""]
    else:
        lines += ["Unknown: the records came without a config.", ""]
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines), warnings
