"""Desktop pools (noun "pools"; not IP pools, not the config tree's pool level): create, list, show,
change, remove, reconcile, and a user's request for a desktop."""

from __future__ import annotations

from pydantic import BaseModel

from netslate.desktops import pools as part
from netslate.desktops import allocation as desktops
from netslate.desktops.actuator import Actuator
from netslate.services.auth import LocalAuth
from netslate.services.desktops import DesktopRecord, nudge
from netslate.services.framework import Forbidden, Service, http_client, op


class DesktopPoolRecord(BaseModel):
    name: str
    golden: str  # "" for a diskless pool
    golden_version: int | None  # None: follows the newest version
    size: int
    spare: int
    max: int
    vcpus: int
    memory_mib: int
    display: str
    video: str
    usb_redirect: int
    smartcard: bool
    persistence: str  # none | persistent
    assignment: str  # floating | dedicated
    ip_range: str
    hosts: str
    network: str
    grace_seconds: float
    snapshot_every_hours: float | None
    snapshot_keep: int
    diskless: str | None  # IMAGE@REF of a netslate image the desktops PXE-boot
    allow_reset: bool  # the portal offers the desktop's user a reset (back to the golden image)
    allow_release: bool  # the portal offers the desktop's user to give it back
    created_at: str
    desktops: int
    states: dict[str, int]
    addresses_used: int
    addresses_total: int


class DesktopPoolDetail(DesktopPoolRecord):
    desktop_list: list[DesktopRecord]


class DesktopPoolSpec(BaseModel):
    """A new pool. Exactly one of golden (IMG or IMG@VER) and diskless (IMAGE[@TAG|@VER])."""

    name: str
    golden: str | None = None
    diskless: str | None = None
    ip_range: str
    size: int = 1
    spare: int = 1
    max: int | None = None  # default size + spare
    vcpus: int = 1
    memory_mib: int = 1024
    display: str = "spice"
    video: str = "qxl"
    usb_redirect: int = 0
    smartcard: bool = False
    persistence: str = "none"
    assignment: str = "floating"
    hosts: str = "*"
    network: str = "none"
    grace_seconds: float = 60.0
    snapshot_every_hours: float | None = None
    snapshot_keep: int = 7
    allow_reset: bool = False
    allow_release: bool = True


class DesktopPoolChange(BaseModel):
    """Only the fields given change; snapshot_every_hours 0 turns scheduled snapshots off."""

    size: int | None = None
    spare: int | None = None
    max: int | None = None
    golden: str | None = None
    grace_seconds: float | None = None
    snapshot_every_hours: float | None = None
    snapshot_keep: int | None = None
    allow_reset: bool | None = None
    allow_release: bool | None = None


class PoolRemoval(BaseModel):
    pool: str
    destroyed: int
    actions: list[str]


class ReconcileResult(BaseModel):
    actions: list[str]
    blocked: list[str]


class DesktopRequest(BaseModel):
    user: str


class MyPool(BaseModel):
    """A portal card: a pool the caller is entitled to (or holds a desktop in), and their desktop there."""

    pool: str
    entitled: bool  # False: a desktop of theirs in a pool they are no longer entitled to
    display: str
    assignment: str
    persistence: str
    allow_reset: bool
    allow_release: bool
    free: int  # desktops nobody holds ("N of M free")
    total: int  # the pool's max
    desktop: DesktopRecord | None


class DesktopPoolsService(Service):
    noun = "pools"

    @op("GET", "/api/v1/pools")
    def list(self) -> list[DesktopPoolRecord]:
        """List pools with desktop counts by state."""
        raise NotImplementedError

    @op("POST", "/api/v1/pools/reconcile", role="operator")
    def reconcile(self, pool: str | None = None, wait: bool = False, timeout: float = 300.0) -> ReconcileResult:
        """Run the reconcile loop once now (the server runs it every 10 s)."""
        raise NotImplementedError

    @op("GET", "/api/v1/pools/{name}")
    def show(self, name: str) -> DesktopPoolDetail:
        """A pool and its desktops."""
        raise NotImplementedError

    @op("POST", "/api/v1/pools", role="operator", status=201)
    def create(self, spec: DesktopPoolSpec) -> DesktopPoolRecord:
        """Create a pool (nothing is written unless every parameter is valid)."""
        raise NotImplementedError

    @op("PATCH", "/api/v1/pools/{name}", role="operator")
    def change(self, name: str, change: DesktopPoolChange) -> DesktopPoolRecord:
        """Change size, spare, max, golden image, grace period, snapshot schedule or portal settings."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/pools/{name}", role="operator")
    def remove(self, name: str, force: bool = False) -> PoolRemoval:
        """Remove a pool and destroy its desktops (in use: only with force)."""
        raise NotImplementedError

    @op("GET", "/api/v1/my/pools")
    def mine(self) -> list[MyPool]:
        """The logged-in user's pools (entitlements) and desktops, with "N of M free"."""
        raise NotImplementedError

    @op("POST", "/api/v1/my/pools/{name}/desktop")
    def request_mine(self, name: str) -> DesktopRecord:
        """A desktop of an entitled pool for the logged-in user: theirs already, a prestarted one, or a new one."""
        raise NotImplementedError

    @op("POST", "/api/v1/pools/{name}/request", role="operator")
    def request(self, name: str, request: DesktopRequest) -> DesktopRecord:
        """A desktop for the user: theirs already, a prestarted one, or a new one within max."""
        raise NotImplementedError


