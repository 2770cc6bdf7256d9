"""Run model-written programs (Python, or C++ compiled with g++) in a separate, limited process:
the riskiest thing tessy does.

Every program runs in a fresh process, in a fresh temporary working directory, with a scrubbed
environment (PATH, HOME, LANG, and TMPDIR pointing into its own directory), a wall-clock timeout,
and resource limits: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), size of any file it
writes (RLIMIT_FSIZE) and number of processes (RLIMIT_NPROC). When tessy runs as root, the program
drops to uid/gid 65534 (nobody) before it starts, because the kernel never applies RLIMIT_NPROC to
root. C++ is compiled the same way: g++ runs inside the sandbox, under its own limits (a compile
timeout among them), since a source file can attack the compiler (`#include "/dev/zero"`, template
explosions); each run of the binary then gets a fresh directory with a copy of it.

Where bubblewrap (`bwrap`, Debian package `bubblewrap`, the sandbox Flatpak uses) can run, the
process is also isolated with:
  - a read-only view of the root filesystem, and a private, empty `/tmp`;
  - new network, PID, IPC and UTS namespaces: no network at all (not even the host's
    127.0.0.1), and no other process of the host is visible or can be signalled;
  - `--die-with-parent` and `--new-session`: it dies with tessy, and cannot push keystrokes into
    tessy's terminal.
Where bwrap cannot run, the resource limits and the uid drop are all there is, and every `Result`
and every summary says so (`isolation`). Set `TESSY_SANDBOX=rlimits` to choose that fallback.

What it protects against (Python and C++ alike; tests/test_sandbox.py runs both):
  - infinite loops and slow code (wall-clock timeout, CPU limit), then the whole process tree is killed;
  - fork bombs (process limit; the PID namespace or the process group is killed at the end);
  - memory bombs (address-space limit: the program gets MemoryError or std::bad_alloc, or dies);
  - filling the disk (file-size limit; output is captured to size-capped files, never to memory);
  - writing outside its directory (read-only root with bwrap; as nobody, root-owned files stay
    unwritable either way);
  - reading tessy's secrets from the environment (scrubbed environment; other processes'
    /proc/PID/environ are hidden by the PID namespace, or unreadable to nobody);
  - connecting to anything, including services on 127.0.0.1 (network namespace; bwrap only);
  - signalling tessy or other processes (PID namespace; as nobody it may not signal root's processes).

What it does NOT protect against:
  - reading world-readable files of the host (the root is mounted read-only, not hidden; only a
    closed directory above the interpreter, such as pyenv's /root, is replaced by an empty one);
  - kernel exploits and escapes from namespaces: this is not a VM; run untrusted code at scale
    inside a container or VM as well;
  - in the fallback without bwrap: network access, and writes to world-writable places such as
    /tmp; run without root there is no uid drop, so the program can read and write what tessy's
    user can and signal that user's processes, and a fork bomb that calls setsid() can outlive
    the timeout (the process limit still bounds it);
  - side channels and CPU contention with other work on the machine; and since every sandboxed
    run is the same user (nobody), runs in parallel share one process limit: a fork bomb can make a
    neighbour's fork fail while it lasts.

A contained problem is never an exception: `run_python`, `compile_cpp` and `run_binary` return a
`Result` whose `verdict` (`tessy.eval.verdicts`) says what happened: accepted (exit status 0 within
every limit), time limit, memory limit, output limit, runtime error, compile error, or sandbox
refusal when the sandbox itself could not run it.
"""


from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tessy.eval.verdicts import (
    ACCEPTED,
    COMPILE_ERROR,
    MEMORY_LIMIT,
    OUTPUT_LIMIT,
    RUNTIME_ERROR,
    SANDBOX_REFUSAL,
    TIME_LIMIT,
    Verdict,
)

