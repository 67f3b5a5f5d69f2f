"""Desktop rows → their JSON records, and lookup by id or name (shared by every desktops module)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from netslate.errors import NotFound

from netslate.desktops.models import Desktop, DesktopAddress, DesktopHost, DesktopPool


def iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() + "Z" if t else None


def desktop_dict(s, d: Desktop) -> dict:
    addr = s.scalar(select(DesktopAddress.ip).where(DesktopAddress.desktop_id == d.id))
    host = s.scalar(select(DesktopHost).where(DesktopHost.name == d.host))
    return {
        "id": d.id, "name": d.name, "pool": d.pool_name if d.pool_id is not None else None, "host": d.host,
        "state": d.state, "user": d.user, "ip": addr, "mac": d.mac, "golden_version": d.golden_version,
        "disk": d.disk, "reason": d.reason, "failures": d.failures, "prior_state": d.prior_state,
        "console_host": host.console_address if host else None,
        "started_at": iso(d.started_at), "assigned_at": iso(d.assigned_at), "logged_off_at": iso(d.logged_off_at),
        "created_at": iso(d.created_at),
    }


def get_desktop(s, ref: str | int) -> Desktop:
    """By id (digits) or domain name."""
    ref = str(ref)
    d = s.get(Desktop, int(ref)) if ref.isdigit() else s.scalar(select(Desktop).where(Desktop.name == ref))
    if d is None:
        raise NotFound(f"no desktop {ref!r}")
    return d


def get_pool(s, name: str) -> DesktopPool:
    p = s.scalar(select(DesktopPool).where(DesktopPool.name == name))
    if p is None:
        raise NotFound(f"no pool named {name!r}")
    return p


def get_host(s, name: str) -> DesktopHost:
    h = s.scalar(select(DesktopHost).where(DesktopHost.name == name))
    if h is None:
        raise NotFound(f"no host named {name!r}")
    return h
