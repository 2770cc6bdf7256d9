"""Serving a GGUF model with llama.cpp's `llama-server`, set up for requests that take turns.

A TESSY sample sends each model many short requests, each one the previous prompt plus a turn. Two
settings decide what such a request costs on `llama-server`:

- `--parallel N` slots batch the requests in flight, each slot with its own prompt cache.
- `--swa-full` for a model with sliding-window attention (Gemma 3, gpt-oss): without it llama.cpp
  keeps only a window of those layers' cache and computes the last turn, and a few tokens before it,
  again on every request that extends the previous one. `server_command` adds it where the GGUF's
  metadata names a sliding window.

`f16_copy` writes a quantized GGUF's weights as F16 (the same values, dequantized once, cached under
`TESSY_CACHE`): on a CPU llama.cpp may read F16 faster than a 4-bit format. The embedded SmolLM2's
Q4_1 file reads its prompts at about half the speed of its F16 copy on one thread, on AVX-512 and on
AVX2 machines alike. Which form is faster where tessy runs is measured, not assumed:
tessy/serve_weights.py.

`ServerProcess` is the one lifecycle of every server that tessy, its tests and its benchmarks start:
start it with its output in a log or echoed, wait until it answers `/health` (or say why it did not,
with its output's last lines), stop it (SIGTERM, then SIGKILL), and never outlive the process that
started it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

BUILD_HINT = "build it with `bash scripts/build_llama_server.sh .venv/bin/llama-server` or set TESSY_LLAMA_SERVER"


def find_llama_server(given: str | None = None) -> Path:
    """The `llama-server` binary: `given`, else `$TESSY_LLAMA_SERVER`, else the one beside this
    interpreter (where `make test` builds it), else one on PATH."""
    for candidate, what in ((given, "--llama-server"), (os.environ.get("TESSY_LLAMA_SERVER"), "TESSY_LLAMA_SERVER")):
        if candidate:
            if not os.access(candidate, os.X_OK):
                raise FileNotFoundError(f"{what}={candidate} is not an executable file")
            return Path(candidate)
    beside = Path(sys.executable).parent / "llama-server"
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    raise FileNotFoundError(f"no llama-server binary: {BUILD_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until_healthy(root: str, proc, timeout_s: float | None = None) -> bool:
    """Poll `root`/health until the server answers 200 (True), or until `proc` (its process) exits or
    `timeout_s` passes (False)."""
    import time
    import urllib.request

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while proc.poll() is None and (deadline is None or time.monotonic() < deadline):
        try:
            with urllib.request.urlopen(root + "/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:  # not listening yet, or 503 while the model loads
            time.sleep(0.2)
    return False


# GGUF value types (gguf.GGUFValueType) and how a scalar of each is read: struct code and size.
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
            7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_STRING, _ARRAY = 8, 9


def gguf_facts(path: Path) -> dict:
    """What the GGUF's header says: `architecture`, `sliding_window` (None without one) and the
    tensor types with their counts.

    The header is read in one pass that skips the values it does not keep: `gguf.GGUFReader` turns
    every array into numpy views, and the 262k-token vocabulary of the embedded teacher takes it over
    ten seconds."""
    import struct

    from gguf import GGMLQuantizationType

    def read(f, code: str, size: int):
        return struct.unpack(code, f.read(size))[0]

    def string(f) -> bytes:
        return f.read(read(f, "<Q", 8))

    def skip(f, kind: int) -> None:
        if kind == _STRING:
            f.seek(read(f, "<Q", 8), 1)
        elif kind == _ARRAY:
            inner, count = read(f, "<I", 4), read(f, "<Q", 8)
            if inner in _SCALARS:
                f.seek(_SCALARS[inner][1] * count, 1)
            else:
                for _ in range(count):
                    skip(f, inner)
        else:
            f.seek(_SCALARS[kind][1], 1)

    values: dict[str, object] = {}
    types: dict[str, int] = {}
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF" or read(f, "<I", 4) not in (2, 3):
            raise ValueError(f"{path} is not a little-endian GGUF file of version 2 or 3")
        n_tensors, n_values = read(f, "<Q", 8), read(f, "<Q", 8)
        for _ in range(n_values):
            key, kind = string(f).decode(), read(f, "<I", 4)
            if kind == _STRING:
                values[key] = string(f).decode()
            elif kind in _SCALARS:
                values[key] = read(f, *_SCALARS[kind])
            else:
                skip(f, kind)
        for _ in range(n_tensors):
            string(f)  # the name
            f.seek(8 * read(f, "<I", 4), 1)  # its dimensions
            name = GGMLQuantizationType(read(f, "<I", 4)).name
            types[name] = types.get(name, 0) + 1
            f.seek(8, 1)  # its offset
    arch = values["general.architecture"]
    window = values.get(f"{arch}.attention.sliding_window")
    return {"architecture": arch, "sliding_window": (int(window) or None) if window else None, "tensor_types": types}


def f16_copy(path: Path) -> Path:
    """An F16 copy of GGUF `path` (F32 tensors stay F32), written once under `TESSY_CACHE`/gguf."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    from tessy.models import cache_dir

    path = Path(path)
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "gguf" / f"{path.stem}.f16-{key}.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    reader = GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    fd, part = tempfile.mkstemp(dir=out.parent, suffix=".part")
    os.close(fd)
    try:
        writer = GGUFWriter(part, arch)
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name == "general.architecture":
                continue  # the writer writes the header and the architecture itself
            if name == "general.file_type":
                writer.add_file_type(1)  # LLAMA_FTYPE_MOSTLY_F16
            elif field.types[0] == GGUFValueType.ARRAY:
                writer.add_key_value(name, field.contents(), field.types[0], sub_type=field.types[-1])
            else:
                writer.add_key_value(name, field.contents(), field.types[0])
        for tensor in reader.tensors:
            shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest dimension first
            if tensor.tensor_type == GGMLQuantizationType.F32:
                writer.add_tensor(tensor.name, np.asarray(tensor.data).reshape(shape),
                                  raw_dtype=GGMLQuantizationType.F32)
            else:
                values = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
                writer.add_tensor(tensor.name, values.astype(np.float16), raw_dtype=GGMLQuantizationType.F16)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(part, out)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    return out


