"""Layered configuration: tree, documents, merge with provenance, generations and signed bundles.

Pure core: `schema`, `merge`, `templates`, `tree`. I/O edges: `store` (database), `bundles`
(resolution cache + signing), the API router `netslate.server.routers.config` and the CLI.
"""
