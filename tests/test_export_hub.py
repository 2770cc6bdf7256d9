"""`tessy export --format hub` and `--push-to-hub` (tessy/dataset/export.py, tessy/dataset/card.py), on the example
report's real synth output (examples/report/data/tessy.jsonl and the config saved beside it).

No test reaches the real Hub: the push goes to a closed port on 127.0.0.1, or to a fake hub in a
thread that answers the create-repo call and refuses the upload."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tessy.cli import FAILED, OK, USAGE, main
from tessy.config import load_config
from tessy.dataset.card import DATA_FILE, size_category
from tessy.engine.synth import generated_per_kept

datasets = pytest.importorskip("datasets")
huggingface_hub = pytest.importorskip("huggingface_hub")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "report" / "data"
FILTER_REPORT = {"input": "runs/demo/records.jsonl", "output": "runs/demo/kept.jsonl",
                 "counts": {"read": 20, "kept": 15, "dropped": {"contaminated": 3, "repetition": 2}},
                 "settings": {"benchmarks": ["humaneval"], "ngram": 13},
                 "dropped": [{"id": "x", "reason": "contaminated"}]}


@pytest.fixture
def run(tmp_path) -> Path:
    """A copy of a real synth output: records.jsonl with its records.config.yaml."""
    shutil.copyfile(EXAMPLE / "tessy.jsonl", tmp_path / "records.jsonl")
    shutil.copyfile(EXAMPLE / "tessy.config.yaml", tmp_path / "records.config.yaml")
    return tmp_path / "records.jsonl"


@pytest.fixture
def kept(run) -> Path:
    """`tessy filter`'s output as its contract has it: kept.jsonl, kept.config.yaml, kept.filter.json."""
    lines = run.read_text().splitlines(keepends=True)
    out = run.with_name("kept.jsonl")
    out.write_text("".join(lines[:15]))
    shutil.copyfile(run.with_name("records.config.yaml"), run.with_name("kept.config.yaml"))
    run.with_name("kept.filter.json").write_text(json.dumps(FILTER_REPORT))
    return out


def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def export(*argv) -> int:
    return main(["export", *map(str, argv)])


def card_of(folder: Path) -> tuple[dict, str]:
    """(the front matter, the body) of the folder's README.md."""
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    meta, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(meta), body


def test_the_folder_loads_with_datasets(tmp_path, run, capsys):
    out = tmp_path / "hub"
    assert export(run, "--format", "hub", "--out", out) == OK
    said = capsys.readouterr().out
    assert f"wrote 20 records to {out} (hub)" in said and "not pushed" in said
    assert (out / DATA_FILE).is_file() and (out / "tessy_config.yaml").read_text() == \
        run.with_name("records.config.yaml").read_text()
    assert not (out / "filter.json").exists()  # the records did not go through tessy filter
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))
    records = records_of(run)
    assert ds.num_rows == len(records) and ds["id"] == [str(r["id"]) for r in records]
    assert ds["messages"] == [r["messages"] for r in records]
    assert set(ds.column_names) == {"id", "messages", "prompt", "answer", "method"}  # the parquet schema


def test_the_front_matter_is_the_hubs(tmp_path, run):
    out = tmp_path / "hub"
    assert export(run, "--format", "hub", "--out", out, "--license", "apache-2.0") == OK
    meta, _ = card_of(out)
    assert meta["license"] == "apache-2.0" and meta["task_categories"] == ["text-generation"]
    assert set(meta["tags"]) >= {"tessy", "reasoning", "synthetic", "sft"}
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]


def test_the_card_says_how_the_data_was_made(tmp_path, run):
    out = tmp_path / "hub"
    assert export(run, "--format", "hub", "--out", out) == OK
    meta, card = card_of(out)
    config = load_config(run.with_name("records.config.yaml"))
    records = records_of(run)
    assert meta["license"] == "other" and "whose licenses apply" in card
    assert config.hash() == records[0]["config_hash"] and f"`{config.hash()}`" in card
    assert "Warning" not in card  # the config beside the records is the one they were written with
    assert "`smollm2-135m-instruct` (profile `plain`" in card and "`gemma3-270m` (profile `plain`" in card
    assert "- B_S (student_predictor): lexicon, the built-in phrase list (no checkpoint)" in card
    # The figures are tessy synth's own: the summary the run saved, by the same functions.
    figures = json.loads((EXAMPLE / "tessy.summary.json").read_text())
    assert figures["generated_per_kept"] == generated_per_kept(records)
    stops = Counter(r["stats"]["stop_reason"] for r in records)
    assert f"| stop reasons | {', '.join(f'{k}: {v}' for k, v in stops.items())} |" in card
    assert "| records | 20 |" in card and f"| teacher token share (mean) | {figures['teacher_token_share']} |" in card
    per_kept = figures["generated_per_kept"]
    assert f"generated per kept token | student {per_kept['student']}, teacher {per_kept['teacher']}, " \
           f"all {per_kept['all']} |" in card
    assert 'load_dataset("USER/NAME", split="train")' in card and "2604.14164" in card
    assert "Filter and decontamination" not in card


