# The two set-up commands: `make demo` and `make test`, each from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first and pinned: a looser requirement pulls GBs of CUDA wheels.
TORCH := torch==2.13.0

.PHONY: demo test test-compiled install editors-install e2e-vscode e2e-remote

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The suggestion of the shipped demo model (engine/demo_model), as an editor would show it.
demo: $(VENV)/.installed
	@echo "--- codegen-lsp complete examples/demo.py --line 3 --character 8 (the suggestion on the empty line inside fibonacci()):"
	$(VENV)/bin/codegen-lsp complete examples/demo.py --line 3 --character 8

test: $(VENV)/.installed editors-install
	$(PY) -m pytest -q

# The torch.compile checks that `make test` leaves out (marker `compiled`: ~2 min on 2 cores); CI runs both.
test-compiled: $(VENV)/.installed
	$(PY) -m pytest -q -m compiled

# The VS Code extension's packages (the Neovim binary comes with the test extra).
VSCODE := editors/vscode
editors-install: $(VSCODE)/node_modules/.installed
$(VSCODE)/node_modules/.installed: $(VSCODE)/package-lock.json
	@if command -v npm >/dev/null; then \
		cd $(VSCODE) && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	else echo "npm not found: the VS Code tests will be skipped"; fi

# Opt-in: the .vsix in a real VS Code (code-server) driven by chromium; see README "VS Code".
e2e-vscode: $(VENV)/.installed editors-install
	$(VSCODE)/e2e/run.sh

# The remote backends against real llama.cpp servers, built once into ~/.cache/codegen-lsp/bench-peers and
# reused after: llama-cpp-python's (pip, ~15 min) for backend openai, llama-server (cmake, ~30 min on 2 cores)
# for backend llama.cpp; `make test` runs the same tests when those builds are there.
e2e-remote: $(VENV)/.installed
	$(PY) tests/remote_server.py --setup
	$(PY) -m pytest -q -s tests/test_remote_e2e.py tests/test_remote.py
