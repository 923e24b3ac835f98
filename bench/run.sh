#!/usr/bin/env bash
# `make bench`: run the benchmark suite with the project's virtualenv (see bench/run.py --help).
# `make bench` installs the peers first; run directly, this says what is missing instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
	echo "bench: wrk is not installed (Debian: apt-get install wrk)" >&2
	exit 2
fi
for peer in twistd gunicorn waitress-serve granian uwsgi; do
	if [ ! -x ".venv/bin/$peer" ]; then
		echo "bench: .venv/bin/$peer is missing: run 'make bench', or first" \
			"'.venv/bin/pip install -e .[bench]' (make .venv/.bench-installed)" >&2
		exit 2
	fi
done
exec .venv/bin/python bench/run.py "$@"
