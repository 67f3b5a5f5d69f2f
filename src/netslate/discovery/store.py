"""Discovery's database edge: sites, subnets, server registration and heartbeats, and the View.

Each public function is one transaction; changes write their audit entry in the same session.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re

from sqlalchemy import delete, select, text

from netslate import audit
from netslate.discovery import core
from netslate.discovery.models import DiscoveryServer, Site, SiteSubnet
from netslate.errors import Conflict, NotFound, UserError
from netslate.names import check_name
from netslate.store.db import utcnow
from netslate.store.outbox import ServerStatus

HEARTBEAT_INTERVAL = 10.0  # seconds between a server's heartbeats
STALE_AFTER = 45.0  # a server silent for longer is left out of DNS, locate and exports
_PIN = re.compile(r"^sha256:[0-9a-f]{64}\Z")


def _user(fn, *args):
    try:
        return fn(*args)
    except core.DiscoveryInputError as exc:
        raise UserError(str(exc)) from None


def _site_dict(site: Site, servers: list[DiscoveryServer] | None = None) -> dict:
    d = {
        "name": site.name,
        "description": site.description,
        "created_at": site.created_at.isoformat() + "Z",
        "subnets": [n.cidr for n in site.subnets],
    }
    if servers is not None:
        d["servers"] = [s.name for s in servers]
    return d


def _server_dict(s: DiscoveryServer, now: dt.datetime) -> dict:
    age = (now - s.last_heartbeat).total_seconds()
    return {
        "name": s.name,
        "site": s.site,
        "addresses": list(s.addresses),
        "port": s.port,
        "priority": s.priority,
        "weight": s.weight,
        "tls_port": s.tls_port,
        "tls_pin": s.tls_pin,
        "started_at": s.started_at.isoformat() + "Z",
        "last_heartbeat": s.last_heartbeat.isoformat() + "Z",
        "heartbeat_age_s": round(age, 1),
        "alive": age <= STALE_AFTER,
    }


def _get_site(s, name: str) -> Site:
    site = s.scalar(select(Site).where(Site.name == name))
    if site is None:
        raise NotFound(f"no such site {name!r} (see `netslate site list`)")
    return site


# ---------------------------------------------------------------- sites


def add_site(ctx, name: str, description: str = "", actor: str | None = None) -> dict:
    check_name(name, "site name")
    with ctx.db.session() as s:
        if s.scalar(select(Site).where(Site.name == name)) is not None:
            raise Conflict(f"site {name!r} already exists")
        site = Site(name=name, description=description)
        s.add(site)
        s.flush()
        audit.record(s, actor or audit.default_actor(), "site.add", name, description=description)
        s.refresh(site)
        return _site_dict(site, [])


def list_sites(ctx) -> list[dict]:
    with ctx.db.session() as s:
        servers = s.scalars(select(DiscoveryServer)).all()
        return [
            _site_dict(site, [x for x in servers if x.site == site.name])
            for site in s.scalars(select(Site).order_by(Site.name)).all()
        ]


def show_site(ctx, name: str) -> dict:
    with ctx.db.session() as s:
        site = _get_site(s, name)
        now = utcnow()
        servers = s.scalars(select(DiscoveryServer).where(DiscoveryServer.site == name).order_by(DiscoveryServer.name)).all()
        d = _site_dict(site)
        d["servers"] = [_server_dict(x, now) for x in servers]
        return d


def remove_site(ctx, name: str, actor: str | None = None) -> None:
    with ctx.db.session() as s:
        site = _get_site(s, name)
        s.delete(site)
        audit.record(s, actor or audit.default_actor(), "site.rm", name)


def add_subnet(ctx, site_name: str, cidr: str, actor: str | None = None) -> dict:
    net = _user(core.parse_cidr, cidr)
    with ctx.db.session() as s:
        site = _get_site(s, site_name)
        other = s.scalar(select(SiteSubnet).where(SiteSubnet.cidr == str(net)))
        if other is not None:
            raise Conflict(f"subnet {net} already belongs to site {other.site.name!r}")
        s.add(SiteSubnet(site=site, cidr=str(net)))
        audit.record(s, actor or audit.default_actor(), "site.subnet.add", site_name, cidr=str(net))
        s.flush()
        s.refresh(site)
        return _site_dict(site)


def remove_subnet(ctx, site_name: str, cidr: str, actor: str | None = None) -> dict:
    net = _user(core.parse_cidr, cidr)
    with ctx.db.session() as s:
        site = _get_site(s, site_name)
        row = s.scalar(select(SiteSubnet).where(SiteSubnet.site_id == site.id, SiteSubnet.cidr == str(net)))
        if row is None:
            raise NotFound(f"site {site_name!r} has no subnet {net}")
        s.delete(row)
        audit.record(s, actor or audit.default_actor(), "site.subnet.rm", site_name, cidr=str(net))
        s.flush()
        s.refresh(site)
        return _site_dict(site)


# ---------------------------------------------------------------- servers


def register_server(ctx, name: str, site: str | None, addresses: list[str], port: int,
                    priority: int = 0, weight: int = 100, actor: str | None = None,
                    tls_port: int | None = None, tls_pin: str | None = None) -> dict:
    """Insert or refresh this server's row (its first heartbeat). Link-local addresses are dropped.
    `tls_port`/`tls_pin`: its HTTPS listener and certificate pin, published in locate answers."""
    name = _user(core.check_label, name)
    if not (0 < int(port) < 65536):
        raise UserError(f"invalid port {port}")
    if not (0 <= priority <= core.MAX_SERVER_PRIORITY):
        raise UserError(f"server priority must be 0..{core.MAX_SERVER_PRIORITY}, got {priority}")
    if not (0 <= weight <= 65535):
        raise UserError(f"server weight must be 0..65535, got {weight}")
    if tls_port is not None and not (0 < int(tls_port) < 65536):
        raise UserError(f"invalid TLS port {tls_port}")
    if tls_port is not None and not (isinstance(tls_pin, str) and _PIN.match(tls_pin)):
        raise UserError(f"invalid TLS certificate pin {tls_pin!r} (want sha256: and 64 hex digits)")
    for a in addresses:
        _user(core.parse_address, a)
    kept = core.publishable(addresses)
    with ctx.db.session() as s:
        if site is not None:
            _get_site(s, site)
        row = s.scalar(select(DiscoveryServer).where(DiscoveryServer.name == name))
        now = utcnow()
        if (row is not None and (now - row.last_heartbeat).total_seconds() <= STALE_AFTER
                and (row.port, list(row.addresses)) != (int(port), kept)):
            # Two servers with one name would overwrite each other's row and SRV target.
            raise Conflict(f"server name {name!r} is in use by a live server at "
                           f"{','.join(row.addresses) or '-'} port {row.port}; choose another with --server-name")
        if row is None:
            row = DiscoveryServer(name=name)
            s.add(row)
        row.site, row.addresses, row.port = site, kept, int(port)
        row.priority, row.weight = priority, weight
        row.tls_port, row.tls_pin = (int(tls_port), tls_pin) if tls_port is not None else (None, None)
        row.started_at = row.last_heartbeat = now
        if not ctx.db.has_replica:
            # Over the writable database now (e.g. a branch promoted by the runbook, docs/sites.md):
            # no longer a branch server, so not ranked after central's until its old status ages out.
            s.execute(delete(ServerStatus).where(ServerStatus.name == name))
        audit.record(s, actor or f"server:{name}", "server.register", name, site=site, addresses=kept, port=int(port))
        s.flush()
        return _server_dict(row, now)


def heartbeat(ctx, name: str) -> bool:
    """Refresh last_heartbeat; False when the row is gone (removed by an operator)."""
    with ctx.db.session() as s:
        row = s.scalar(select(DiscoveryServer).where(DiscoveryServer.name == name))
        if row is None:
            return False
        row.last_heartbeat = utcnow()
        return True


def list_servers(ctx) -> list[dict]:
    with ctx.db.session() as s:
        now = utcnow()
        return [_server_dict(r, now) for r in s.scalars(select(DiscoveryServer).order_by(DiscoveryServer.name)).all()]


def remove_server(ctx, name: str, actor: str | None = None) -> None:
    with ctx.db.session() as s:
        n = s.execute(delete(DiscoveryServer).where(DiscoveryServer.name == name)).rowcount
        if not n:
            raise NotFound(f"no such server {name!r} (see `netslate server list`)")
        audit.record(s, actor or audit.default_actor(), "server.rm", name)


def load_view(ctx, stale_after: float = STALE_AFTER) -> core.View:
    """A snapshot for answering: all sites and subnets, and servers that heartbeat recently (each
    marked branch when it reported its standby's state recently: `core.View.entries` ranks other
    sites' branch servers after central's)."""
    with ctx.db.read_session() as s:
        cutoff = _data_now(ctx, s) - dt.timedelta(seconds=stale_after)
        sites = list(s.scalars(select(Site.name).order_by(Site.name)).all())
        subnets = [(cidr, site) for cidr, site in s.execute(select(SiteSubnet.cidr, Site.name).join(Site)).all()]
        # branch servers: those that report their standby's state at central (issue 15, every 5 s)
        branches = set(s.scalars(select(ServerStatus.name).where(ServerStatus.updated_at >= cutoff)))
        servers = [
            core.ServerInfo(r.name, r.site, tuple(r.addresses or ()), r.port, r.priority, r.weight, r.name in branches,
                            r.tls_port, r.tls_pin)
            for r in s.scalars(select(DiscoveryServer).where(DiscoveryServer.last_heartbeat >= cutoff)).all()
        ]
    return core.View(sites=sites, subnets=subnets, servers=servers)


def _data_now(ctx, s) -> dt.datetime:
    """Now; on a branch server cut off from the central primary, the time its standby's data
    stopped (its last replayed transaction): servers are as live as the standby can know. Without
    this, after STALE_AFTER seconds of a WAN cut every row on the standby looks stale and the
    branch's DNS and locate answers would list no server at all, its own included."""
    now = utcnow()
    if ctx.db.down_since is None or s.get_bind().dialect.name != "postgresql":
        return now
    ts = s.execute(text("SELECT pg_last_xact_replay_timestamp()")).scalar()
    if ts is None:
        return now
    return min(now, ts.astimezone(dt.timezone.utc).replace(tzinfo=None))


def default_addresses(listen_host: str) -> list[str]:
    """What a server advertises when --advertise is not given: its listen address, or for a
    wildcard listen every global address of the host (from `ip -j addr`), link-local excluded."""
    if listen_host not in ("", "0.0.0.0", "::"):
        return core.publishable([listen_host])
    import json
    import subprocess

    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=5, check=True).stdout
        infos = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    found = []
    for iface in infos:
        for a in iface.get("addr_info", []):
            if a.get("scope") != "global":
                continue
            if listen_host == "0.0.0.0" and a.get("family") != "inet":
                continue
            found.append(a.get("local", ""))
    return core.publishable(found)


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def mark_stopped(ctx, name: str) -> None:
    """A clean shutdown: age the heartbeat past STALE_AFTER so answers drop this server at once
    (the row stays, so `netslate server list` shows it as not alive)."""
    with ctx.db.session() as s:
        row = s.scalar(select(DiscoveryServer).where(DiscoveryServer.name == name))
        if row is not None:
            row.last_heartbeat = utcnow() - dt.timedelta(seconds=STALE_AFTER + 1)


def site_exists(ctx, name: str) -> bool:
    with ctx.db.session() as s:
        return s.scalar(select(Site.id).where(Site.name == name)) is not None
