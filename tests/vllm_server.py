"""vLLM's OpenAI server for the tests, started the way a user starts it: `tessy serve ROLE --engine vllm`
on 127.0.0.1 (a free port), stopped as a user stops it (Ctrl-C or `kill`).

vLLM is the one `tessy serve --engine vllm` finds (tessy.serve_vllm.find_vllm): `$TESSY_VLLM_PYTHON`,
tessy's own Python, else `.venv-vllm/` (`make test` installs vLLM's CPU build there with
scripts/install_vllm.sh). Where a GPU and the `vllm` wheel are present, the same tests run on it. Tests
that need vLLM skip, saying so, where there is none.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from llama_server import free_port

from tessy.serve import wait_until_healthy

# The first start on a machine compiles the model (minutes on two busy cores); later starts find
# vLLM's compile cache.
START_TIMEOUT_S = 900.0


def find() -> tuple[str | None, str]:
    """The Python that has vLLM, or None and why there is none."""
    from tessy.serve_vllm import find_vllm

    try:
        return str(find_vllm().python), ""
    except FileNotFoundError as e:
        return None, str(e)


class VLLMServer:
    """`tessy serve ROLE --engine vllm --port P --parallel N`, its output in `log_path`."""

    def __init__(self, role: str, log_path: Path, parallel: int = 16, port: int | None = None,
                 extra: tuple[str, ...] = ()):
        self.role, self.log_path = role, Path(log_path)
        self.port = port or free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        self.cmd = [sys.executable, "-m", "tessy.cli", "serve", role, "--engine", "vllm", "--port", str(self.port),
                    "--parallel", str(parallel), "--max-model-len", "4096", "--kv-cache-gib", "1", "--threads", "1",
                    *extra]
        self.proc: subprocess.Popen | None = None

    def start(self) -> VLLMServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait(self, timeout_s: float = START_TIMEOUT_S) -> VLLMServer:
        if not wait_until_healthy(self.root, self.proc, timeout_s):
            self.kill()
            raise RuntimeError(f"vLLM for the {self.role} did not come up ({' '.join(self.cmd)}):\n"
                               f"{self.log()[-4000:]}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def post(self, path: str, body: dict, timeout_s: float = 300.0) -> dict:
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            return json.loads(r.read())

    def metrics(self) -> dict[str, float]:
        """vLLM's Prometheus counters, summed over their labels (`vllm:prefix_cache_hits_total`, ...)."""
        with urllib.request.urlopen(self.root + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("vllm:"):
                name, _, value = line.rpartition(" ")
                key = name.split("{", 1)[0]
                out[key] = out.get(key, 0.0) + float(value)
        return out

    def signal(self, sig: int) -> None:
        """Send `sig` to `tessy serve` alone (a terminal's Ctrl-C reaches only tessy: the server runs in
        a process group of its own)."""
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        """Ctrl-C, as a user stops it; its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode
