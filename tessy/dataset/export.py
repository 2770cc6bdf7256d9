"""Records into the files other training tools read.

- `dialogs`: JSONL of `{"id_ddm", "dialogs"}`, the shape of the TESSY authors' released client (and
  chat messages, which XTuner reads). Only those two fields: the line reads back as a prompts file
  with the same id, and a second `id` would only repeat it.
- `sharegpt`: JSONL in LLaMA-Factory's sharegpt format: `conversations` of human/gpt turns, the system
  prompt in a top-level `system` (empty when there is none) and the record's `id`.
- `parquet`: columns id, messages (role/content structs), prompt, answer, method; TRL's SFTTrainer
  trains on the `messages` column.
- `hub`: a folder that `datasets.load_dataset(DIR)` reads and the Hugging Face Hub shows: that Parquet
  as `data/train-00000-of-00001.parquet`, the dataset card `README.md` (`tessy.dataset.card`), the run's config
  as `tessy_config.yaml` and `tessy filter`'s report as `filter.json` when there is one.
  `push_to_hub` uploads it.

Every record's id is written as a string, so a loader sees one type. Records with an `error` field
are skipped. `stats` and `segments` are left out: they describe how a sample was made, not what to
train on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tessy.engine.records import filter_path_for, json_lines

FORMATS = ("dialogs", "sharegpt", "parquet", "hub")
SHAREGPT_ROLES = {"user": "human", "assistant": "gpt"}


def chat(record: dict, where: str) -> list[dict]:
    """The record's messages as plain role/content dicts; they must end with the assistant's reply."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages or messages[-1].get("role") != "assistant":
        raise ValueError(f"{where}: `messages` must end with the assistant's reply")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def dialogs_row(record: dict, where: str) -> dict:
    return {"id_ddm": str(record["id"]), "dialogs": chat(record, where)}


