"""llama.cpp's C++ `llama-server` for the tests: where its binary is, and a server on 127.0.0.1 that a
test starts (on a free port) and stops, with tessy's own lifecycle (tessy.serve.ServerProcess: it dies
with the test run, whatever ends it).

The binary is the one `tessy serve` finds (tessy.serve.find_llama_server): `$TESSY_LLAMA_SERVER`, else
`llama-server` beside this interpreter (`make test` builds it there with scripts/build_llama_server.sh),
else one on PATH. Tests that need it skip, saying so, where there is none.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from tessy.serve import ServerProcess, find_llama_server, free_port


def find_binary() -> Path | None:
    """The llama-server to run (tessy.serve.find_llama_server), or None."""
    try:
        return find_llama_server()
    except FileNotFoundError:
        return None


def missing_reason() -> str:
    """Why there is no binary to run."""
    try:
        find_llama_server()
    except FileNotFoundError as e:
        return str(e)
    return ""


class LlamaServer:
    """`llama-server -m MODEL --host 127.0.0.1 --port P --parallel N -t THREADS --metrics -c CTX`, started
    (and started again after a kill) on one port, its output in `log_path`.

    `ctx` is the whole context, shared by the `parallel` slots."""

    def __init__(self, log_path: Path, model: Path | None = None, parallel: int = 4, threads: int = 1,
                 ctx: int = 8192, extra: tuple[str, ...] = (), binary: Path | None = None):
        if model is None:
            from tessy.models import _smollm2_gguf

            model = _smollm2_gguf()
        self.binary = binary or find_binary()
        if self.binary is None:
            raise FileNotFoundError(missing_reason())
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        self.cmd = [str(self.binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                    "--parallel", str(parallel), "-t", str(threads), "--metrics", "-c", str(ctx), *extra]
        self.log_path = Path(log_path)
        self.process = ServerProcess(self.cmd, self.root, log=self.log_path, grace_s=10.0, name="llama-server")

    @property
    def proc(self):
        """The server's process (subprocess.Popen), None before its first start."""
        return self.process.proc

    def start(self, timeout_s: float = 120.0) -> LlamaServer:
        """Started, and answering: tessy.serve.ServerError, with the log's last lines, where it is not."""
        self.process.start().ready(timeout_s)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.root + path, timeout=10) as r:
            return r.read()

    def post(self, path: str, body: dict, timeout_s: float = 120.0) -> dict:
        request = urllib.request.Request(self.root + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            return json.loads(r.read())

    def metrics(self) -> dict[str, float]:
        """The Prometheus counters and gauges of `/metrics` (`llamacpp:tokens_predicted_total`, ...)."""
        out = {}
        for line in self.get("/metrics").decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name.strip()] = float(value)
        return out

    def idle(self, timeout_s: float = 30.0) -> dict[str, float]:
        """Wait until no request is processing; the metrics then."""
        deadline = time.time() + timeout_s
        while True:
            m = self.metrics()
            if m.get("llamacpp:requests_processing", 0) == 0 or time.time() > deadline:
                return m
            time.sleep(0.05)

    def served(self) -> int:
        """Generation requests taken up so far (a slot logs "processing task" for each one)."""
        return self.log().count("processing task")

    def kill(self) -> None:
        """SIGKILL, as a crash ends it; `start` brings it back on the same port."""
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def started(log_path: Path, **kw) -> LlamaServer:
    """A running server, or a pytest skip that says why there is none."""
    import pytest

    if find_binary() is None:
        pytest.skip(missing_reason())
    return LlamaServer(log_path, **kw).start()


if __name__ == "__main__":  # python tests/llama_server.py: which binary the tests would run
    print(find_binary() or missing_reason())
