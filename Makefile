# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STORE := $(CURDIR)/traintape-store
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install browser java demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# constraints.txt pins the CPU torch wheel; pyproject.toml keeps a range for GPU users.
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) $(CHROMIUM) java

# The dashboard's browser tests (tests/test_ui_browser.py) drive Debian's Chromium through
# Playwright's Python package, never a browser build Playwright downloads. No-op once installed.
$(CHROMIUM):
	if command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "no apt-get: install Chromium at $(CHROMIUM), else the browser tests skip"; fi

browser: $(CHROMIUM)

# tests/test_spark.py reads the store with pyspark (the dev extra), which needs a Java runtime:
# Debian's default-jre-headless (Java 17). No-op when `java` is on PATH.
java:
	if command -v java >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; \
	else echo "no apt-get: install Java 17 (java on PATH), else the Spark tests skip"; fi

demo: $(STAMP)
	$(BIN)/python examples/run_demo.py --store $(DEMO_STORE)

test: $(STAMP) $(CHROMIUM) java
	$(BIN)/ruff check traintape tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The quick loop while working: no test that starts or kills a process (under a minute).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check traintape tests benchmarks examples
	$(BIN)/ruff format --check traintape tests benchmarks examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) traintape-store build *.egg-info