def server_command(binary: Path, gguf: Path, *, host: str = "127.0.0.1", port: int = 8010, parallel: int = 8,
                   ctx_per_slot: int = 4096, threads: int | None = None, extra: tuple[str, ...] = (),
                   swa_full: bool = True) -> list[str]:
    """The `llama-server` command line for `gguf`: `parallel` slots of `ctx_per_slot` tokens each,
    `/metrics` on, and `--swa-full` where the model has a sliding window (unless `swa_full` is false)."""
    cmd = [str(binary), "-m", str(gguf), "--host", host, "--port", str(port), "--parallel", str(parallel),
           "-c", str(parallel * ctx_per_slot), "--metrics", "--no-webui"]
    if threads:
        cmd += ["-t", str(threads)]
    if swa_full and gguf_facts(gguf)["sliding_window"] and "--swa-full" not in extra:
        cmd.append("--swa-full")
    return cmd + list(extra)


def die_with_parent() -> None:
    """In the server's process before it starts: on Linux, ask the kernel to kill it when the process
    that started it dies, so a `tessy serve` killed outright leaves no server behind. SIGKILL, not
    SIGTERM: vLLM's server, told to stop while its client still holds requests open, waited for them
    for good after its engine had gone, and kept its port (vLLM's engine process dies with it). The
    kernel's "parent" is the thread that started the server: start servers from a thread that
    outlives them (the main thread)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# A watchdog beside the server: when the process that started it goes away (it is then re-parented),
# it kills the server's whole process group. vLLM's engine runs in a child of its server, which no
# parent-death signal of ours reaches. It leaves by itself once the group is gone, so a server that
# died on its own leaves no watchdog behind to signal a group id the system has given out again.
_WATCHDOG = """import os, signal, sys, time
group, parent = int(sys.argv[1]), int(sys.argv[2])
while os.getppid() == parent:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        sys.exit()
    time.sleep(0.5)