def test_the_card_reports_the_filter(tmp_path, kept, capsys):
    out = tmp_path / "hub"
    assert export(kept, "--format", "hub", "--out", out) == OK
    assert "filter.json" in capsys.readouterr().out
    assert json.loads((out / "filter.json").read_text()) == FILTER_REPORT
    _, card = card_of(out)
    section = card.split("## Filter and decontamination (`tessy filter`)")[1].split("\n## ")[0]
    assert "| read | 20 |" in section and "| kept | 15 |" in section
    assert "| dropped: contaminated | 3 |" in section and "| dropped: repetition | 2 |" in section
    assert '"ngram": 13' in section and "Warning" not in section  # 15 kept, 15 in the file
    assert "| records | 15 |" in card


def test_a_filter_report_with_only_counts_is_enough(tmp_path, kept):
    kept.with_name("kept.filter.json").write_text(json.dumps({"counts": {"read": 20, "kept": 14}}))
    out = tmp_path / "hub"
    assert export(kept, "--format", "hub", "--out", out) == OK
    _, card = card_of(out)
    assert "| kept | 14 |" in card and "the filter report kept 14 records; the records file holds 15" in card


@pytest.mark.parametrize("report", ["[1, 2]", "{not json"])
def test_a_broken_filter_report_is_refused(tmp_path, kept, report, capsys):
    kept.with_name("kept.filter.json").write_text(report)
    assert export(kept, "--format", "hub", "--out", tmp_path / "hub") == USAGE
    assert "kept.filter.json" in capsys.readouterr().err and not (tmp_path / "hub").exists()


def test_without_a_config_the_card_says_it_is_unknown(tmp_path, run):
    run.with_name("records.config.yaml").unlink()
    out = tmp_path / "hub"
    assert export(run, "--format", "hub", "--out", out) == OK
    _, card = card_of(out)
    assert "The config is unknown: no `records.config.yaml` beside the records." in card
    assert "- student: lexicon (named by the records; checkpoint unknown)" in card
    assert not (out / "tessy_config.yaml").exists()


def test_checkpoints_are_hashed_and_missing_ones_named(tmp_path, run):
    import hashlib

    checkpoint = tmp_path / "bs"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    (checkpoint / "tessy_predictor.json").write_text("{}")
    config = yaml.safe_load(run.with_name("records.config.yaml").read_text())
    config["student_predictor"] = str(checkpoint)
    config["teacher_predictor"] = {"path": str(tmp_path / "gone"), "labels": "next-token"}
    run.with_name("records.config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "hub"
    assert export(run, "--format", "hub", "--out", out) == OK
    _, card = card_of(out)
    assert f"- B_S (student_predictor): checkpoint `{checkpoint}`" in card
    assert f"`model.safetensors` sha256 `{hashlib.sha256(b'weights').hexdigest()}`" in card
    assert f"- B_T (teacher_predictor): checkpoint `{tmp_path / 'gone'}` (labels: next-token): not found" in card


def test_a_config_that_is_not_the_records_one_is_flagged(tmp_path, run):
    from tessy.config import load_config

    saved = run.with_name("records.config.yaml")
    saved.write_text(load_config(saved, k=10).to_yaml())  # another config beside the same records
    out = tmp_path / "hub"
    assert export(run, "--format", "hub", "--out", out) == OK
    _, card = card_of(out)
    assert "is not the one the records carry" in card.split("## How to load")[0]


def test_records_with_several_config_hashes_are_flagged(tmp_path, run):
    records = records_of(run)
    records[0]["config_hash"] = "0000000000000000"
    run.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "hub"
    assert export(run, "--format", "hub", "--out", out) == OK
    _, card = card_of(out)
    assert "the records carry 2 config hashes" in card and "`0000000000000000` x1" in card


def test_an_export_again_replaces_its_own_files_only(tmp_path, kept, run, capsys):
    out = tmp_path / "hub"
    assert export(kept, "--format", "hub", "--out", out) == OK
    assert (out / "filter.json").exists()
    assert export(run, "--format", "hub", "--out", out) == OK  # the same folder, records without a filter
    assert not (out / "filter.json").exists() and "| records | 20 |" in card_of(out)[1]
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert export(run, "--format", "hub", "--out", out) == USAGE
    assert "notes.txt" in capsys.readouterr().err


@pytest.mark.parametrize("n, category", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (123_456, "100K<n<1M"),
                                         (10**12, "n>1T")])
