"""Fleet status: agent reports in, per-machine state and flags out (API, CLI, Prometheus metrics).

The last report lives in `machines.status["fleet"]` (facts in `machines.status["facts"]`, which
the config part reads to render templates); no tables of its own.
"""
