"""Fleet status: what every machine booted, applied and reported (netslate.fleet).

The machine-facing routes stay hand-written in server/routers/fleet.py and call `LocalFleet`:
the agent's `POST /api/v1/machines/{machine}/report` (its machine credential, the TCP peer) and
Prometheus' `GET /metrics` (text exposition format). Everything else is generated from the contract.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from netslate.fleet import metrics, reports
from netslate.services.framework import Service, op
from netslate.services.records import MachineRef


class HealthCheckResult(BaseModel):
    name: str | None
    ok: bool
    error: str | None = None
    ms: int | float | None = None


class UnverifiedReport(BaseModel):
    """The last report sent without a machine credential: kept apart, never used for bundles."""

    received_at: str | None
    address: str | None  # the TCP peer that sent it
    facts: dict[str, Any] | None


class FleetFields(BaseModel):
    """The fleet part of one machine (also under `fleet` in `machine list/show`)."""

    state: str  # discovered | booting | configured | degraded | offline
    last_boot: str | None
    last_report: str | None
    image: str | None
    version: int | None
    image_source: str | None  # server | cache
    booted_via: str | None  # network | local disk
    generation: int | None
    config_source: str | None  # server | cache | none
    current_generation: int | None
    healthy: bool | None
    health: list[HealthCheckResult]
    failures: dict[str, str]  # module → error, for modules that did not apply
    reboot_required: list[str]
    problems: list[str]
    timings: dict[str, int | float]
    authenticated: bool | None
    trust: str = "none"  # none < token < host < tpm: how the machine proved who it is (issue 13)
    unverified: UnverifiedReport | None = None  # facts/address of the last report without a credential
    flags: list[str]


class FleetMachine(FleetFields):
    id: int
    name: str | None
    hostname: str | None
    ip_address: str | None


class FleetSummary(BaseModel):
    machines: int
    states: dict[str, int]
    flagged: int


class BranchState(BaseModel):
    """The answering server's standby (a branch server, issue 15): data may be this old, writes refused."""

    read_only: bool
    read_only_since: str | None
    replication_lag_s: float | None
    outbox_pending: int


class FleetStatus(BaseModel):
    summary: FleetSummary
    machines: list[FleetMachine]
    branch: BranchState | None = None


class ReportAccepted(BaseModel):
    id: int
    accepted: bool
    current: bool  # False: an older report (queued while the server was away) went into the history only
    authenticated: bool
    state: str


class FleetService(Service):
    noun = "fleet"

    @op("GET", "/api/v1/fleet")
    def status(self, state: str | None = None) -> FleetStatus:
        """The fleet table (state: discovered, booting, configured, degraded, offline)."""
        raise NotImplementedError

    @op("GET", "/api/v1/fleet/identify")
    def identify(self, ident: str | None = None, mac: list[str] | None = None, uuid: str | None = None) -> MachineRef:
        """Which machine is this? By id/name/UUID, else SMBIOS UUID, else MAC. Returns {id, name} only."""
        raise NotImplementedError


class LocalFleet(FleetService):
    def status(self, state: str | None = None) -> FleetStatus:
        ctx = self.parts.ctx
        rows = reports.fleet_status(ctx, state)
        st = ctx.db.replica_status()
        branch = None if st is None else BranchState(
            read_only=st["read_only"], read_only_since=st["read_only_since"], replication_lag_s=st.get("lag_seconds"),
            outbox_pending=ctx.outbox.pending() if ctx.outbox is not None else 0)
        return FleetStatus(summary=FleetSummary(**reports.summary(rows)), machines=[FleetMachine(**r) for r in rows], branch=branch)

    def identify(self, ident: str | None = None, mac: list[str] | None = None, uuid: str | None = None) -> MachineRef:
        return MachineRef(**reports.identify(self.parts.ctx, ident, list(mac or []), uuid))

    # ---- for the hand-written, machine-facing routes (server/routers/fleet.py) ----

    def report(self, machine: str, body: Any, credential: str | None, remote: str | None) -> ReportAccepted:
        """Store an agent's report. An enrolled machine must present its credential
        (`reports.ReportRefused` otherwise); others are accepted and flagged `unauthenticated`."""
        return ReportAccepted(**reports.report(self.parts.ctx, machine, body, credential, remote))

    def metrics(self) -> bytes:
        """The fleet in Prometheus' text exposition format."""
        return metrics.render(self.parts.ctx)
