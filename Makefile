# The two commands the README promises: `make demo` and `make test`.
# Both install what is missing first (apt packages, uv, the locked Python environment).
SHELL := /bin/bash
.PHONY: deps demo test bench lint

deps:
	@scripts/install-deps.sh

demo: deps
	uv run --frozen python -m netslate.demo

test: deps
	uv run --frozen pytest -q tests

bench: deps
	uv run --frozen python -m bench.run_all
