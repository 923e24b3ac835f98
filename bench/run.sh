#!/usr/bin/env bash
# `make bench`: run the benchmark suite with the project's virtualenv (see bench/run.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/run.py "$@"
