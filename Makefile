# The two commands the README starts with:
#   make demo   install into .venv and serve examples/hello.py on http://127.0.0.1:8080/
#   make test   install with test extras into .venv and run lint, types and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck pytest docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/twistd -n --pidfile= catalyzer --app examples.hello:app --listen tcp:8080:interface=127.0.0.1

test: $(VENV)/.test-installed lint typecheck pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

pytest: $(VENV)/.test-installed
	$(BIN)/pytest -q

docs: $(VENV)/.demo-installed
	$(BIN)/python -m catalyzer.settings > docs/settings.md

bench: $(VENV)/.test-installed
	bash bench/run.sh

clean:
	rm -rf $(VENV) dist build .mypy_cache .ruff_cache .pytest_cache
