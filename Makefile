# The two commands the README promises: `make demo` and `make test`.
# Both install what is missing first (apt packages, uv, the locked Python environment).
SHELL := /bin/bash
.PHONY: deps demo test bench

deps:
	@scripts/install-deps.sh

demo: deps
	uv run --frozen python -m netslate.demo

test: deps
	uv run --frozen pytest -q tests

# Every benchmark in turn (figures appended to bench/results/*.json); about an hour on 2 cores.
bench: deps
	@set -e; for b in bench/[a-z]*.py; do echo "== $$b"; uv run --frozen python "$$b"; done
