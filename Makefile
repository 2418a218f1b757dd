# Two commands matter to a new user: `make demo` and `make test`. Both build what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
STUBS := build/stubs
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all demo test lint firmware bench clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

# The console on the virtual board (Ctrl-C stops board and console).
demo: $(STAMP)
	$(BIN)/ionm demo

# Debian's chromium for the console's browser tests (Playwright drives it; it never downloads a browser),
# and poppler's pdftoppm to look at the PDF reports.
$(CHROMIUM) /usr/bin/pdftoppm:
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils >/dev/null

# The whole suite, slow tests included; pytest-timeout turns a hang into a failure. Tests that only compute run
# on two workers; those that pace something in real time (the virtual board, browsers, servers) then run alone
# (tests/conftest.py PARALLEL_FILES says why). Both phases run; either failing fails the target.
test: $(STAMP) $(CHROMIUM) /usr/bin/pdftoppm
	s1=0; s2=0; \
	$(BIN)/python -m pytest -q -n 2 -m parallel $(PYTEST_ARGS) || s1=$$?; \
	$(BIN)/python -m pytest -q -m "not parallel" $(PYTEST_ARGS) || s2=$$?; \
	for s in $$s1 $$s2; do [ $$s = 0 ] || [ $$s = 5 ] || exit $$s; done  # 5: PYTEST_ARGS left a phase empty

$(STUBS)/.installed: Makefile
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --target $(STUBS) \
	    micropython-rp2-rpi-pico2-stubs==1.29.0.post1 micropython-stdlib-stubs==1.29.0.post2
	touch $@

# ruff everywhere; mypy on the host package; the host's import layers; the firmware against the RP2350 stubs.
lint: $(STAMP) $(STUBS)/.installed
	$(BIN)/ruff check .
	MYPYPATH=host:hardware $(BIN)/mypy host/ionm hardware/ionm_hw
	$(BIN)/lint-imports --no-logo --no-cache
	$(BIN)/python tools/typecheck_firmware.py --stubs $(STUBS)

# Every firmware and protocol module compiled for the board's architecture.
firmware: $(STAMP)
	$(BIN)/python tools/build_firmware.py --out build/firmware

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
