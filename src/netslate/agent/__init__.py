"""netslate-agent: the on-machine agent (standard library only).

Locate a server → fetch the signed bundle → verify (pinned key, machine, anti-rollback) →
gather facts → apply idempotently → save last-known-good → health checks → report → follow.
Nothing here may import a non-stdlib module: it runs inside images as a zipapp
(`netslate agent zipapp`). Only `netslate.crypto.envelope`/`ed25519` are shared with the server.
"""

AGENT_VERSION = "1"
