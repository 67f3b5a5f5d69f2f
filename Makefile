# The two commands the README promises: `make demo` and `make test`.
# Both install what is missing first (apt packages, uv, the locked Python environment).
SHELL := /bin/bash
.PHONY: deps demo demo-sites test bench

deps:
	@scripts/install-deps.sh

demo: deps
	uv run --frozen python -m netslate.demo

# Branch sites (docs/sites.md): central + branch on PostgreSQL, a WAN cut, one VM at the branch (~6 min, TCG; measured 348 s).
demo-sites: deps
	uv run --frozen python -m netslate.demo_sites

# Two workers, a file's tests on one worker in order (tests/conftest.py: the files under
# tests/desktops/ share one libvirtd and run one after another); the 30 slowest are listed at the end.
test: deps
	uv run --frozen pytest -q -n 2 --dist loadfile --durations=30 tests

# Every benchmark in turn (figures appended to bench/results/*.json); about an hour on 2 cores.
bench: deps
	@set -e; for b in bench/[a-z]*.py; do echo "== $$b"; uv run --frozen python "$$b"; done
