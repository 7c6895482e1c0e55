# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STORE := $(CURDIR)/traintape-store
CHROMIUM := /usr/bin/chromium
# The dashboard's charting library: plotly.js's "basic" bundle (scatter only, 1.2 MB) from the npm
# registry, the same plotly.js version as the `plotly` package's full 4.8 MB bundle, which
# traintape/ui/server.py serves when this one is absent (no npm): 1 s less before a first chart.
PLOTLY_BASIC := traintape/ui/static/vendor/plotly-basic.min.js
PLOTLY_BASIC_VERSION := 4.1.1
PLOTLY_BASIC_SHA256 := 99784e3abfb07b142a15e521a439e6d9addceadb3f79553fd24c72774f0649ba
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install browser java plotly demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# constraints.txt pins the CPU torch wheel; pyproject.toml keeps a range for GPU users.
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) $(CHROMIUM) java plotly

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

# Fetched with npm into a temporary folder, checked against its pinned sha256, then moved into
# place (never a partial file). Without npm, or when the fetch or the check fails (said), the
# dashboard serves the plotly package's bundle: slower to a first chart, nothing else differs.
plotly:
	@if [ -f $(PLOTLY_BASIC) ]; then :; \
	elif command -v npm >/dev/null; then \
	  tmp=$$(mktemp -d) && \
	  (cd $$tmp && npm pack -q plotly.js-basic-dist-min@$(PLOTLY_BASIC_VERSION) >/dev/null && \
	   tar xzf plotly.js-basic-dist-min-$(PLOTLY_BASIC_VERSION).tgz) && \
	  echo "$(PLOTLY_BASIC_SHA256)  $$tmp/package/plotly-basic.min.js" | sha256sum -c --quiet && \
	  mkdir -p $(dir $(PLOTLY_BASIC)) && \
	  cp $$tmp/package/plotly-basic.min.js $(PLOTLY_BASIC).tmp && \
	  cp $$tmp/package/LICENSE $(dir $(PLOTLY_BASIC))LICENSE.plotly && \
	  mv $(PLOTLY_BASIC).tmp $(PLOTLY_BASIC) || \
	  echo "plotly.js basic bundle not installed (see above): the plotly package's is served"; \
	  rm -rf $$tmp $(PLOTLY_BASIC).tmp; \
	else echo "no npm: the dashboard serves the plotly package's full bundle (slower first chart)"; fi

demo: $(STAMP)
	$(BIN)/python examples/run_demo.py --store $(DEMO_STORE)

test: $(STAMP) $(CHROMIUM) java plotly
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
