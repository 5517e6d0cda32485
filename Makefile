# Two commands for a newcomer: `make run` and `make test`. Both do the whole set-up
# (virtualenv, pinned Python packages, Azurite from npm) and skip what is already done.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
IAC_VENV := .venv-iac
IAC_STAMP := $(IAC_VENV)/.installed

.PHONY: run test setup lint bench clean chromium shellcheck iac

setup: $(PIP_STAMP) $(NODE_STAMP)

$(PIP_STAMP): requirements.txt requirements-dev.txt constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(IAC_STAMP): requirements-iac.txt
	@test -x $(IAC_VENV)/bin/python || $(PYTHON) -m venv $(IAC_VENV)
	$(IAC_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-iac.txt
	@touch $@

# checkov on infra/ in its own virtualenv (its dependencies clash with the app's pins). checkov exits 0
# on files it cannot parse; check_parsing.py fails on any but app/graph-app.bicep (see infra/README.md).
# check_infra.py checks the values checkov cannot know (endpoints, roles, Flex, telemetry); shellcheck
# the deployment scripts.
iac: $(IAC_STAMP) shellcheck
	@mkdir -p .run
	$(IAC_VENV)/bin/checkov -d infra --framework bicep -o cli -o json --output-file-path console,.run/checkov.json
	$(IAC_VENV)/bin/python infra/scripts/check_parsing.py .run/checkov.json
	$(IAC_VENV)/bin/python infra/scripts/check_infra.py
	shellcheck infra/scripts/*.sh scripts/*.sh

# Browser tests drive Debian's Chromium; a browser is never downloaded by a test tool.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

shellcheck:
	@command -v shellcheck >/dev/null || (apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null)

# `make run USERS=100000 GROUPS=2000` serves a big Contoso (Load more, a 2,000-group list, big runs).
STACK_ARGS := $(if $(USERS),--users $(USERS)) $(if $(GROUPS),--groups $(GROUPS))
run: setup
	$(PY) -m devtools.stack $(STACK_ARGS) $(ARGS)

# On every core (pytest-xdist); tests that share state carry an xdist_group and stay together.
# One test at a time: `$(PY) -m pytest -p no:xdist`.
test: setup chromium iac
	$(PY) -m pytest -n auto --dist loadgroup

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m devtools.bench

clean:
	rm -rf $(VENV) $(IAC_VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .run
