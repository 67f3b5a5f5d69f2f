"""Services: one per noun, the only way the CLI, the API and the web console reach the parts.

`Services.local(parts, caller)` works over the data directory (the server's routers and the local
CLI); `Services.remote(api, caller)` works over /api/v1 with the same contracts. Callers choose once.
"""

from __future__ import annotations

import importlib
from typing import Any

from netslate.services.framework import ANONYMOUS, Caller, Checked, http_client

# noun → (module, contract class, local class). Modules load on first use so the CLI only
# imports the noun it runs (start-up time); a contract may also name a hand-made HTTP class
# as `HTTP_CLASS = "Name"` in its module (streams, uploads).
NOUNS: dict[str, tuple[str, str, str]] = {
    "tokens": ("netslate.services.tokens", "TokensService", "LocalTokens"),
    "keys": ("netslate.services.keys", "KeysService", "LocalKeys"),
    "images": ("netslate.services.images", "ImagesService", "LocalImages"),
    "boot": ("netslate.services.boot", "BootService", "LocalBoot"),
    "hosts": ("netslate.services.hosts", "HostsService", "LocalHosts"),
    "pools": ("netslate.services.pools", "DesktopPoolsService", "LocalDesktopPools"),
    "desktops": ("netslate.services.desktops", "DesktopsService", "LocalDesktops"),
    "machines": ("netslate.services.machines", "MachinesService", "LocalMachines"),
    "sites": ("netslate.services.sites", "SitesService", "LocalSites"),
    "servers": ("netslate.services.servers", "ServersService", "LocalServers"),
    "fleet": ("netslate.services.fleet", "FleetService", "LocalFleet"),
    "config": ("netslate.services.config", "ConfigService", "LocalConfig"),
    "ippools": ("netslate.services.ippools", "IpPoolsService", "LocalIpPools"),
    "audit": ("netslate.services.audit", "AuditService", "LocalAudit"),
    "overview": ("netslate.services.overview", "OverviewService", "LocalOverview"),
    "auth": ("netslate.services.auth", "AuthService", "LocalAuth"),
    "users": ("netslate.services.users", "UsersService", "LocalUsers"),
    "directories": ("netslate.services.directories", "DirectoriesService", "LocalDirectories"),
    "entitlements": ("netslate.services.entitlements", "EntitlementsService", "LocalEntitlements"),
    "enrollment": ("netslate.services.enrollment", "EnrollmentService", "LocalEnrollment"),
    "mirror": ("netslate.services.mirror", "MirrorService", "LocalMirror"),
}


def contract(noun: str) -> type:
    module, contract_name, _ = NOUNS[noun]
    return getattr(importlib.import_module(module), contract_name)


def local_class(noun: str) -> type:
    module, _, local_name = NOUNS[noun]
    return getattr(importlib.import_module(module), local_name)


_http_classes: dict[str, type] = {}


def http_class(noun: str) -> type:
    if noun not in _http_classes:
        module = importlib.import_module(NOUNS[noun][0])
        custom = getattr(module, "HTTP_CLASS", None)
        _http_classes[noun] = getattr(module, custom) if custom else http_client(contract(noun))
    return _http_classes[noun]


class Services:
    """Attribute access per noun: `services.machines.show("pc1")`."""

    def __init__(self, make):
        self._make = make
        self._cache: dict[str, Any] = {}

    def __getattr__(self, noun: str) -> Any:
        if noun.startswith("_") or noun not in NOUNS:
            raise AttributeError(noun)
        if noun not in self._cache:
            self._cache[noun] = self._make(noun)
        return self._cache[noun]

    @classmethod
    def local(cls, parts, caller: Caller = ANONYMOUS) -> "Services":
        return cls(lambda noun: Checked(local_class(noun)(parts, caller)))

    @classmethod
    def remote(cls, api, caller: Caller = ANONYMOUS) -> "Services":
        return cls(lambda noun: http_class(noun)(api, caller))
