"""The sandbox: one hostile property per test. Each is contained, reported, and the next run works."""

from __future__ import annotations

import os
import socket
import textwrap
import time
from pathlib import Path

import pytest

from tessy.sandbox import BWRAP, Limits, isolation, run_python

needs_bwrap = pytest.mark.skipif(isolation() != BWRAP, reason=f"needs bubblewrap; sandbox is {isolation()}")
FAST = Limits(timeout_s=5, cpu_s=3, memory_mb=512, max_procs=16)


def run(code: str, **kw):
    result = run_python(textwrap.dedent(code), limits=kw.pop("limits", FAST), **kw)
    # Whatever happened, the sandbox still works for the next program: evaluation goes on.
    after = run_python("print(6 * 7)", limits=FAST)
    assert after.passed and after.stdout.strip() == "42", after
    return result


def test_normal_program_passes_and_sees_stdin():
    r = run("import sys; print(sum(map(int, sys.stdin.read().split())))", stdin="1 2 3\n")
    assert r.passed and r.reason == "" and r.stdout.strip() == "6"
    assert r.isolation == isolation()


def test_failing_program_reports_last_stderr_line():
    r = run("raise AssertionError('wrong answer')")
    assert not r.passed and "AssertionError: wrong answer" in r.reason


@pytest.mark.parametrize("code", ["while True: pass", "import time\nwhile True: time.sleep(1)"], ids=["busy", "sleeping"])
def test_infinite_loop_is_stopped(code):
    t = time.monotonic()
    r = run(code, limits=Limits(timeout_s=2, cpu_s=1))
    assert not r.passed
    assert r.reason.startswith(("timeout", "cpu limit")), r.reason
    assert time.monotonic() - t < 15


def test_fork_bomb_is_contained():
    code = """
    import os, time
    n = 0
    try:
        while True:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
    except OSError as e:
        raise SystemExit(f"fork refused after {n}: {e}")
    """
    r = run(code, limits=Limits(timeout_s=5, cpu_s=3, max_procs=16))
    assert not r.passed
    assert "fork refused after" in r.reason, r.reason
    assert int(r.reason.split("after ")[1].split(":")[0]) < 16
    # The sleeping children are gone with the sandbox: no process of the sandbox user is left.
    time.sleep(0.5)
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _uid(p) == 65534 and "main.py" in _cmdline(p)]
    assert leftovers == []


def _uid(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("code", ["x = bytearray(4 * 1024**3)", "x = []\nwhile True: x.append(' ' * 10**7)"], ids=["one-block", "growing"])
def test_memory_bomb_is_contained(code):
    r = run(code, limits=Limits(timeout_s=10, cpu_s=5, memory_mb=256))
    assert not r.passed and r.reason.startswith("memory limit"), r.reason


@pytest.mark.parametrize("where", ["tmp", "repo"])
def test_writing_outside_its_directory_fails(tmp_path, where):
    target = tmp_path / "owned.txt" if where == "tmp" else Path(__file__).parent / ".sandbox-escape-test"
    code = f"""
    open("inside.txt", "w").write("fine")  # its own directory is writable
    open({str(target)!r}, "w").write("pwned")
    """
    try:
        r = run(code)
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)
    # Read-only root (bwrap), root-owned (nobody), or a private /tmp where the path does not exist.
    assert not r.passed and any(s in r.reason for s in ("Read-only", "Permission denied", "No such file")), r.reason


@pytest.mark.parametrize("code", ["open('big', 'wb').write(b'x' * 50 * 1024 * 1024)",
                                  "import sys\nwhile True: sys.stdout.write('x' * 65536)"], ids=["file", "stdout"])
def test_writing_a_huge_file_hits_the_size_limit(code):
    r = run(code, limits=Limits(file_size_mb=1))
    assert len(r.stdout) <= Limits().max_output_chars  # captured to a capped file, never to memory
    assert not r.passed and ("file size limit" in r.reason or "File too large" in r.reason), r.reason


def test_parent_environment_secret_is_not_visible(monkeypatch):
    monkeypatch.setenv("TESSY_TEST_SECRET", "hunter2")
    code = """
    import os, glob
    seen = os.environ.get("TESSY_TEST_SECRET", "")
    for path in glob.glob("/proc/[0-9]*/environ"):
        try:
            seen += open(path, "rb").read().decode(errors="replace")
        except OSError:
            pass
    print("hunter2" in seen)
    """
    r = run(code)
    assert r.passed and r.stdout.strip() == "False", r


@needs_bwrap
def test_socket_to_localhost_is_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        r = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        assert not r.passed and ("refused" in r.reason or "unreachable" in r.reason.lower()), r.reason
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()  # nothing ever reached the host's listener
    finally:
        server.close()


def test_signalling_its_parent_fails():
    me = os.getpid()
    code = f"""
    import os, signal
    for pid in (os.getppid(), {me}):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError as e:
            print(pid, type(e).__name__)
    """
    r = run(code)
    assert os.getpid() == me  # we are alive to check
    assert str(me) in r.stdout and ("ProcessLookupError" in r.stdout or "PermissionError" in r.stdout), r


def test_fallback_is_said_in_every_result(monkeypatch):
    monkeypatch.setenv("TESSY_SANDBOX", "rlimits")
    isolation.cache_clear()
    try:
        r = run_python("print('hi')", limits=FAST)
        assert r.passed and r.isolation.startswith("rlimits-only")
    finally:
        monkeypatch.delenv("TESSY_SANDBOX")
        isolation.cache_clear()


def test_an_interpreter_under_tmp_is_bound_back_into_the_private_tmp(monkeypatch):
    """A clone (and its .venv) under /tmp would be hidden by the sandbox's own /tmp."""
    import shutil
    import tempfile

    import tessy.sandbox as sandbox

    clone = Path(tempfile.mkdtemp(dir="/tmp", prefix="tessy-clone-"))
    try:
        clone.chmod(0o755)
        venv = clone / ".venv"
        (venv / "bin").mkdir(parents=True)
        monkeypatch.setattr(sandbox, "_interpreter_dirs", lambda: [str(venv), str(venv / "bin")])
        text = " ".join(sandbox._bwrap_args("/tmp/work-host"))
        assert f"--tmpfs /tmp --perms 0755 --dir {clone} --ro-bind {venv} {venv}" in text
        assert text.count("--ro-bind") == 2  # / and the venv once: its bin/ is inside it
        assert f"--tmpfs {clone}" not in text
    finally:
        shutil.rmtree(clone)