class LocalDesktopPools(DesktopPoolsService):
    @property
    def ctx(self):
        return self.parts.ctx

    def list(self) -> list[DesktopPoolRecord]:
        return [DesktopPoolRecord(**p) for p in part.list_pools(self.ctx)]

    def reconcile(self, pool: str | None = None, wait: bool = False, timeout: float = 300.0) -> ReconcileResult:
        if pool is not None:
            part.show_pool(self.ctx, pool)  # unknown pool → 404, not an empty pass
        return ReconcileResult(**Actuator(self.ctx).reconcile(pool, wait=wait, timeout=timeout))

    def show(self, name: str) -> DesktopPoolDetail:
        return DesktopPoolDetail(**part.show_pool(self.ctx, name))

    def create(self, spec: DesktopPoolSpec) -> DesktopPoolRecord:
        p = spec
        data = part.create_pool(self.ctx, p.name, p.golden, p.size, p.spare, p.max, p.vcpus, p.memory_mib, p.display,
                                p.usb_redirect, p.smartcard, p.persistence, p.assignment, p.ip_range, p.hosts, self.actor,
                                network=p.network, video=p.video, grace_seconds=p.grace_seconds,
                                snapshot_every_hours=p.snapshot_every_hours, snapshot_keep=p.snapshot_keep,
                                diskless=p.diskless, allow_reset=p.allow_reset, allow_release=p.allow_release)
        nudge(self.parts)
        return DesktopPoolRecord(**data)

    def change(self, name: str, change: DesktopPoolChange) -> DesktopPoolRecord:
        c = change
        data = part.resize_pool(self.ctx, name, self.actor, c.size, c.spare, c.max, c.golden, c.grace_seconds,
                                c.snapshot_every_hours, c.snapshot_keep, c.allow_reset, c.allow_release)
        nudge(self.parts)
        return DesktopPoolRecord(**data)

    def remove(self, name: str, force: bool = False) -> PoolRemoval:
        n = part.remove_pool(self.ctx, name, self.actor, force)
        result = Actuator(self.ctx).reconcile(name)  # destroy its desktops now (they belong to no pool any more)
        return PoolRemoval(pool=name, destroyed=n, actions=result["actions"])

    def request(self, name: str, request: DesktopRequest) -> DesktopRecord:
        data = desktops.request_desktop(self.ctx, name, request.user)
        nudge(self.parts)  # refill the spare in the background
        return DesktopRecord(**data)


    def _person(self) -> tuple[str, list[str]]:
        """The logged-in person and their entitled pools (self-service is for people, not tokens)."""
        if self.caller.kind != "user":
            raise Forbidden("log in as a user to see your desktops", authenticated=self.caller.kind != "anonymous")
        return self.caller.name, LocalAuth(self.parts, self.caller).me().pools

    def mine(self) -> list[MyPool]:
        user, entitled = self._person()
        return [MyPool(**p) for p in desktops.user_pools(self.ctx, user, entitled)]

    def request_mine(self, name: str) -> DesktopRecord:
        user, entitled = self._person()
        if name not in entitled:
            raise Forbidden(f"you are not entitled to desktops of pool {name}", authenticated=True)
        desktops.check_request(self.ctx, name, user)
        data = desktops.request_desktop(self.ctx, name, user)
        nudge(self.parts)
        return DesktopRecord(**data)


class HttpDesktopPools(http_client(DesktopPoolsService)):
    def reconcile(self, pool: str | None = None, wait: bool = False, timeout: float = 300.0) -> ReconcileResult:
        # a pass may take minutes (--wait): the HTTP read waits as long as the pass may
        body = {"pool": pool, "wait": wait, "timeout": timeout}
        r = self.api.request("POST", "/api/v1/pools/reconcile", json=body, timeout=timeout + 60)
        return ReconcileResult(**r.json())


HTTP_CLASS = "HttpDesktopPools"
