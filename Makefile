# Every target bootstraps .venv itself (through `install`), so a fresh machine needs only make + python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-packages demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests use, which the machine has no other source for: Chromium (browser tests)
# and Noto Sans CJK, i.e. Source Han Sans (CJK text watermarks).
SYSTEM_PACKAGES := chromium fonts-noto-cjk
CJK_FONT := /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc
system-packages:
	@(command -v chromium >/dev/null 2>&1 && test -f $(CJK_FONT)) || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null)

demo: install
	$(BIN)/cloudrec demo

test: install system-packages
	$(BIN)/lint-imports
	$(BIN)/mypy src/cloudrec
	$(BIN)/ruff check --select F src tests bench
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info demo-out