try:
    os.killpg(group, signal.SIGKILL)
except ProcessLookupError:
    pass
"""

TAIL_LINES = 20  # of the server's output, in a ServerError


class ServerError(RuntimeError):
    """A server that exited, or did not answer its health check in time, before it served. `reason` is
    one line; the message adds the command and the last lines of the server's output."""

    def __init__(self, reason: str, cmd: list[str], output: list[str]):
        import shlex

        self.reason, self.cmd, self.output = reason, cmd, output
        tail = "\n".join("  " + line for line in output[-TAIL_LINES:])
        super().__init__(f"{reason}\n  $ {shlex.join(cmd)}" + (f"\n{tail}" if tail else ""))


class ServerProcess:
    """A model server (`llama-server`, vLLM's OpenAI server, `tessy serve`, a simulated engine) that
    tessy starts, waits for and stops: the one lifecycle of every server tessy, its tests and its
    benchmarks start.

    The server runs in a process group of its own, so a Ctrl-C in the terminal reaches tessy alone and
    the stop is always tessy's: SIGTERM to the whole group (vLLM's engine runs in a child process),
    then SIGKILL after `grace_s`. When tessy dies without stopping it (SIGKILL), a watchdog process
    kills the group, and on Linux the server itself gets SIGKILL too (`die_with_parent`). Its output
    goes to `log` (a path, appended to), or with `echo` to this process's stdout; either way the last
    lines are kept for `failure`. `name` names it in errors. After it has stopped (or been killed) it
    can be started again, on the same command."""

    def __init__(self, cmd: list[str], root: str, env: dict | None = None, log: Path | None = None,
                 grace_s: float = 30.0, name: str | None = None):
        self.cmd, self.root, self.env, self.log, self.grace_s = cmd, root, env, log, grace_s
        self.name = name or Path(cmd[0]).name
        self.proc = None
        self.watchdog = None
        self.tail: list[str] = []
        self._reader = None

    def start(self, echo: bool = False) -> "ServerProcess":
        import os
        import subprocess
        import threading

        out = open(self.log, "ab") if self.log is not None else subprocess.PIPE
        try:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
        finally:
            if self.log is not None:
                out.close()
        self.watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(self.proc.pid), str(os.getpid())],
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.tail, self._reader = [], None
        if self.log is None:
            self._reader = threading.Thread(target=self._read, args=(echo,), daemon=True)
            self._reader.start()
        return self

    def _read(self, echo: bool) -> None:
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.tail = (self.tail + [line.rstrip()])[-400:]
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()

    def wait_until_healthy(self, timeout_s: float | None = None) -> bool:
        """Whether the server answered `root`/health with 200 before it exited or `timeout_s` passed."""
        return wait_until_healthy(self.root, self.proc, timeout_s)

    def ready(self, timeout_s: float | None = None) -> "ServerProcess":
        """This server, once it answers its health check. Where it exits first or `timeout_s` passes, it
        is stopped and ServerError says why: its exit code and `failure`, or the time it was given."""
        if self.wait_until_healthy(timeout_s):
            return self
        code = self.proc.poll()
        self.stop()
        why = (f"exited with code {code}: {self.failure()}" if code is not None
               else f"gave no answer at {self.root}/health in {timeout_s:g} s")
        raise ServerError(f"{self.name} did not start: {why}", self.cmd, self.output())

    def serve(self, on_ready=None) -> int | None:
        """Run the server in the foreground, its output echoed: `on_ready()` once it is healthy, then
        wait until it exits (its exit code), or until this process is told to stop by Ctrl-C or SIGTERM
        (then the server is stopped, and None). Call it from the main thread."""
        import signal

        def stop(signum, frame):  # `kill`, or a job scheduler ending the job: stop the server as Ctrl-C does
            raise KeyboardInterrupt

        before = signal.signal(signal.SIGTERM, stop)
        try:
            self.start(echo=True)
            if self.wait_until_healthy() and on_ready is not None:
                on_ready()
            return self.wait()
        except KeyboardInterrupt:
            self.stop()
            return None
        finally:
            signal.signal(signal.SIGTERM, before)

    def wait(self) -> int:
        """Until the server exits by itself; its exit code."""
        code = self.proc.wait()
        self._reap()
        return code

    def output(self) -> list[str]:
        """The server's last lines of output."""
        if self.log is not None and Path(self.log).exists():
            return Path(self.log).read_text(errors="replace").splitlines()[-400:]
        return list(self.tail)

    def failure(self) -> str:
        """Why the server exited, as its output says it: its last two error messages (a log line at
        level ERROR, `SomeError: ...` with the line that goes on with it, llama.cpp's `error: ...`),
        without the tracebacks around them; else its last line."""
        import re

        lines = self.output()
        found: list[str] = []
        for n, line in enumerate(lines):
            logged = re.match(r"^(?:\(\w+ pid=\d+\) )?ERROR \S+ \S+ \[[^\]]*\] (.*)$", line)
            raised = re.match(r"^(?:[\w.]+\.)?([A-Z]\w*(?:Error|Exception)|error): (.+)$", line)
            if logged:
                message = logged.group(1)
                if message[:1].isspace() or message.startswith(("Traceback", "File ")):
                    continue  # a frame of a logged traceback
            elif raised:
                message = f"{raised.group(1)}: {raised.group(2)}"
                after = lines[n + 1] if n + 1 < len(lines) else ""
                if after.startswith(" ") and not after.strip().startswith(("File ", "^", "For further")):
                    message += " " + after.strip()
            else:
                continue
            message = message.strip()[:400]
            if message in found:
                found.remove(message)
            found.append(message)
        if found:
            return "; ".join(found[-2:])
        return next((x.strip() for x in reversed(lines) if x.strip()), "no output")

    def stop(self, sig: int | None = None) -> None:
        """`sig` (SIGTERM unless given) to the server's group, SIGKILL after `grace_s`; then whatever of
        the group is left."""
        import signal

        self._end(((sig or signal.SIGTERM, self.grace_s), (signal.SIGKILL, 10.0)))

    def kill(self) -> None:
        """SIGKILL to the server's group now, as a crash would end it."""
        import signal

        self._end(((signal.SIGKILL, 10.0),))

    def _end(self, steps) -> None:
        import os
        import subprocess

        if self.proc is None:
            return
        if self.proc.poll() is None:
            for sig, wait_s in steps:
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._reap()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _reap(self) -> None:
        """After the server's own process has ended: the rest of its group (vLLM's engine, if it
        outlived its server), the watchdog and the output reader."""
        import os
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.watchdog is not None and self.watchdog.poll() is None:
            self.watchdog.kill()
            self.watchdog.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)


def gguf_of(model: str, config: str | Path | None = None) -> Path:
    """The GGUF file of `model`: `student` or `teacher` (that role's model in `config`, by default
    the embedded one), an embedded model's name, or a `.gguf` path."""
    from tessy.models import EMBEDDED

    if model in ("student", "teacher"):
        from tessy.config import load_config

        model = getattr(load_config(config), model).spec.model
    if model in EMBEDDED:
        return EMBEDDED[model]()
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    raise FileNotFoundError(f"llama-server serves GGUF files, and {model!r} is not one (a Hugging Face checkpoint "
                            "converts with llama.cpp's convert_hf_to_gguf.py)")
