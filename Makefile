# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# axe-core for the browser tests, from the npm registry, pinned by tests/axe/package-lock.json.
AXE_STAMP := tests/axe/node_modules/.installed
SYSPKGS := chromium chromium-driver poppler-utils qpdf fonts-dejavu-core
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test lint typecheck pytest sysdeps migrate seed bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# System packages the tests need, installed only when missing (root on these machines; sudo elsewhere).
sysdeps:
	@missing=""; for p in $(SYSPKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Node is not a Debian package on these machines (NodeSource's nodejs bundles npm), so it is required, not installed.
$(AXE_STAMP): tests/axe/package.json tests/axe/package-lock.json
	@command -v npm >/dev/null || { echo "the browser tests need node (>= 18) and npm on PATH, for axe-core"; exit 1; }
	npm ci --prefix tests/axe --no-audit --no-fund --loglevel=error
	@touch $@

run: $(STAMP)
	$(PY) -m forms.embedded

migrate: $(STAMP)
	$(PY) -m tasks.database migrate

seed: $(STAMP)
	$(PY) -m tasks.database seed

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) sysdeps $(AXE_STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache tests/artifacts tests/axe/node_modules
