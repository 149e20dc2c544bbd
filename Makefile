# Two commands do everything on a fresh Debian machine (as root):
#   make run    installs what the daemon needs and runs it on loopback, null auth
#   make test   installs what the tests need (reference peers included) and runs them
PYTHON ?= python3
VENV ?= .venv
PORT ?= 2002
PEERS ?= $(CURDIR)/.peers
BIN = $(VENV)/bin

.PHONY: run test unit lint peers system-deps system-deps-run install install-test bench clean

system-deps:
	scripts/install-system-deps.sh test

system-deps-run:
	scripts/install-system-deps.sh run

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: system-deps-run $(BIN)/python
	$(BIN)/pip install -q .

install-test: system-deps $(BIN)/python
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat

run: install
	cd /tmp && $(CURDIR)/$(BIN)/twistd -n --pidfile= rpcapd --listen tcp:$(PORT):interface=127.0.0.1 --null-auth

peers: system-deps
	scripts/build-reference-peers.sh $(PEERS)

lint: install-test
	$(BIN)/ruff check rpcapsvc twisted benchmarks
	$(BIN)/ruff format --check rpcapsvc twisted benchmarks
	$(BIN)/mypy

unit: install-test
	RPCAPSVC_PEERS=$(PEERS) $(BIN)/trial rpcapsvc

test: install-test peers lint unit

bench: install-test peers
	$(BIN)/python benchmarks/forwarding.py

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp*
