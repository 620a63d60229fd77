# Every target bootstraps .venv itself (through `install`), so a fresh machine needs only make + python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browsers demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Chromium for the browser tests (Debian package; the machine has no other browser source).
browsers:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

demo: install
	$(BIN)/cloudrec demo

test: install browsers
	$(BIN)/lint-imports
	$(BIN)/mypy src/cloudrec
	$(BIN)/ruff check --select F src tests bench
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info demo-out
