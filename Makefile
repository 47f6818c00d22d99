# The two commands a fresh machine needs: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test test-fast test-tools lint venv

$(BIN)/tailnetd: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $@

venv: $(BIN)/tailnetd

serve: venv
	$(BIN)/tailnetd serve

# The TLS tests run Let's Encrypt's pebble test CA and real nginx/Caddy proxies
# on loopback; all three come from Debian (CI runs as root on a fresh machine).
test-tools:
	@command -v pebble >/dev/null && command -v caddy >/dev/null && command -v nginx >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	     pebble nginx-light caddy)
# The store tests run their own PostgreSQL (initdb + pg_ctl in a temp dir, see
# tests/pgserver.py); the system service the package sets up is stopped and disabled.
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends postgresql \
	  && { service postgresql stop; update-rc.d postgresql disable; } >/dev/null 2>&1; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null; }

test: venv test-tools
	$(BIN)/python -m tests.tailscale_bin
	$(BIN)/python -m tests.gitops_pusher_bin
	$(BIN)/python -m pytest -p no:cacheprovider

test-fast: venv
	$(BIN)/python -m pytest -p no:cacheprovider -m "not e2e and not load"

# ruff (lint + format) and mypy --strict over gitctl/ and server/, as pyproject says.
lint: venv
	$(BIN)/ruff check gitctl server tests bench
	$(BIN)/ruff format --check gitctl server tests bench
	$(BIN)/mypy
