"""netslate-agent: the on-machine agent (standard library only).

Locate a server → fetch the signed bundle → verify (pinned key, machine, anti-rollback) →
gather facts → apply idempotently → save last-known-good → health checks → report → follow.
Nothing here may import a non-stdlib module: it runs inside images as a zipapp
(`netslate agent zipapp`). What it shares with the initramfs and the server (envelope checks,
RFC 2782 order, atomic writes) comes from the on-machine library `netslate.onmachine`.
"""

AGENT_VERSION = "1"
