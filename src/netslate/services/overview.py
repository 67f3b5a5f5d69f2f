"""The dashboard's overview: the health band and the fleet at a glance with its rollouts.

Both compose several parts (discovery's servers, the background services' probes, the signing key,
the chunk store; fleet counts, image tags, config generations), which is why they are a noun of
their own rather than an operation of one part's service. Reading needs the viewer role.
"""

from __future__ import annotations

import datetime as dt
import shutil

from pydantic import BaseModel

from netslate.config import generations as config_generations
from netslate.discovery import store as discovery
from netslate.fleet import overview as fleet_overview
from netslate.fleet import reports as fleet_reports
from netslate.services.framework import Service, op


class ServerHealth(BaseModel):
    name: str
    addresses: list[str]
    alive: bool
    heartbeat_age_s: float


class SiteHealth(BaseModel):
    site: str | None  # None: servers registered without a site
    servers: list[ServerHealth]
    alive: int


class Probe(BaseModel):
    name: str  # dnsmasq, dns, discovery, desktops, database, ...
    ok: bool
    detail: str | None = None


class SigningKeyRecord(BaseModel):
    algorithm: str
    fingerprint: str


class Storage(BaseModel):
    path: str
    free_bytes: int
    total_bytes: int
    free_fraction: float


class HealthBand(BaseModel):
    sites: list[SiteHealth]
    probes: list[Probe]  # the background services this server runs, and the database
    signing_key: SigningKeyRecord
    chunk_store: Storage


class Rollout(BaseModel):
    kind: str  # image | config
    name: str  # "IMAGE:TAG" or "generation N" (canary: "generation N (canary)")
    target: int | None  # the version or generation machines should reach
    on_target: int
    of: int  # machines that report this image / any generation
    share: float  # on_target / of (0 when of is 0)


class FleetOverview(BaseModel):
    machines: int
    states: dict[str, int]  # discovered, held, approved, booting, configured, degraded, offline
    image_from_cache: int  # running an image from the local cache (the server was not reachable)
    config_from_cache: int  # on a last-known-good configuration
    image_defaults: int  # no configuration at all
    rollouts: list[Rollout]


class OverviewService(Service):
    noun = "overview"

    @op("GET", "/api/v1/overview/health", role="viewer")
    def health(self) -> HealthBand:
        """Servers per site with heartbeat age, dnsmasq/DNS probes, the signing key, chunk store space."""
        raise NotImplementedError

    @op("GET", "/api/v1/overview/fleet", role="viewer")
    def fleet(self) -> FleetOverview:
        """Machines by state, those on a cached image or configuration, and the rollouts' progress."""
        raise NotImplementedError


def _share(n: int, of: int) -> float:
    return round(n / of, 4) if of else 0.0


class LocalOverview(OverviewService):
    def health(self) -> HealthBand:
        ctx = self.parts.ctx
        by_site: dict[str | None, list[ServerHealth]] = {}
        for s in discovery.list_servers(ctx):
            by_site.setdefault(s.get("site"), []).append(ServerHealth(name=s["name"], addresses=s["addresses"], alive=s["alive"],
                                                                      heartbeat_age_s=s["heartbeat_age_s"]))
        sites = [SiteHealth(site=k, servers=v, alive=sum(x.alive for x in v)) for k, v in sorted(by_site.items(), key=lambda kv: kv[0] or "")]
        probes = []
        checks = self.parts.health_checks() if hasattr(self.parts, "health_checks") else {}
        for name, probe in checks.items():
            try:
                result = probe()
                probes.append(Probe(name=name, ok=bool(result.get("ok")), detail=result.get("error") or result.get("detail")))
            except Exception as exc:  # a failing probe is a red light, never a failed page
                probes.append(Probe(name=name, ok=False, detail=str(exc)[:200]))
        key = ctx.signing_key
        store = ctx.data_dir / "chunks"
        store.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(store)
        return HealthBand(sites=sites, probes=probes, signing_key=SigningKeyRecord(algorithm="ed25519", fingerprint=key.fingerprint),
                          chunk_store=Storage(path=str(store), free_bytes=usage.free, total_bytes=usage.total,
                                              free_fraction=_share(usage.free, usage.total)))

    def fleet(self) -> FleetOverview:
        ctx = self.parts.ctx
        cutoff = (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - fleet_reports.offline_after()).strftime("%Y-%m-%dT%H:%M:%SZ")
        c = fleet_overview.counts(ctx, cutoff)
        rollouts: list[Rollout] = []
        running: dict[str, dict[int | None, int]] = {}
        for row in c["images"]:
            running.setdefault(row["image"], {})[row["version"]] = row["machines"]
        for image in self.parts.library.list_images():
            of = sum(running.get(image["name"], {}).values())
            for tag, version in sorted(image["tags"].items()):
                n = running.get(image["name"], {}).get(version, 0)
                rollouts.append(Rollout(kind="image", name=f"{image['name']}:{tag}", target=version, on_target=n, of=of, share=_share(n, of)))
        status = config_generations.status(ctx)
        reporting = sum(g["machines"] for g in c["generations"])
        on = {g["generation"]: g["machines"] for g in c["generations"]}
        if status.get("current"):
            n = on.get(status["current"], 0)
            rollouts.append(Rollout(kind="config", name=f"generation {status['current']}", target=status["current"], on_target=n,
                                    of=reporting, share=_share(n, reporting)))
        canary = status.get("canary")
        if canary and canary.get("generation"):
            n = on.get(canary["generation"], 0)
            rollouts.append(Rollout(kind="config", name=f"generation {canary['generation']} (canary {canary.get('path', '')})".strip(),
                                    target=canary["generation"], on_target=n, of=reporting, share=_share(n, reporting)))
        return FleetOverview(machines=c["machines"], states=c["states"], image_from_cache=c["image_from_cache"],
                             config_from_cache=c["config_from_cache"], image_defaults=c["image_defaults"], rollouts=rollouts)
