"""Layered configuration: tree, documents, merge with provenance, generations and signed bundles.

Pure core: `schema`, `merge`, `templates`, `tree`, `documents`, `resolution`, `ipranges`. Database
edges: `workingcopy`, `generations` (+ `state`, `snapshots`), `generation_cache`, `bundles`,
`explain`, `placement`, `credentials`, `ippools` + `leases`, `machines` (the inventory, for config).
Adapters: `netslate.services.config` / `.ippools`, `server/routers/config.py`, the CLI. See docs/config.md.
"""
