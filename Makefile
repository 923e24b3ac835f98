# The two commands the README starts with:
#   make demo   install into .venv and serve examples/hello.py on http://127.0.0.1:8080/
#   make test   install with test extras into .venv and run lint, types and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test browser lint typecheck pytest docs bench clean compiled pure

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The peers the benchmark measures against (gunicorn, waitress, granian, uWSGI, ampoule). uWSGI
# has no wheel: pip builds it, which needs a C compiler and the Python headers.
$(VENV)/.bench-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

# The pure hot modules of the HTTP path, compiled with mypyc (it ships with mypy, of the test
# extra; docs/dependencies.md says why). The extensions are built next to their sources, which stay
# the fallback: Python imports a module's extension before its .py, and without one (`make pure`,
# another Python version) the .py. Sources newer than their extensions: `make compiled` rebuilds
# them, and pytest refuses to run (tests/conftest.py).
MYPYC_MODULES := catalyzer/http/reader.py catalyzer/http/framing.py catalyzer/http/headers.py \
	catalyzer/http/pending.py catalyzer/http/spool.py catalyzer/http/progress.py \
	catalyzer/http/cgi.py catalyzer/http/uwsgi.py catalyzer/http/fastcgi.py catalyzer/wsgi/environ.py \
	catalyzer/split/frames.py catalyzer/split/router.py

compiled: $(VENV)/.compiled

$(VENV)/.compiled: $(VENV)/.test-installed Makefile $(addprefix src/,$(MYPYC_MODULES))
	rm -f src/*__mypyc*.so $(addprefix src/,$(MYPYC_MODULES:.py=.*.so))
	mkdir -p build
	cd src && ../$(BIN)/mypyc --config-file ../pyproject.toml --cache-dir ../build/mypyc-cache \
		$(MYPYC_MODULES) > ../build/mypyc.log 2>&1 \
		|| { tail -30 ../build/mypyc.log; exit 1; }
	rm -rf src/build
	touch $@

pure:
	rm -f src/*__mypyc*.so $(addprefix src/,$(MYPYC_MODULES:.py=.*.so)) $(VENV)/.compiled

demo: $(VENV)/.demo-installed
	$(BIN)/twistd -n --pidfile= catalyzer --app examples.hello:app --listen tcp:8080:interface=127.0.0.1

test: $(VENV)/.test-installed browser lint typecheck pytest

# Debian's Chromium for the browser test (tests/integration/test_upload_browser.py, driven by the
# playwright package of the test extra; Playwright's own browser download is not used). Once it is
# installed this is a single file test, so `make test` depends on it. Without root it only says
# what to run: the test then skips itself (but fails under CI, whose .ci/run installs it as root).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the browser test"; \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "chromium is missing, so the browser test will be skipped;" \
			"install it with: sudo apt-get install chromium"; \
	fi

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/lint-imports

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

# The whole suite against the compiled build, then the compiled modules' own tests against
# their pure-Python fallback.
pytest: $(VENV)/.test-installed $(VENV)/.compiled
	$(BIN)/pytest -q
	CATALYZER_TEST_PURE=1 $(BIN)/pytest -q tests/http tests/wsgi tests/split/test_frames.py tests/split/test_router.py

docs: $(VENV)/.demo-installed
	$(BIN)/python -m catalyzer.settings > docs/settings.md
	$(BIN)/python -c 'from catalyzer.dispatch.settings import write_page; write_page("docs/dispatch.md")'

# The whole suite, 3 interleaved runs of 8 s per measurement (about 35 minutes), rewriting
# docs/benchmarks.md. Options of bench/run.py go in BENCH_ARGS, e.g.
#   make bench BENCH_ARGS="--only hello_keepalive,catalyzer,twistd-web --doc /tmp/bench.md"
bench: $(VENV)/.bench-installed $(VENV)/.compiled
	bash bench/run.sh $(BENCH_ARGS)

clean: pure
	rm -rf $(VENV) dist build .mypy_cache .ruff_cache .pytest_cache
