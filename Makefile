# Two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv with the interpreter named by PYTHON (3.11 or newer).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "javia needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev,sim]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/javia demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q --durations=20

# What CI runs before the tests (.ci/run); the same checks run at commit time
# with pre-commit (.pre-commit-config.yaml).
lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
