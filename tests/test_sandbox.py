"""The sandbox: one hostile property per test, in Python and in C++ (compiled by g++ inside the
sandbox). Each is contained, reported, and the next run works."""

from __future__ import annotations

import os
import socket
import textwrap
import time
from pathlib import Path

import pytest

from tessy.eval import verdicts
from tessy.eval.sandbox import BWRAP, Limits, build, compile_cpp, isolation, run_python

needs_bwrap = pytest.mark.skipif(isolation() != BWRAP, reason=f"needs bubblewrap; sandbox is {isolation()}")
FAST = Limits(timeout_s=5, cpu_s=3, memory_mb=512, max_procs=16)


def run(code: str, lang: str = "python", **kw):
    limits = kw.pop("limits", FAST)
    if lang == "cpp":
        program = build("cpp", textwrap.dedent(code))
        assert not hasattr(program, "verdict"), program  # the hostile part is in what it does, not in compiling
        result = program.run(limits=limits, **kw)
    else:
        result = run_python(textwrap.dedent(code), limits=limits, **kw)
    # Whatever happened, the sandbox still works for the next program: evaluation goes on.
    after = run_python("print(6 * 7)", limits=FAST)
    assert after.passed and after.stdout.strip() == "42", after
    return result


# The C++ side of each hostile test: what the Python snippet does, written as a contestant would.
CPP_FORK_BOMB = """
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unistd.h>
int main() {
    int n = 0;
    while (true) {
        pid_t pid = fork();
        if (pid == 0) { sleep(30); _exit(0); }
        if (pid < 0) { fprintf(stderr, "fork refused after %d: %s\\n", n, strerror(errno)); return 1; }
        n++;
    }
}
"""
CPP_WRITE = """
#include <cerrno>
#include <cstdio>
#include <cstring>
int main() {
    FILE *inside = fopen("inside.txt", "w");  // its own directory is writable
    if (!inside || fputs("fine", inside) < 0) return 2;
    fclose(inside);
    FILE *f = fopen("%s", "w");
    if (!f) { fprintf(stderr, "open: %%s\\n", strerror(errno)); return 1; }
    fputs("pwned", f);
    return fclose(f) == 0 ? 0 : 1;
}
"""
CPP_CONNECT = """
#include <arpa/inet.h>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <netinet/in.h>
#include <sys/socket.h>
int main() {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(%d);
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (connect(s, (sockaddr *)&addr, sizeof addr) != 0) {
        fprintf(stderr, "connect: %%s\\n", strerror(errno));
        return 1;
    }
    puts("connected");
}
"""


def test_normal_program_passes_and_sees_stdin():
    r = run("import sys; print(sum(map(int, sys.stdin.read().split())))", stdin="1 2 3\n")
    assert r.passed and r.verdict == verdicts.OK and r.stdout.strip() == "6"
    assert r.isolation == isolation()


@pytest.mark.parametrize("lang, code, status", [
    ("python", "raise AssertionError('wrong answer')", "exit status 1: AssertionError: wrong answer"),
    ("cpp", '#include <cstdio>\nint main() { fputs("gave up\\n", stderr); return 3; }', "exit status 3: gave up"),
    ("cpp", "#include <cstdlib>\nint main() { std::abort(); }", "killed by signal SIGABRT"),
])
def test_failing_program_is_a_runtime_error_with_its_last_stderr_line(lang, code, status):
    r = run(code, lang)
    assert not r.passed and r.verdict.kind == verdicts.RUNTIME_ERROR and r.verdict.detail.startswith(status), r


@pytest.mark.parametrize("lang, code", [("python", "while True: pass"),
                                        ("python", "import time\nwhile True: time.sleep(1)"),
                                        ("cpp", "int main() { volatile long x = 0; while (true) x++; }"),
                                        ("cpp", "#include <unistd.h>\nint main() { while (true) sleep(1); }")],
                         ids=["busy", "sleeping", "busy-cpp", "sleeping-cpp"])
def test_infinite_loop_is_stopped(lang, code):
    t = time.monotonic()
    r = run(code, lang, limits=Limits(timeout_s=2, cpu_s=1))
    assert not r.passed
    assert r.verdict.kind == verdicts.TIME_LIMIT and r.verdict.detail.startswith(("wall clock", "cpu")), r.verdict
    assert time.monotonic() - t < 15


