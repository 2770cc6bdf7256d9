"""`tessy serve` and tessy/serve.py: the llama-server command line for a GGUF, the F16 copy, and what
`--swa-full` changes for a sliding-window model, on the packaged GGUFs and real `llama-server`s."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from llama_server import find_binary, free_port, missing_reason

from tessy.cli import main
from tessy.models import EMBEDDED, STUDENT_DEFAULT, TEACHER_DEFAULT
from tessy.serve import ServerProcess, f16_copy, gguf_facts, gguf_of, server_command, wait_until_healthy
from tessy.serve_weights import choose_weights


def test_the_metadata_names_the_teacher_s_sliding_window():
    teacher, student = gguf_facts(EMBEDDED[TEACHER_DEFAULT]()), gguf_facts(EMBEDDED[STUDENT_DEFAULT]())
    assert teacher["architecture"] == "gemma3" and teacher["sliding_window"] == 512
    assert student["architecture"] == "llama" and student["sliding_window"] is None
    assert student["tensor_types"]["Q4_1"] > 100


@pytest.mark.slow
@pytest.mark.parametrize("model", [TEACHER_DEFAULT, STUDENT_DEFAULT])
def test_the_header_scan_agrees_with_gguf_s_reader(model):
    from gguf import GGUFReader

    path = EMBEDDED[model]()
    reader = GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    window = reader.fields.get(f"{arch}.attention.sliding_window")
    types = {}
    for tensor in reader.tensors:
        types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
    assert gguf_facts(path) == {"architecture": arch, "sliding_window": window.contents() if window else None,
                                "tensor_types": types}


def test_swa_full_goes_only_to_a_model_with_a_window():
    teacher, student = EMBEDDED[TEACHER_DEFAULT](), EMBEDDED[STUDENT_DEFAULT]()
    cmd = server_command("llama-server", teacher, port=9000, parallel=4, ctx_per_slot=1024, threads=1)
    assert cmd[:3] == ["llama-server", "-m", str(teacher)] and cmd.count("--swa-full") == 1
    assert cmd[cmd.index("--parallel") + 1] == "4" and cmd[cmd.index("-c") + 1] == "4096"
    assert cmd[cmd.index("-t") + 1] == "1" and cmd[cmd.index("--port") + 1] == "9000"
    assert "--swa-full" not in server_command("llama-server", student)
    assert "--swa-full" not in server_command("llama-server", teacher, swa_full=False)
    assert server_command("llama-server", teacher, extra=("--swa-full",)).count("--swa-full") == 1


def test_serve_prints_its_command(capsys):
    assert main(["serve", "teacher", "--weights", "as-is", "--parallel", "8", "--threads", "1", "--port", "8000",
                 "--print-command"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # the command line alone, for a job script
    cmd = shlex.split(out)
    assert cmd[cmd.index("-m") + 1] == str(EMBEDDED[TEACHER_DEFAULT]()) and "--swa-full" in cmd
    assert main(["serve", "student", "--weights", "as-is", "--server-args", "--cache-ram 0", "--print-command"]) == 0
    cmd = shlex.split(capsys.readouterr().out)
    assert cmd[cmd.index("-m") + 1] == str(EMBEDDED[STUDENT_DEFAULT]()) and "--swa-full" not in cmd
    assert cmd[-2:] == ["--cache-ram", "0"] and cmd[cmd.index("--port") + 1] == "8010"


@pytest.mark.slow
@pytest.mark.parametrize("role", ["teacher", "student"])
def test_serve_as_the_readme_shows_serves_the_faster_weights_here(role, capsys):
    # The README's lines: the weights are auto, timed once on this machine (here by `choose_weights`, as
    # `tessy serve` does on its first start) and kept; --print-command uses the kept verdict.
    _needs_server()
    chosen = choose_weights(find_binary(), EMBEDDED[TEACHER_DEFAULT if role == "teacher" else STUDENT_DEFAULT](),
                            threads=1, parallel=8, say=lambda line: None)
    assert main(["serve", role, "--port", "8000", "--parallel", "8", "--threads", "1", "--print-command"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1
    cmd = shlex.split(captured.out)
    assert cmd[0] == str(find_binary()) and cmd[cmd.index("-t") + 1] == "1"
    assert cmd[cmd.index("-m") + 1] == str(chosen["path"])
    assert f"weights: {chosen['path'].name} ({chosen['why']})" in " ".join(captured.err.split())


def test_serve_takes_a_role_from_a_config_and_refuses_what_is_not_a_gguf(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"student:\n  model: {EMBEDDED[TEACHER_DEFAULT]()}\n")
    assert gguf_of("student", config) == EMBEDDED[TEACHER_DEFAULT]()
    assert gguf_of(STUDENT_DEFAULT) == EMBEDDED[STUDENT_DEFAULT]()
    with pytest.raises(FileNotFoundError, match="serves GGUF files"):
        gguf_of(str(tmp_path))
    assert main(["serve", str(tmp_path / "missing.gguf"), "--print-command"]) == 2
    assert "is not one" in capsys.readouterr().err


@pytest.mark.slow
def test_the_f16_copy_holds_the_same_weights(tmp_path, monkeypatch):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    monkeypatch.setenv("TESSY_CACHE", str(tmp_path))
    source = EMBEDDED[STUDENT_DEFAULT]()
    copy = f16_copy(source)
    assert copy.parent == tmp_path / "gguf" and copy.name.startswith("SmolLM2-135M-Instruct.Q4_1.f16-")
    written = copy.stat().st_mtime_ns
    assert f16_copy(source) == copy and copy.stat().st_mtime_ns == written  # written once
    original, f16 = GGUFReader(str(source)), GGUFReader(str(copy))
    assert gguf_facts(copy)["tensor_types"] == {"F16": 211, "F32": 61}
    fields = {k for k in original.fields if not k.startswith("GGUF.")}
    assert fields == {k for k in f16.fields if not k.startswith("GGUF.")}
    for name in fields - {"general.file_type"}:
        assert original.fields[name].contents() == f16.fields[name].contents(), name
    assert f16.fields["general.file_type"].contents() == 1
    by_name = {t.name: t for t in f16.tensors}
    for tensor in original.tensors:
        mine = by_name[tensor.name]
        assert list(mine.shape) == list(tensor.shape), tensor.name
        want = dequantize(tensor.data, tensor.tensor_type).reshape(-1)
        got = np.asarray(mine.data, dtype=np.float32).reshape(-1)
        np.testing.assert_allclose(got, want, rtol=2 ** -10, atol=2 ** -24, err_msg=tensor.name)


def _needs_server():
    if find_binary() is None:
        pytest.skip(missing_reason())


def _health(root: str, proc: subprocess.Popen) -> None:
    assert wait_until_healthy(root, proc, timeout_s=120), f"llama-server did not come up (exit {proc.poll()})"


def _complete(root: str, body: dict) -> dict:
    request = urllib.request.Request(root + "/completion", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_serve_runs_llama_server_on_the_f16_copy_until_ctrl_c(tmp_path):
    _needs_server()
    port = free_port()
    env = {**os.environ, "TESSY_LLAMA_SERVER": str(find_binary())}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tessy.cli", "serve", "student", "--f16", "--port", str(port),
                             "--parallel", "2", "--threads", "1", "--ctx-per-slot", "1024"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    root = f"http://127.0.0.1:{port}"
    try:
        _health(root, proc)
        with urllib.request.urlopen(root + "/props", timeout=10) as r:
            assert ".f16-" in json.loads(r.read())["model_path"]
        answer = _complete(root, {"prompt": "The capital of France is", "n_predict": 4, "temperature": 0})
        assert answer["tokens_predicted"] == 4 and answer["content"]
        # Ctrl-C in a terminal signals the terminal's process group: the server runs in a group of its
        # own, so the signal reaches tessy alone and the stop is always tessy's, whatever the timing.
        [server] = _servers_of(proc.pid)
        assert os.getpgid(server) == server != os.getpgid(proc.pid)
        deadline = time.time() + 30
        while "serving " not in (tmp_path / "serve.log").read_text() and time.time() < deadline:
            time.sleep(0.1)  # the "serving" line is printed after /health answers
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = (tmp_path / "serve.log").read_text()
    assert "serving SmolLM2-135M-Instruct.Q4_1.f16-" in out and f"--student-url or --teacher-url {root}/v1" in out
    assert "llama-server stopped" in out


@pytest.mark.slow
@pytest.mark.parametrize("swa_full", [True, False])
def test_swa_full_keeps_a_turn_taking_teacher_cached(tmp_path, swa_full):
    # A request that extends the previous one by what it wrote (the teacher keeping its turn) finds all
    # but its last token cached with --swa-full; without it, llama.cpp computes the turn again.
    _needs_server()
    port = free_port()
    cmd = server_command(find_binary(), EMBEDDED[TEACHER_DEFAULT](), port=port, parallel=1, ctx_per_slot=2048,
                         threads=1, swa_full=swa_full)
    root = f"http://127.0.0.1:{port}"
    with ServerProcess(cmd, root, log=tmp_path / "server.log", name="llama-server").start().ready(120):
        text = "Solve it step by step. " * 12
        request = urllib.request.Request(root + "/tokenize", json.dumps({"content": text}).encode())
        with urllib.request.urlopen(request, timeout=30) as r:
            ids = first = json.loads(r.read())["tokens"]
        computed = []
        for turn in range(3):
            answer = _complete(root, {"prompt": ids, "n_predict": 20, "return_tokens": True, "cache_prompt": True,
                                      "seed": turn, "ignore_eos": True})
            computed.append(answer["timings"]["prompt_n"])
            ids = ids + answer["tokens"]
    assert computed[0] == len(first)  # the first prompt, whole
    if swa_full:
        assert computed[1:] == [1, 1], computed  # only the last sampled token, which the server never evaluated
    else:
        assert all(n > 20 for n in computed[1:]), computed  # the turn it wrote, and more, again


def test_serve_says_when_llama_server_fails(capsys):
    _needs_server()
    assert main(["serve", "student", "--weights", "as-is", "--port", str(free_port()),
                 "--server-args=--no-such-option"]) == 3
    out = capsys.readouterr().out
    assert "llama-server exited with code" in out and "--no-such-option" in out.splitlines()[-1]


def _servers_of(pid: int) -> list[int]:
    """The llama-server processes that process `pid` started (not its watchdog)."""
    out = []
    for child in os.listdir("/proc"):
        if child.isdigit() and _parent(child) == pid:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    if b"llama-server" in f.read():
                        out.append(int(child))
            except OSError:
                pass
    return out


def _parent(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the server dies with tessy through Linux's prctl")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_serve_leaves_no_server_behind(tmp_path, how):
    # `tessy serve ... &` then `kill`: a background job ignores Ctrl-C, so SIGTERM is how it is stopped;
    # even SIGKILL, which tessy cannot catch, takes the server down with it.
    _needs_server()
    port = free_port()
    env = {**os.environ, "TESSY_LLAMA_SERVER": str(find_binary())}
    proc = subprocess.Popen([sys.executable, "-m", "tessy.cli", "serve", "student", "--weights", "as-is",
                             "--port", str(port), "--parallel", "1", "--threads", "1", "--ctx-per-slot", "512"],
                            stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT, env=env)
    root = f"http://127.0.0.1:{port}"
    _health(root, proc)
    children = [str(pid) for pid in _servers_of(proc.pid)]
    assert len(children) == 1, children
    proc.send_signal(how)
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and os.path.exists(f"/proc/{children[0]}"):
        status = open(f"/proc/{children[0]}/status").read() if os.path.exists(f"/proc/{children[0]}") else ""
        if "zombie" in status:
            break
        time.sleep(0.2)
    with pytest.raises(OSError):
        urllib.request.urlopen(root + "/health", timeout=2)
    if how == signal.SIGTERM:
        assert proc.returncode == 0 and "llama-server stopped" in (tmp_path / "serve.log").read_text()


# --- vLLM (tessy/serve_vllm.py) ----------------------------------------------------------------------

def _vllm_python() -> str:
    from vllm_server import find

    python, why = find()
    if python is None:
        pytest.skip(f"no vLLM: {why}")
    return python


def test_serve_vllm_prints_its_command_as_the_readme_shows(capsys):
    from tessy.models import resolve
    from tessy.serve_vllm import has_gpu

    python = _vllm_python()
    assert main(["serve", "teacher", "--engine", "vllm", "--port", "8000", "--parallel", "16", "--threads", "1",
                 "--python", python, "--print-command"]) == 0
    words = shlex.split(capsys.readouterr().out)
    n = next(i for i, w in enumerate(words) if not re.match(r"[A-Z0-9_]+=", w))  # the environment comes first
    env, cmd = dict(w.split("=", 1) for w in words[:n]), words[n:]
    assert cmd[:3] == [python, "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--model") + 1] == str(resolve(TEACHER_DEFAULT))
    assert cmd[cmd.index("--served-model-name") + 1] == TEACHER_DEFAULT
    assert cmd[cmd.index("--port") + 1] == "8000" and cmd[cmd.index("--max-num-seqs") + 1] == "16"
    for flag in ("--enable-prefix-caching", "--enable-prompt-tokens-details"):
        assert flag in cmd
    assert cmd[cmd.index("--generation-config") + 1] == "vllm"
    if not has_gpu():
        assert cmd[cmd.index("--block-size") + 1] == "32" and "--no-enable-chunked-prefill" in cmd
        assert env == {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                       "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1"}


def test_on_a_gpu_the_blocks_are_16_tokens_and_prompts_may_be_chunked():
    from pathlib import Path

    from tessy.serve_vllm import VLLM, vllm_command

    cmd, env = vllm_command(VLLM(Path("/opt/py/bin/python"), "vllm", "0.33.0"), "Qwen/Qwen3-8B", parallel=256,
                            max_model_len=40960, gpu=True, extra=("--tensor-parallel-size", "2"))
    assert env == {} and cmd[cmd.index("--block-size") + 1] == "16" and "--no-enable-chunked-prefill" not in cmd
    assert "--dtype" not in cmd and cmd[-2:] == ["--tensor-parallel-size", "2"]
    assert cmd[cmd.index("--max-model-len") + 1] == "40960"


@pytest.mark.parametrize("model, ok", [("Qwen/Qwen3-8B", True), ("./no/such/dir", False), ("/no/such", False),
                                       ("weights.safetensors", False)])
def test_vllm_takes_a_hub_name_and_refuses_a_path_that_is_not_there(model, ok):
    from tessy.serve_vllm import model_for_vllm

    if ok:
        assert model_for_vllm(model) == (model, model)
    else:
        with pytest.raises(FileNotFoundError, match="neither a Hugging Face model directory"):
            model_for_vllm(model)


def test_engine_vllm_without_vllm_says_how_to_get_it(capsys, monkeypatch):
    monkeypatch.delenv("TESSY_VLLM_PYTHON", raising=False)
    assert main(["serve", "student", "--engine", "vllm", "--python", sys.executable, "--print-command"]) == 2
    err = capsys.readouterr().err
    assert "is not a Python that has vLLM" in err and "make .venv-vllm" in err


@pytest.mark.slow
def test_a_model_vllm_cannot_load_exits_3_with_its_reason(tmp_path, capsys):
    python = _vllm_python()
    model = tmp_path / "broken"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no-such-architecture"}')
    assert main(["serve", str(model), "--engine", "vllm", "--python", python, "--port", str(free_port())]) == 3
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "exited with code" in last and "no-such-architecture" in last and "Traceback" not in last
