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

# More flags: make serve ARGS="--listen 127.0.0.1:9090 --data /tmp/td"
serve: venv
	$(BIN)/tailnetd serve $(ARGS)

# The TLS tests run Let's Encrypt's pebble test CA and real nginx/Caddy proxies
# on loopback; `tailscale ssh` runs OpenSSH's ssh. All come from Debian (CI runs
# as root on a fresh machine).
test-tools:
	@command -v chromium >/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)
	@command -v ssh >/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-client)
	@command -v pebble >/dev/null && command -v caddy >/dev/null && command -v nginx >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	     pebble nginx-light caddy \
	  && for s in nginx caddy; do { service $$s stop; update-rc.d $$s disable; \
	       systemctl disable --now $$s; } >/dev/null 2>&1; done; true; }
# The operator page is tested in Debian's chromium (driven by playwright).
	@command -v chromium >/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)
# The store tests run their own PostgreSQL (initdb + pg_ctl in a temp dir, see
# tests/pgserver.py); the system service the package sets up is stopped and disabled.
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends postgresql \
	  && { service postgresql stop; update-rc.d postgresql disable; } >/dev/null 2>&1; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null; }
# The replica test puts HAProxy (TCP mode, its own config, run in the foreground)
# in front of two servers; the system service the package starts is stopped.
	@command -v haproxy >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends haproxy \
	  && { service haproxy stop; update-rc.d haproxy disable; \
	       systemctl disable --now haproxy; } >/dev/null 2>&1; command -v haproxy >/dev/null; }

# --all: 1.96.4 from PyPI, and 1.78/1.80/1.102 built with Go into
# ~/.cache/tailnetd/ (cold: minutes each; warm: instant). See docs/clients.md.
test: venv test-tools
	$(BIN)/python -m tests.tailscale_bin --all
	$(BIN)/python -m tests.gitops_pusher_bin
	$(BIN)/python -m tests.goclient_bin
	$(BIN)/python -m tests.dex_bin
	$(BIN)/python -m pytest -p no:cacheprovider

test-fast: venv
	$(BIN)/python -m pytest -p no:cacheprovider -m "not e2e and not load"

# ruff (lint + format) and mypy --strict over gitctl/ and server/, as pyproject says.
lint: venv
	$(BIN)/ruff check gitctl server tests bench
	$(BIN)/ruff format --check gitctl server tests bench
	$(BIN)/mypy
