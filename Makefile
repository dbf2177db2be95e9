# The two set-up commands: `make demo` and `make test`, each from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first and pinned: a looser requirement pulls GBs of CUDA wheels.
TORCH := torch==2.13.0

.PHONY: demo test install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m engine.random_checkpoint demo-checkpoint
	$(VENV)/bin/codegen-lsp generate --model demo-checkpoint --max-new-tokens 24 \
		--prompt 'def fibonacci(n):'

test: $(VENV)/.installed
	$(PY) -m pytest -q
