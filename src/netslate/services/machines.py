"""Machines: the inventory (netslate.inventory) with each machine's boot pin and fleet status.

A machine record is composed here from three parts: identity and approval from the inventory, the
pin from boot, the fleet view from fleet. Every `{ident}` is resolved by the inventory: an id, a
name, a MAC in any common notation, an SMBIOS UUID or a serial (see docs/inventory.md).

Other routes under /api/v1/machines belong to other nouns and stay with them: the agent's report
(fleet), bundle, explain, place and enroll (config).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from pydantic import BaseModel, Field

from netslate import inventory
from netslate.boot import store as boot
from netslate.enrollment import attest
from netslate.fleet import reports as fleet
from netslate.inventory.search import search_machines
from netslate.services.boot import BootEventRecord
from netslate.services.fleet import FleetFields
from netslate.services.framework import Service, op

RECENT_BOOTS = 10


class Pin(BaseModel):
    image: str
    version: int
    by: str | None  # the actor who pinned it
    at: str | None


class MachineRecord(BaseModel):
    id: int
    name: str | None
    state: str  # discovered | held | approved | booting | configured | degraded
    approved: bool
    macs: list[str]
    uuid: str | None
    serial: str | None
    manufacturer: str | None
    product: str | None
    hostname: str | None
    labels: dict[str, str]
    group: str  # the placement: a config tree path
    ip_address: str | None
    trust: str = "none"  # none < token < host < tpm: how the machine proved who it is (issue 13)
    first_seen: str | None
    last_seen: str | None
    reported: dict[str, Any]  # what iPXE reported when the machine was discovered
    pin: Pin | None
    fleet: FleetFields  # agent-reported status (netslate.fleet)


class MachineDetail(MachineRecord):
    boots: list[BootEventRecord]  # the most recent first


class MachineCreate(BaseModel):
    macs: list[str] = []
    uuid: Optional[str] = None
    serial: Optional[str] = None
    name: Optional[str] = None
    hostname: Optional[str] = None
    labels: dict[str, str] = {}
    group: Optional[str] = None


class LabelChange(BaseModel):
    set: dict[str, str] = Field(default_factory=dict)  # labels to set
    remove: list[str] = Field(default_factory=list)  # label keys to remove
    hostname: Optional[str] = None  # '' clears
    group: Optional[str] = None
    name: Optional[str] = None  # '' clears


class MachinePage(BaseModel):
    """One page of a filtered, sorted machine list (`search`)."""

    total: int  # machines matching the filters, on every page
    offset: int
    limit: int
    sort: str
    machines: list[MachineRecord]


class MachinesService(Service):
    noun = "machines"

    @op("GET", "/api/v1/machines")
    def list(self, state: str | None = None) -> list[MachineRecord]:
        """List machines (optionally only those in one state)."""
        raise NotImplementedError

    @op("GET", "/api/v1/machine-search")
    def search(self, site: str | None = None, cluster: str | None = None, pool: str | None = None,
               folder: str | None = None, state: str | None = None, image: str | None = None,
               version: int | None = None, mac: str | None = None, label: str | None = None,
               text: str | None = None, sort: str = "id", offset: int = 0, limit: int = 50) -> MachinePage:
        """One page of machines, filtered and sorted by the database (site/cluster/pool: tree path segments;
        folder: a subtree; state also `offline`; label KEY or KEY=VALUE; sort a field, -field descending)."""
        raise NotImplementedError

    @op("GET", "/api/v1/machines/{ident}")
    def show(self, ident: str) -> MachineDetail:
        """One machine and its recent boots."""
        raise NotImplementedError

    @op("POST", "/api/v1/machines", role="operator", status=201)
    def add(self, request: MachineCreate) -> MachineRecord:
        """Register a machine (approved at once)."""
        raise NotImplementedError

    @op("POST", "/api/v1/machines/{ident}/approve", role="operator")
    def approve(self, ident: str) -> MachineRecord:
        """Approve a discovered (held) machine."""
        raise NotImplementedError

    @op("POST", "/api/v1/machines/{ident}/labels", role="operator")
    def label(self, ident: str, change: LabelChange) -> MachineRecord:
        """Set or remove labels (and hostname, group, name)."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/machines/{ident}", role="operator")
    def remove(self, ident: str) -> MachineRecord:
        """Forget a machine (its boot history stays, without the link)."""
        raise NotImplementedError

    @op("PUT", "/api/v1/machines/{ident}/pin", role="operator")
    def pin(self, ident: str, image: str) -> MachineRecord:
        """Pin a machine to one image version (IMAGE@VERSION; a tag is resolved now)."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/machines/{ident}/pin", role="operator")
    def unpin(self, ident: str) -> MachineRecord:
        """Remove a machine's pin; the rules decide again."""
        raise NotImplementedError