def sharegpt_row(record: dict, where: str) -> dict:
    """LLaMA-Factory wants human turns at odd positions and gpt turns at even ones, and skips a
    conversation that breaks this with only a warning; so it is checked here, loudly."""
    messages = chat(record, where)
    system = messages.pop(0)["content"] if messages[0]["role"] == "system" else ""
    turns = []
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"{where}: sharegpt needs alternating user/assistant turns after an optional "
                             f"system message; message {i} is {m['role']!r}")
        turns.append({"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]})
    return {"conversations": turns, "system": system, "id": str(record["id"])}


def table_row(record: dict, where: str) -> dict:
    return {"id": str(record["id"]), "messages": chat(record, where), "prompt": record.get("prompt", ""),
            "answer": record.get("answer", ""), "method": record.get("method", "")}


def write_parquet(rows: list[dict], out: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("--format parquet needs pyarrow (pip install pyarrow; `datasets` brings it)") from None
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    # A fixed schema: an empty file still has its columns, and no type is left to inference.
    schema = pa.schema([("id", pa.string()), ("messages", pa.list_(message)), ("prompt", pa.string()),
                        ("answer", pa.string()), ("method", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out)


def export(records: str | Path, fmt: str, out: str | Path, license: str | None = None,
           repo: str | None = None) -> dict:
    """Write the records of `records` (tessy synth JSONL) to `out` in format `fmt` (`license` and
    `repo`: the hub card's). Returns {"written": n, "skipped": ids with an error, "format": fmt,
    "out": path}, and for `hub` also "files" (written, relative to `out`) and "warnings" (the card's)."""
    if fmt == "dialogs":
        convert = dialogs_row
    elif fmt == "sharegpt":
        convert = sharegpt_row
    elif fmt in ("parquet", "hub"):
        convert = table_row
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    if fmt == "hub":
        check_hub_folder(out)
    rows, kept, skipped = [], [], []
    for n, record in json_lines(records):
        if "error" in record:
            skipped.append(str(record.get("id", f"line {n}")))
            continue
        if "id" not in record:
            raise ValueError(f"{records}:{n}: missing field 'id'")
        rows.append(convert(record, f"{records}:{n}"))
        kept.append(record)
    summary = {"written": len(rows), "skipped": skipped, "format": fmt, "out": str(out)}
    if fmt == "hub":
        summary.update(write_hub_folder(Path(records), kept, rows, skipped, out, license, repo))
        return summary
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        write_parquet(rows, out)
    else:
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return summary


def hub_files() -> tuple[str, ...]:
    from tessy.dataset.card import CONFIG_FILE, DATA_FILE, FILTER_FILE

    return ("README.md", DATA_FILE, CONFIG_FILE, FILTER_FILE)


def check_hub_folder(out: Path) -> None:
    """The folder is uploaded whole, so it may hold only what an export writes (a file of someone
    else's would go public with it)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; --format hub writes a folder")
    if not out.is_dir():
        return
    ours = set(hub_files())
    found = (p.relative_to(out) for p in out.rglob("*") if p.is_file())
    # The Hub client keeps its own bookkeeping in .cache/huggingface and never uploads it.
    other = sorted(str(p) for p in found if str(p) not in ours and p.parts[:2] != (".cache", "huggingface"))
    if other:
        raise ValueError(f"{out} holds files an export did not write ({', '.join(other[:5])}"
                         f"{' ...' if len(other) > 5 else ''}); it is uploaded whole: choose a new or empty --out")


def write_hub_folder(records_path: Path, records: list[dict], rows: list[dict], skipped: list[str], out: Path,
                     license: str | None, repo: str | None) -> dict:
    """The Parquet, the card, the config and the filter report in `out`; {"files", "warnings"}."""
    from tessy.dataset.card import CONFIG_FILE, DATA_FILE, FILTER_FILE, dataset_card
    from tessy.engine.synth import config_path_for

    card, warnings = dataset_card(records_path, records, skipped, license, repo)  # first: it may refuse the input
    (out / DATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    write_parquet(rows, out / DATA_FILE)
    (out / "README.md").write_text(card, encoding="utf-8")
    files = ["README.md", DATA_FILE]
    for source, name in ((config_path_for(records_path), CONFIG_FILE), (filter_path_for(records_path), FILTER_FILE)):
        if source.is_file():
            shutil.copyfile(source, out / name)
            files.append(name)
        else:  # an earlier export's copy would describe another run
            (out / name).unlink(missing_ok=True)
    return {"files": files, "warnings": warnings}


class PushError(Exception):
    """The folder is written but did not reach the Hub."""


def check_push(repo: str) -> None:
    """Refuse a bad repo name or a missing token before any work (ValueError)."""
    try:
        from huggingface_hub import get_token
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        raise ValueError("--push-to-hub needs huggingface_hub (pip install huggingface_hub; `datasets` brings it)") \
            from None
    try:
        validate_repo_id(repo)
    except ValueError as e:  # HFValidationError
        raise ValueError(f"--push-to-hub {repo!r} is not a repo name (USER/NAME): {e}") from None
    if get_token() is None:
        raise ValueError("--push-to-hub: no Hugging Face token; set HF_TOKEN (a token with write access) or run "
                         "`hf auth login`")


def push_to_hub(folder: Path, repo: str, public: bool = False) -> str:
    """Create the dataset repo (private unless `public`; an existing one is kept as it is) and upload
    `folder` in one commit; return the repo's URL. Raises PushError, saying whether the Hub could not
    be reached or answered with an error."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo, repo_type="dataset", private=not public, exist_ok=True)
        api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=str(folder),
                          commit_message=f"tessy export ({folder.name})")
    except Exception as e:  # whatever the client raised, the folder is written and stays: say why, go on
        where = getattr(api, "endpoint", "the Hub")
        if unreachable(e):
            raise PushError(f"the Hub ({where}) cannot be reached: {e}") from e
        if isinstance(e, HfHubHTTPError):
            raise PushError(f"the Hub ({where}) refused: {e}") from e
        raise PushError(f"the upload to {where} failed: {type(e).__name__}: {e}") from e
    return str(url)


def unreachable(error: BaseException) -> bool:
    """No answer from the Hub (offline, refused, timed out), not an answer with an error.
    huggingface_hub's HTTP client changed with its versions (requests, httpx, httpx2), so the
    transport errors are known by their class names."""
    names = {c.__name__ for c in type(error).__mro__}
    return isinstance(error, (ConnectionError, TimeoutError)) or bool(
        names & {"TransportError", "ConnectError", "ConnectionError", "Timeout", "TimeoutException"})