def test_size_category(n, category):
    assert size_category(n) == category


# --- refused before any work -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--format", "parquet", "--push-to-hub", "me/demo"], "--push-to-hub goes with --format hub"),
    (["--format", "sharegpt", "--license", "mit"], "--license goes with --format hub"),
    (["--format", "hub", "--public"], "--public goes with --push-to-hub"),
    (["--format", "hub", "--push-to-hub", "me--demo"], "is not a repo name"),
    (["--format", "hub", "--push-to-hub", "datasets/me/demo"], "is not a repo name"),
    (["--format", "hub", "--push-to-hub", "me/demo.git"], "is not a repo name"),
    (["--format", "hub", "--push-to-hub", "me/bad name"], "is not a repo name"),
])
def test_bad_flags_are_refused_before_anything_is_written(tmp_path, run, argv, message, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    out = tmp_path / "out"
    assert export(run, *argv, "--out", out) == USAGE
    assert message in capsys.readouterr().err and not out.exists()


def test_no_token_is_refused_before_anything_is_written(tmp_path, run, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    out = tmp_path / "hub"
    assert export(run, "--format", "hub", "--out", out, "--push-to-hub", "me/demo") == USAGE
    assert "no Hugging Face token; set HF_TOKEN" in capsys.readouterr().err and not out.exists()


# --- the push ----------------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_leaves_the_folder(tmp_path, run):
    """As a user runs it: the command in a fresh process, huggingface_hub reading HF_ENDPOINT as it
    starts."""
    out = tmp_path / "hub"
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_TOKEN": "hf_fake",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tessy.cli", "export", str(run), "--format", "hub", "--out", str(out),
                           "--push-to-hub", "me/demo"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == FAILED, done.stderr
    assert "cannot be reached" in done.stderr and f"the folder stays at {out}" in done.stderr
    assert "hf upload me/demo" in done.stderr and "--private" in done.stderr
    assert f"wrote 20 records to {out} (hub)" in done.stdout
    assert (out / "README.md").is_file() and (out / DATA_FILE).is_file()
    assert datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf")).num_rows == 20


class FakeHub(BaseHTTPRequestHandler):
    """Answers create-repo (and records its body); refuses everything else with a 403."""

    created: list[dict] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/api/repos/create":
            self.created.append(json.loads(body))
            self.reply(200, {"url": f"http://{self.headers['Host']}/datasets/me/demo", "name": "me/demo"})
        else:
            self.reply(403, {"error": "the fake hub takes no uploads"})

    do_GET = do_PUT = do_POST

    def reply(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    FakeHub.created = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # huggingface_hub read HF_ENDPOINT when it was imported; HfApi() takes the endpoint from here.
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    yield FakeHub.created
    server.shutdown()
    server.server_close()


def private(body: dict) -> bool:
    """The create-repo body's visibility (newer huggingface_hub sends `visibility`, older `private`)."""
    return body["visibility"] == "private" if "visibility" in body else body["private"]


@pytest.mark.parametrize("public", [False, True])
def test_the_repo_is_private_unless_public(tmp_path, run, fake_hub, public, capsys):
    out = tmp_path / "hub"
    code = export(run, "--format", "hub", "--out", out, "--push-to-hub", "me/demo", *(["--public"] if public else []))
    assert code == FAILED  # the fake hub refuses the upload
    err = capsys.readouterr().err
    assert "refused" in err and "the fake hub takes no uploads" in err and f"the folder stays at {out}" in err
    assert [(b["name"], b.get("organization"), b.get("type"), private(b)) for b in fake_hub] == \
        [("demo", "me", "dataset", not public)]
    assert (out / "README.md").is_file()
    assert 'load_dataset("me/demo", split="train")' in card_of(out)[1]


def test_a_successful_push_says_where(tmp_path, run, monkeypatch, capsys):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo, kw)) or
                        f"https://huggingface.co/datasets/{repo}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    out = tmp_path / "hub"
    assert export(run, "--format", "hub", "--out", out, "--push-to-hub", "me/demo") == OK
    assert "pushed to https://huggingface.co/datasets/me/demo (private if it was new" in capsys.readouterr().out
    assert calls[0] == ("create", "me/demo", {"repo_type": "dataset", "private": True, "exist_ok": True})
    assert calls[1][1]["repo_id"] == "me/demo" and calls[1][1]["folder_path"] == str(out)
    assert calls[1][1]["repo_type"] == "dataset"
