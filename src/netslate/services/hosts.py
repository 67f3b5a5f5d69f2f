"""Hypervisor hosts (libvirt URIs) that run desktops: register, list, show (capacity read again), remove."""

from __future__ import annotations

from pydantic import BaseModel

from netslate.desktops import hosts as part
from netslate.services.framework import Service, op


class StoragePool(BaseModel):
    name: str
    active: bool
    capacity: int
    available: int


class HostCapacity(BaseModel):
    """What libvirt and the disk directory said the last time the host answered."""

    cpus: int = 0
    memory_mib: int = 0
    free_memory_mib: int = 0
    storage_pools: list[StoragePool] = []
    disk_dir_free: int = 0
    disk_dir_total: int = 0
    domain_type: str | None = None  # kvm | qemu (TCG)


class Host(BaseModel):
    name: str
    uri: str
    accel: str
    max_starting: int
    reserve_mib: int
    console_address: str
    labels: dict[str, str]
    reachable: bool
    last_error: str
    capacity: HostCapacity
    last_seen: str | None
    desktops: int
    accel_note: str | None = None  # why `auto` did not get KVM (the probe failed), or why KVM is unproven
    degraded: str | None = None  # the hypervisor made a domain fail to start: the host takes no desktops


class HostCreate(BaseModel):
    name: str
    uri: str
    accel: str = "auto"
    max_starting: int = 4
    reserve_mib: int = 512
    console_address: str = "127.0.0.1"
    labels: list[str] | None = None  # KEY=VALUE


class HostsService(Service):
    noun = "hosts"

    @op("GET", "/api/v1/hosts")
    def list(self) -> list[Host]:
        """List hosts with their last known capacity."""
        raise NotImplementedError

    @op("GET", "/api/v1/hosts/{name}")
    def show(self, name: str) -> Host:
        """One host; its capacity is read from libvirt now."""
        raise NotImplementedError

    @op("POST", "/api/v1/hosts", role="admin", status=201)
    def add(self, request: HostCreate) -> Host:
        """Register a libvirt host (an unreachable one is refused, nothing written)."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/hosts/{name}", role="admin", status=204)
    def remove(self, name: str) -> None:
        """Remove a host that runs no desktops."""
        raise NotImplementedError


class LocalHosts(HostsService):
    def list(self) -> list[Host]:
        return [Host(**h) for h in part.list_hosts(self.parts.ctx)]

    def show(self, name: str) -> Host:
        return Host(**part.show_host(self.parts.ctx, name))

    def add(self, request: HostCreate) -> Host:
        r = request
        return Host(**part.add_host(self.parts.ctx, r.name, r.uri, self.actor, accel=r.accel, max_starting=r.max_starting,
                                    reserve_mib=r.reserve_mib, console_address=r.console_address, labels=r.labels))

    def remove(self, name: str) -> None:
        part.remove_host(self.parts.ctx, name, self.actor)
