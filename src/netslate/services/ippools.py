"""IP pools for `network.mode: pool`: list/show for anyone with read access, changes for operators."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from netslate.config import ippools
from netslate.services.records import Record
from netslate.services.framework import Service, op


class IpLeaseRecord(BaseModel):
    address: str
    machine_id: int
    machine: str | None
    leased_at: str


class IpPoolRecord(Record):
    """A pool and its use; `leases` only when one pool is shown."""

    omit_when_none: ClassVar[tuple[str, ...]] = ("leases",)
    name: str
    range: str
    first: str
    last: str
    prefix: int
    subnet: str
    gateway: str | None
    dns: list[str]
    size: int
    leased: int
    free: int
    leases: list[IpLeaseRecord] | None = None


class IpPoolRequest(BaseModel):
    name: str
    range: str  # FIRST-LAST
    prefix: int
    gateway: str | None = None
    dns: list[str] = []


class IpPoolRemoved(BaseModel):
    name: str
    removed: bool
    released: int


class IpLeaseReleased(BaseModel):
    pool: str
    machine_id: int
    machine: str | None
    address: str
    released: bool


class IpPoolsService(Service):
    noun = "ippools"

    @op("GET", "/api/v1/ippools")
    def list(self) -> list[IpPoolRecord]:
        """List pools with their use."""
        raise NotImplementedError

    @op("POST", "/api/v1/ippools", role="operator")
    def add(self, request: IpPoolRequest) -> IpPoolRecord:
        """Create a pool (its range must not overlap another pool's)."""
        raise NotImplementedError

    @op("GET", "/api/v1/ippools/{name}")
    def show(self, name: str) -> IpPoolRecord:
        """A pool and every lease in it."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/ippools/{name}", role="operator")
    def remove(self, name: str, force: bool = False) -> IpPoolRemoved:
        """Remove a pool (refused while it has leases, unless `force`)."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/ippools/{name}/leases/{machine}", role="operator")
    def release(self, name: str, machine: str) -> IpLeaseReleased:
        """Free a machine's address in a pool (its next bundle leases the lowest free one again)."""
        raise NotImplementedError


class LocalIpPools(IpPoolsService):
    def list(self) -> list[IpPoolRecord]:
        return [IpPoolRecord(**p) for p in ippools.list_pools(self.parts.ctx)]

    def add(self, request: IpPoolRequest) -> IpPoolRecord:
        return IpPoolRecord(**ippools.add_pool(self.parts.ctx, request.name, request.range, request.prefix,
                                               request.gateway, request.dns, self.actor))

    def show(self, name: str) -> IpPoolRecord:
        return IpPoolRecord(**ippools.show_pool(self.parts.ctx, name))

    def remove(self, name: str, force: bool = False) -> IpPoolRemoved:
        return IpPoolRemoved(**ippools.remove_pool(self.parts.ctx, name, self.actor, force))

    def release(self, name: str, machine: str) -> IpLeaseReleased:
        return IpLeaseReleased(**ippools.release(self.parts.ctx, name, machine, self.actor))