class LocalMachines(MachinesService):
    def _records(self, rows: list[dict], everyone: bool = False) -> list[dict]:
        ids = None if everyone else [r["id"] for r in rows]  # no IN (...) list of every id in a large fleet
        pins = boot.pins(self.parts.ctx, ids)
        views = fleet.machine_views(self.parts.ctx, ids)
        return [{**r, "pin": pins.get(r["id"]), "fleet": views[r["id"]]} for r in rows]

    def _one(self, row: dict) -> MachineRecord:
        return MachineRecord(**self._records([row])[0])

    def list(self, state: str | None = None) -> list[MachineRecord]:
        rows = inventory.list_machines(self.parts.ctx, state)
        return [MachineRecord(**r) for r in self._records(rows, everyone=len(rows) > 500)]

    def search(self, site: str | None = None, cluster: str | None = None, pool: str | None = None,
               folder: str | None = None, state: str | None = None, image: str | None = None,
               version: int | None = None, mac: str | None = None, label: str | None = None,
               text: str | None = None, sort: str = "id", offset: int = 0, limit: int = 50) -> MachinePage:
        filters = {"site": site, "cluster": cluster, "pool": pool, "folder": folder, "state": state, "image": image,
                   "version": version, "mac": mac, "label": label, "text": text}
        cutoff = (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - fleet.offline_after()).strftime("%Y-%m-%dT%H:%M:%SZ")
        total, rows = search_machines(self.parts.ctx, filters, sort, offset, limit, offline_before=cutoff)
        return MachinePage(total=total, offset=offset, limit=limit, sort=sort, machines=[MachineRecord(**r) for r in self._records(rows)])

    def show(self, ident: str) -> MachineDetail:
        row = self._records([inventory.show_machine(self.parts.ctx, ident)])[0]
        boots = boot.list_events(self.parts.ctx, limit=RECENT_BOOTS, machine=row["id"])
        return MachineDetail(**row, boots=boots)

    def add(self, request: MachineCreate) -> MachineRecord:
        return self._one(inventory.add_machine(self.parts.ctx, request.macs, request.uuid, request.serial, request.name,
                                               request.hostname, request.labels, request.group, actor=self.actor))

    def approve(self, ident: str) -> MachineRecord:
        ctx = self.parts.ctx
        attest.approve(ctx, inventory.machine_id(ctx, ident), None, self.actor)  # its TPM enrollment waiting, if any
        return self._one(inventory.approve_machine(ctx, ident, actor=self.actor))

    def label(self, ident: str, change: LabelChange) -> MachineRecord:
        return self._one(inventory.label_machine(self.parts.ctx, ident, change.set, change.remove, actor=self.actor,
                                                 hostname=change.hostname, group=change.group, name=change.name))

    def remove(self, ident: str) -> MachineRecord:
        ctx = self.parts.ctx
        machine_id = inventory.machine_id(ctx, ident)
        views = fleet.machine_views(ctx, [machine_id])  # read before the row goes
        row = inventory.remove_machine(ctx, machine_id, actor=self.actor)
        return MachineRecord(**row, pin=None, fleet=views[machine_id])

    def pin(self, ident: str, image: str) -> MachineRecord:
        done = boot.pin_machine(self.parts.ctx, ident, image, actor=self.actor)
        return self._one(inventory.show_machine(self.parts.ctx, done["id"]))

    def unpin(self, ident: str) -> MachineRecord:
        done = boot.unpin_machine(self.parts.ctx, ident, actor=self.actor)
        return self._one(inventory.show_machine(self.parts.ctx, done["id"]))