@pytest.mark.parametrize("lang", ["python", "cpp"])
def test_fork_bomb_is_contained(lang):
    code = CPP_FORK_BOMB if lang == "cpp" else """
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
    r = run(code, lang, limits=Limits(timeout_s=5, cpu_s=3, max_procs=16))
    assert not r.passed and r.verdict.kind == verdicts.RUNTIME_ERROR
    assert "fork refused after" in r.verdict.detail, r.verdict
    assert int(r.verdict.detail.split("after ")[1].split(":")[0]) < 16
    # The sleeping children are gone with the sandbox: no process of the sandbox user is left.
    time.sleep(0.5)
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _uid(p) == 65534 and "main" in _cmdline(p)]
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


@pytest.mark.parametrize(
    "lang, code",
    [("python", "x = bytearray(4 * 1024**3)"), ("python", "x = []\nwhile True: x.append(' ' * 10**7)"),
     ("cpp", "#include <vector>\nint main() { std::vector<char> v(4LL << 30); return v[7]; }"),
     ("cpp", "#include <string>\n#include <vector>\nint main() { std::vector<std::string> v; "
             "while (true) v.emplace_back(10000000, ' '); }")],
    ids=["one-block", "growing", "one-block-cpp", "growing-cpp"],
)
def test_memory_bomb_is_contained(lang, code):
    r = run(code, lang, limits=Limits(timeout_s=10, cpu_s=5, memory_mb=256))
    assert not r.passed and r.verdict.kind == verdicts.MEMORY_LIMIT, r.verdict


@pytest.mark.parametrize("lang", ["python", "cpp"])
@pytest.mark.parametrize("where", ["tmp", "repo"])
def test_writing_outside_its_directory_fails(tmp_path, where, lang):
    target = tmp_path / "owned.txt" if where == "tmp" else Path(__file__).parent / ".sandbox-escape-test"
    code = CPP_WRITE % target if lang == "cpp" else f"""
    open("inside.txt", "w").write("fine")  # its own directory is writable
    open({str(target)!r}, "w").write("pwned")
    """
    try:
        r = run(code, lang)
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)
    # Read-only root (bwrap), root-owned (nobody), or a private /tmp where the path does not exist.
    assert not r.passed and r.verdict.kind == verdicts.RUNTIME_ERROR, r.verdict
    assert any(s in r.verdict.detail for s in ("Read-only", "Permission denied", "No such file")), r.verdict


@pytest.mark.parametrize("code", ["open('big', 'wb').write(b'x' * 50 * 1024 * 1024)",
                                  "import sys\nwhile True: sys.stdout.write('x' * 65536)"], ids=["file", "stdout"])
def test_writing_a_huge_file_hits_the_size_limit(code):
    r = run(code, limits=Limits(file_size_mb=1))
    assert len(r.stdout) <= Limits().max_output_chars  # captured to a capped file, never to memory
    assert not r.passed and r.verdict.kind == verdicts.OUTPUT_LIMIT, r.verdict


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
@pytest.mark.parametrize("lang", ["python", "cpp"])
def test_socket_to_localhost_is_refused(lang):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = (CPP_CONNECT % port if lang == "cpp"
                else f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        r = run(code, lang)
        assert not r.passed and r.verdict.kind == verdicts.RUNTIME_ERROR, r.verdict
        assert "refused" in r.verdict.detail or "unreachable" in r.verdict.detail.lower(), r.verdict
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

    import tessy.eval.sandbox as sandbox

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


@pytest.mark.parametrize("source, why", [("int main() { return undefined_name; }", "undefined_name"),
                                         ('#include "/dev/zero"\nint main() {}', "memory"),
                                         ("template <int N> struct F { enum { v = F<N - 1>::v + F<N - 2>::v }; };\n"
                                          "int main() { return F<100000>::v; }", "")],
                         ids=["undeclared", "include-dev-zero", "template-explosion"])
def test_a_bad_cpp_source_is_a_compile_error_and_nothing_runs(source, why):
    t = time.monotonic()
    binary, r = compile_cpp(source, Limits(timeout_s=10, cpu_s=5, memory_mb=512))
    assert binary is None and not r.passed and r.verdict.kind == verdicts.COMPILE_ERROR, r.verdict
    assert why in r.verdict.detail, r.verdict
    assert time.monotonic() - t < 30
    after = run_python("print(6 * 7)", limits=FAST)
    assert after.passed and after.stdout.strip() == "42", after


@pytest.mark.parametrize("lang", ["python", "cpp"])
def test_a_sandbox_that_cannot_start_is_a_refusal_not_a_verdict_on_the_code(monkeypatch, lang):
    import subprocess

    import tessy.eval.sandbox as sandbox

    if lang == "cpp":
        monkeypatch.setattr(sandbox.shutil, "which", lambda name, path=None: None)  # no g++ here
        binary, r = compile_cpp("int main() {}")
        assert binary is None
    else:
        def refuse(*args, **kwargs):
            raise OSError("no such interpreter")

        monkeypatch.setattr(subprocess, "Popen", refuse)
        r = run_python("print(1)", limits=FAST)
    assert not r.passed and r.verdict.kind == verdicts.SANDBOX_REFUSAL and not r.verdict.graded, r.verdict
