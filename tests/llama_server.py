"""llama.cpp's C++ `llama-server` for the tests: where its binary is, and a server on 127.0.0.1 that a
test starts (on a free port) and stops.

The binary is the one `tessy serve` finds (tessy.serve.find_llama_server): `$TESSY_LLAMA_SERVER`, else
`llama-server` beside this interpreter (`make test` builds it there with scripts/build_llama_server.sh),
else one on PATH. Tests that need it skip, saying so, where there is none.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tessy.serve import find_llama_server, free_port, wait_until_healthy  # noqa: F401  (free_port: for the tests)


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
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> LlamaServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait_until_healthy(self.root, self.proc, timeout_s):
            return self
        self.kill()
        raise RuntimeError(f"llama-server did not come up ({' '.join(self.cmd)}):\n{self.log()[-3000:]}")

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
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

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