NOBODY = 65534
BWRAP = "bwrap"
RLIMITS_ONLY = "rlimits-only"
LANGUAGES = ("python", "cpp")
# What a benchmark row, a checker or a code fence may call them.
LANGUAGE_ALIASES = {"python": "python", "py": "python", "python3": "python", "py3": "python",
                    "cpp": "cpp", "c++": "cpp", "cc": "cpp", "cxx": "cpp"}
# g++ as contest judges call it (Codeforces, AtCoder: -O2, a recent GNU standard); -pipe keeps the
# intermediate files off the disk.
CPP_FLAGS = ("-O2", "-std=gnu++20", "-pipe")

# Runs inside the sandbox before the untrusted program: it is trusted code. It sets the limits,
# drops root (RLIMIT_NPROC does not bind root), and execs the program: a fresh interpreter on a
# Python file, g++, or a compiled binary.
_BOOTSTRAP = r"""
import os, resource, sys
cpu, mem, fsize, nproc, stack, drop = sys.argv[1:7]
# The CPU hard limit is one second above the soft one, so that SIGXCPU (not SIGKILL) says why.
resource.setrlimit(resource.RLIMIT_CPU, (int(cpu), int(cpu) + 1))
for lim, val in ((resource.RLIMIT_AS, int(mem)), (resource.RLIMIT_FSIZE, int(fsize)),
                 (resource.RLIMIT_NPROC, int(nproc)), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(lim, (val, val))
if int(stack):
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    val = int(stack) if hard == resource.RLIM_INFINITY else min(int(stack), hard)
    resource.setrlimit(resource.RLIMIT_STACK, (val, hard))
if drop == "1" and os.geteuid() == 0:
    os.setgroups([])
    os.setgid(%d)
    os.setuid(%d)
os.execv(sys.argv[7], sys.argv[7:])
""" % (NOBODY, NOBODY)


@dataclass
class Limits:
    timeout_s: float = field(default=10.0, metadata={"help": "wall-clock limit of one run"})
    cpu_s: int = field(default=10, metadata={"help": "RLIMIT_CPU, seconds of CPU per process"})
    memory_mb: int = field(default=1024, metadata={"help": "RLIMIT_AS, address space per process"})
    file_size_mb: int = field(default=16, metadata={"help": "RLIMIT_FSIZE: largest file it may write, stdout included"})
    max_procs: int = field(default=32, metadata={"help": "RLIMIT_NPROC: processes of the sandbox user"})
    max_output_chars: int = field(default=100_000, metadata={"help": "stdout/stderr kept in the result"})
    stack_mb: int = field(
        default=256,
        metadata={"help": "RLIMIT_STACK of compiled programs: judges allow deep recursion (Python keeps its default)"},
    )


def compile_limits(timeout_s: float = 30.0) -> Limits:
    """Limits for one g++ run: cc1plus at -O2 on <bits/stdc++.h> wants a few hundred MB. Its process
    limit is loose: g++ runs four or five processes (driver, cc1plus, as, collect2, ld), no source
    can make it fork more, and RLIMIT_NPROC counts every sandbox of the same user together."""
    return Limits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s)), memory_mb=2048, file_size_mb=64, max_procs=1024)


@dataclass
class Result:
    verdict: Verdict  # accepted: exit status 0, within every limit
    stdout: str
    stderr: str
    returncode: int | None  # None when killed on the wall-clock timeout
    isolation: str  # "bwrap" or "rlimits-only (...why...)"
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.verdict.kind == ACCEPTED


@dataclass(frozen=True)
class Program:
    """A program ready to run in the sandbox: Python source, or a binary g++ built from C++."""

    language: str  # "python" | "cpp"
    code: bytes  # the source (python) or the executable (cpp)

    def run(self, stdin: str = "", limits: Limits | None = None, args: tuple[str, ...] = (),
            files: dict[str, str | bytes] | None = None) -> Result:
        """One run in a fresh sandbox; `args` are its command-line arguments, `files` are put in its directory."""
        if self.language == "python":
            return run_python(self.code.decode("utf-8"), stdin, limits, args, files)
        return run_binary(self.code, stdin, limits, args, files)


