"""Who is acting. Every adapter (API, web, CLI) turns its credential into a `Caller`; services
check its role (`netslate.services.framework.authorize`) and write `caller.actor` to the audit log."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field

ROLES = ("viewer", "operator", "admin")


@dataclass(frozen=True)
class Caller:
    """Who is acting: `token:NAME`, `user:NAME`, `machine:ID` or `local:USER` in audit entries."""

    kind: str  # token | user | machine | local | anonymous
    name: str
    role: str | None = None  # None: anonymous, a machine, or a person with pool entitlements only
    address: str | None = None  # the client's address (login throttling, audit), when known
    transport: str | None = None  # "https" or "http" for a request over HTTP; None: not over the network (local CLI)
    session: str | None = field(default=None, repr=False, compare=False)  # the web session id, for logout

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"

    def has(self, role: str) -> bool:
        return self.role is not None and ROLES.index(self.role) >= ROLES.index(role)


ANONYMOUS = Caller("anonymous", "-", None)


def local_principal() -> Caller:
    """The local CLI acts with admin rights over its own data directory."""
    return Caller("local", os.environ.get("NETSLATE_ACTOR") or getpass.getuser(), "admin")
