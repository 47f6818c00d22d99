# The two commands a fresh machine needs: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test test-fast venv

$(BIN)/tailnetd: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/tailnetd

serve: venv
	$(BIN)/tailnetd serve

test: venv
	$(BIN)/python -m tests.tailscale_bin
	$(BIN)/python -m pytest -p no:cacheprovider

test-fast: venv
	$(BIN)/python -m pytest -p no:cacheprovider -m "not e2e"
