# `make demo`: create .venv, install, train the quickstart job on the built-in tiny model.
# `make test`: the same set-up plus dev tools, then lint and the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU-only machines get the CPU build of PyTorch first; an unpinned `torch` would pull a multi-GB CUDA build.
TORCH_CPU := torch==2.13.0

.PHONY: install install-dev browser demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA found: installing the default (CUDA) PyTorch build and the CUDA extras (bitsandbytes)"; \
	else \
		echo "no CUDA: installing the CPU build $(TORCH_CPU)"; \
		$(BIN)/python -m pip install -q "$(TORCH_CPU)"; \
	fi
	$(BIN)/python -m pip install -q -e .
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/python -m pip install -q -e ".[cuda]"; \
	fi
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[dev]"
	@$(MAKE) --no-print-directory browser
	touch $@

# The web UI's browser tests drive Debian's Chromium through chromedriver (no browser download). Installing them
# needs root; without it, the README says which packages to install.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "chromium and chromedriver found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver (browser tests)"; \
		(apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null)) || \
		echo "WARNING: could not install chromium; the browser tests will be skipped"; \
	else \
		echo "WARNING: no chromium/chromedriver and not root: run 'sudo apt-get install chromium chromium-driver'"; \
		echo "         (the browser tests are skipped without them)"; \
	fi

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/zlora train configs/quickstart.yaml

lint: install-dev
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

test: install-dev lint
	$(BIN)/python -m pytest -q -m "not gpu"

clean:
	rm -rf $(VENV) output .pytest_cache