def build(language: str, source: str, limits: Limits | None = None) -> Program | Result:
    """A `Program` from source: Python as it is, C++ compiled in the sandbox (`compile_cpp`).

    Returns the Program, or the failed compile's `Result` (a compile error, or a sandbox refusal)."""
    if language == "python":
        return Program("python", source.encode("utf-8"))
    if language == "cpp":
        binary, result = compile_cpp(source, limits)
        return Program("cpp", binary) if binary is not None else result
    raise ValueError(f"unknown language {language!r} (known: {', '.join(LANGUAGES)})")


@functools.lru_cache(maxsize=1)
def isolation() -> str:
    """`"bwrap"` when bubblewrap runs here, else `"rlimits-only (why)"`. Checked once per process."""
    if os.environ.get("TESSY_SANDBOX") == "rlimits":
        return _fallback("TESSY_SANDBOX=rlimits")
    exe = shutil.which("bwrap")
    if exe is None:
        return _fallback("bwrap not installed; apt-get install bubblewrap")
    try:
        probe = subprocess.run(_bwrap_args("/") + ["true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return _fallback(f"bwrap failed: {e}")
    if probe.returncode != 0:
        why = probe.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
        return _fallback(f"bwrap cannot run here: {why[0]}")
    return BWRAP


def _fallback(why: str) -> str:
    if os.geteuid() == 0 and _fallback_python() is None:
        why += "; runs as root since nobody cannot reach a Python, so no process limit"
    elif _fallback_python() != sys.executable:
        why += f"; programs run on {_fallback_python()}"
    return f"{RLIMITS_ONLY} ({why})"


def _closed_ancestor(path: str) -> str | None:
    """The topmost directory above `path` that others may not enter (such as /root, mode 0700)."""
    parts = Path(path).resolve().parts
    for i in range(2, len(parts)):
        d = Path(*parts[:i])
        if not d.stat().st_mode & 0o001:
            return str(d)
    return None


def _interpreter_dirs() -> list[str]:
    return sorted({str(Path(p).resolve()) for p in (sys.base_prefix, sys.prefix, Path(sys.executable).parent)})


def _interpreter_reachable() -> bool:
    """Whether nobody can run this interpreter (pyenv installs under /root, which is 0700)."""
    return all(_closed_ancestor(d) is None for d in _interpreter_dirs())


@functools.lru_cache(maxsize=1)
def _fallback_python() -> str | None:
    """Without bwrap, a Python that nobody can run: ours, else the system's (programs need the stdlib only)."""
    if _interpreter_reachable():
        return sys.executable
    system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if system and _closed_ancestor(system) is None:
        return system
    return None


def _bwrap_args(workdir: str) -> list[str]:
    # A closed directory above the interpreter (/root for pyenv) is replaced by an empty tmpfs, and
    # only the interpreter's own directories are bound back: nobody can run Python, and the rest of
    # that directory (root's dotfiles, keys) is not even visible.
    # A virtual environment under /tmp (a clone there) is hidden by the private /tmp: it is bound
    # back the same way, read-only.
    reopen, binds = [], []
    dirs = _interpreter_dirs()
    for d in [d for d in dirs if not any(o != d and Path(d).is_relative_to(o) for o in dirs)]:
        closed = _closed_ancestor(d) or ("/tmp" if Path(d).is_relative_to("/tmp") else None)
        if closed:
            if closed != "/tmp":
                reopen += [] if closed in reopen else ["--perms", "0755", "--tmpfs", closed]
            # bwrap would create the directories between them as 0700, closed to nobody again.
            for mid in list(reversed(Path(d).parents))[len(Path(closed).parents) + 1 :]:
                binds += ["--perms", "0755", "--dir", str(mid)]
            binds += ["--ro-bind", d, d]
    reopen += binds
    return [
        "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
        *reopen, "--bind", workdir, "/tmp/work", "--chdir", "/tmp/work",
        "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--die-with-parent", "--new-session",
    ]


def run_python(code: str, stdin: str = "", limits: Limits | None = None, args: tuple[str, ...] = (),
               files: dict[str, str | bytes] | None = None) -> Result:
    """Run `code` as a Python program in the sandbox, feeding it `stdin`; `args` become its
    sys.argv[1:] and `files` ({name: content}) are written into its directory first.

    Returns a `Result`; it never raises for anything the program does.
    """
    return _run("python", {**(files or {}), "main.py": code}, args, stdin, limits or Limits())[0]


def compile_cpp(source: str, limits: Limits | None = None) -> tuple[bytes | None, Result]:
    """Compile C++ `source` with g++ (`CPP_FLAGS`) inside the sandbox, under `limits` (default
    `compile_limits()`). Returns (the executable, or None, and the compiler's `Result`). A source g++
    refuses, or that runs g++ out of its limits, is a compile error whose detail is the first error
    line (the whole log is in `stderr`) or the limit; a sandbox that cannot run g++ is a sandbox refusal."""
    limits = limits or compile_limits()
    if shutil.which("g++") is None:
        refusal = Verdict(SANDBOX_REFUSAL, "no g++ on PATH (apt-get install g++)")
        return None, Result(refusal, "", "", None, isolation(), 0.0)
    result, binary = _run("compile", {"main.cpp": source}, (), "", limits, collect="main")
    if result.passed and binary:
        return binary, result
    if result.verdict.kind == SANDBOX_REFUSAL:
        return None, result
    first = next((line.strip() for line in result.stderr.splitlines() if "error" in line), "")
    if result.passed:
        why = "no executable"
    elif result.returncode is None or result.returncode < 0 or not first:
        why = str(result.verdict)  # a limit, or a compiler that died
    else:
        why = first
    result.verdict = Verdict(COMPILE_ERROR, why[:300])
    return None, result


def run_binary(binary: bytes, stdin: str = "", limits: Limits | None = None, args: tuple[str, ...] = (),
               files: dict[str, str | bytes] | None = None) -> Result:
    """Run an executable from `compile_cpp` in the sandbox (a fresh directory with a copy of it),
    feeding it `stdin`; `args` and `files` as for `run_python`. Returns a `Result`."""
    return _run("binary", {**(files or {}), "main": binary}, args, stdin, limits or Limits())[0]


def _run(kind: str, files: dict[str, str | bytes], args: tuple[str, ...], stdin: str, limits: Limits,
         collect: str | None = None) -> tuple[Result, bytes | None]:
    """One sandboxed process: `kind` is "python" (main.py), "compile" (g++ on main.cpp) or "binary"
    (./main). Returns its Result, and the bytes of the file `collect` it left when it passed."""
    mode = isolation()
    start = time.monotonic()
    host = Path(tempfile.mkdtemp(prefix="tessy-sandbox-"))
    try:
        work = host / "work"  # the program's directory; its output files live beside it, out of its reach
        work.mkdir()
        for name, content in files.items():
            path = work / name
            path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        if kind == "binary":
            (work / "main").chmod(0o755)
        (host / "stdin").write_text(stdin, encoding="utf-8")
        if os.geteuid() == 0:
            host.chmod(0o711)  # nobody may pass through to work/, but not list or read stdout/stderr
            for path in (work, *work.iterdir()):
                os.chown(path, NOBODY, NOBODY)
        mb = 1024 * 1024
        inside = "/tmp/work" if mode == BWRAP else str(work)  # the directory as the program sees it
        python = sys.executable if mode == BWRAP else _fallback_python()
        # Only a Python program needs nobody to reach an interpreter: g++ and a binary are exec'd
        # by the bootstrap after it has dropped root.
        drop = "0" if kind == "python" and python is None else "1"
        program = {"python": [python or sys.executable, "-I", "-B", "main.py"],
                   "compile": [shutil.which("g++") or "g++", *CPP_FLAGS, "-o", "main", "main.cpp"],
                   "binary": [f"{inside}/main"]}[kind]
        stack = limits.stack_mb * mb if kind == "binary" else 0
        argv = [python or sys.executable, "-I", "-c", _BOOTSTRAP, str(limits.cpu_s), str(limits.memory_mb * mb),
                str(limits.file_size_mb * mb), str(limits.max_procs), str(stack), drop, *program, *args]
        if mode == BWRAP:
            argv = _bwrap_args(str(work)) + argv
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": inside, "TMPDIR": inside, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0"}
        with (open(host / "stdin", "rb") as fin, open(host / "stdout", "wb") as fout,
              open(host / "stderr", "wb") as ferr):
            try:
                proc = subprocess.Popen(argv, stdin=fin, stdout=fout, stderr=ferr, cwd=work, env=env,
                                        start_new_session=True)
            except OSError as e:
                refusal = Verdict(SANDBOX_REFUSAL, f"could not start: {e}")
                return Result(refusal, "", "", None, mode, time.monotonic() - start), None
            try:
                returncode = proc.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                returncode, timed_out = None, True
            # Kill whatever is left of the tree: the group, then the process (bwrap's PID namespace
            # takes every descendant with it).
            _kill_group(proc.pid)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if mode == BWRAP and returncode is not None and 128 < returncode <= 128 + 64:
            returncode = 128 - returncode  # bwrap reports its child's death by signal N as 128+N
        stdout = _read(host / "stdout", limits.max_output_chars)
        stderr = _read(host / "stderr", limits.max_output_chars)
        wall = time.monotonic() - start
        verdict = _verdict(returncode, timed_out, stderr, limits, kind == "python")
        kept = None
        if verdict.kind == ACCEPTED and collect and (work / collect).is_file():
            kept = (work / collect).read_bytes()
        return Result(verdict, stdout, stderr, returncode, mode, wall), kept
    except OSError as e:  # tessy's own side (disk full, ...): a failed sample, not a crash
        return Result(Verdict(SANDBOX_REFUSAL, str(e)), "", "", None, mode, time.monotonic() - start), None
    finally:
        shutil.rmtree(host, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit * 4).decode("utf-8", errors="replace")[:limit]


def _verdict(returncode: int | None, timed_out: bool, stderr: str, limits: Limits, python: bool = True) -> Verdict:
    """What one run's exit says; the detail names the limit, or the program's last stderr line."""
    if returncode == 0 and not timed_out:
        return Verdict(ACCEPTED)
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if timed_out:
        return Verdict(TIME_LIMIT, f"wall clock: still running after {limits.timeout_s:g} s")
    if returncode == -signal.SIGXCPU:
        return Verdict(TIME_LIMIT, f"cpu: more than {limits.cpu_s} s of CPU")
    # Python ignores SIGXFSZ, so there the write fails with EFBIG instead of the signal.
    if returncode == -signal.SIGXFSZ or python and "[Errno 27] File too large" in last:
        return Verdict(OUTPUT_LIMIT, f"wrote more than {limits.file_size_mb} MB" + (f" ({last})" if last else ""))
    # A silent SIGSEGV is how CPython dies when the address-space limit bites inside malloc; a
    # compiled program segfaults for its own reasons (a stack overflow, a bad pointer), so only
    # std::bad_alloc, or a binary too large to load, says memory there.
    if (python and ("MemoryError" in stderr or returncode == -signal.SIGSEGV and not last)
            or not python and ("std::bad_alloc" in stderr or "Cannot allocate memory" in last)):
        return Verdict(MEMORY_LIMIT, f"more than {limits.memory_mb} MB ({last or 'killed'})")
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return Verdict(RUNTIME_ERROR, f"killed by signal {name}" + (f": {last[:300]}" if last else ""))
    if "Resource temporarily unavailable" in stderr and ("fork" in stderr or "Errno 11" in stderr):
        return Verdict(RUNTIME_ERROR, f"process limit: more than {limits.max_procs} processes ({last[:300]})")
    return Verdict(RUNTIME_ERROR, f"exit status {returncode}" + (f": {last[:300]}" if last else ""))
