# Two commands are all a new user needs: `make demo` and `make test`.
# Both create or refresh .venv; the install is skipped when pyproject.toml and constraints.txt are unchanged.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
# pip notes about unreachable local index folders of some build machines are noise, not errors
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_CONFIG ?= configs/pipeline/demo.yaml
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install browser demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 $(PIP_QUIET)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,serve,cluster]' $(PIP_QUIET)
	@touch $(STAMP)

# The page test drives a real Chromium: Debian's chromium + chromium-driver, installed here when missing and possible
# (root and apt-get); elsewhere the test skips and prints why.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium + chromium-driver (apt-get) for the page test"; \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver || { apt-get update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }; } >/dev/null 2>&1 || \
	      echo "note: apt-get could not install chromium; the page test will skip"; \
	  else echo "note: chromium/chromedriver missing and not installable here (needs root + apt-get); the page test will skip"; fi; }

demo: install
	$(VENV)/bin/chex pipeline run --config $(DEMO_CONFIG)

test: install browser
	$(PY) -m pytest -q

test-fast: install browser
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) runs demo_run .pytest_cache
