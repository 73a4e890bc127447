# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The first Python that the project supports (requires-python >=3.11,<3.13) and that actually runs.
PYTHON ?= $(shell for p in python3 python3.12 python3.11; do \
  $$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 13))' 2>/dev/null && { command -v $$p; break; }; \
  done)
# What the app needs at run time (WeasyPrint renders the paper forms with Pango and the DejaVu fonts it
# embeds), and what only the tests need beside it.
RUNPKGS := libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core
TESTPKGS := chromium chromium-driver poppler-utils qpdf
# axe-core for the browser tests, from the npm registry, pinned by tests/axe/package-lock.json.
AXE_STAMP := tests/axe/node_modules/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test lint typecheck pytest sysdeps rundeps migrate seed bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || test -n "$(PYTHON)" || { echo 'needs Python 3.11 or 3.12 (python3)'; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# System packages, installed only when missing (root on these machines; sudo elsewhere).
rundeps:
	@$(MAKE) --no-print-directory _apt PKGS="$(RUNPKGS)"

sysdeps:
	@$(MAKE) --no-print-directory _apt PKGS="$(RUNPKGS) $(TESTPKGS)"

_apt:
	@missing=""; for p in $(PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# These machines have NodeSource's nodejs (npm included); elsewhere Debian's nodejs and npm are installed.
$(AXE_STAMP): tests/axe/package.json tests/axe/package-lock.json
	@command -v npm >/dev/null || $(MAKE) --no-print-directory _apt PKGS="nodejs npm"
	npm ci --prefix tests/axe --no-audit --no-fund --loglevel=error
	@touch $@

run: $(STAMP) rundeps
	$(PY) -m forms.embedded

migrate: $(STAMP)
	$(PY) -m tasks.adapters.database migrate

seed: $(STAMP)
	$(PY) -m tasks.adapters.database seed

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) sysdeps $(AXE_STAMP)
	$(PY) -m tests.parallel $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache tests/artifacts tests/axe/node_modules
