"""Console tickets and remote-viewer files.

A ticket is a fresh SPICE or VNC password with an expiry (passwdValidTo), set on the running
domain through libvirt (virDomainUpdateDeviceFlags on its <graphics> device). QEMU refuses the
password after the expiry. Desktops start with an unknown, already expired password, so there is
no way in without a ticket.
"""

from __future__ import annotations

import configparser
import datetime as dt
import io
import secrets
import xml.etree.ElementTree as ET

from sqlalchemy import select

from netslate import audit
from netslate.errors import Conflict, UserError

from netslate.desktops import domainxml, hosts as hostmod, spiceproxy
from netslate.desktops import states as S
from netslate.desktops.models import DesktopHost, DesktopPool
from netslate.desktops.records import get_desktop as _get

DEFAULT_TTL = 120
MAX_TTL = 3600


def may_open_console(principal_name: str, principal_is_admin: bool, desktop_user: str | None) -> bool:
    """Only the desktop's assigned user or an admin."""
    return principal_is_admin or (desktop_user is not None and principal_name == desktop_user)


def console_kind(ctx, ref, kind: str | None) -> str:
    """The console type a ticket for `ref` would have: `kind`, or the pool's display."""
    with ctx.db.session() as s:
        d = _get(s, ref)
        p = s.get(DesktopPool, d.pool_id) if d.pool_id else None
        return kind or (p.display if p is not None else "spice")


def proxied_vv(ctx, ticket: dict, proxy_url: str) -> str:
    """The `.vv` of a SPICE ticket through the SPICE proxy: host= is a ticket-scoped name, never the
    hypervisor's address."""
    if ticket["type"] != "spice":
        raise UserError("only SPICE consoles go through the SPICE proxy")
    name = spiceproxy.issue_name(ctx.data_dir, ticket["desktop"], ticket["host"], ticket["port"], ticket["ttl"])
    return vv_file({**ticket, "host": name}, proxy=proxy_url)


def issue_ticket(ctx, ref, kind: str | None, actor: str, ttl: int = DEFAULT_TTL, admin: bool = False) -> dict:
    import libvirt

    if not 1 <= ttl <= MAX_TTL:
        raise UserError(f"ticket lifetime must be 1..{MAX_TTL} seconds")
    with ctx.db.session() as s:
        d = _get(s, ref)
        p = s.get(DesktopPool, d.pool_id) if d.pool_id else None
        h = s.scalar(select(DesktopHost).where(DesktopHost.name == d.host))
        if p is None or h is None:
            raise Conflict(f"desktop {d.name} has no pool or host any more")
        if d.state not in S.RUNNING:
            raise Conflict(f"desktop {d.name} is {d.state}; it has no console now")
        kind = kind or p.display
        if kind not in ("spice", "vnc"):
            raise UserError(f"console type {kind!r}: use spice or vnc")
        if kind == "spice" and p.display != "spice":
            raise UserError(f"pool {p.name} has no SPICE display")
        if kind == "vnc" and p.display == "spice" and not admin:
            raise UserError("the out-of-band VNC console is for admins; use the SPICE console")
        name, uri, address, title_pool = d.name, h.uri, h.console_address, p.name
        usb, smartcard = p.usb_redirect, p.smartcard
    conn = hostmod.connect(uri)
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        raise Conflict(f"desktop {name} is not running on its host") from None
    live = ET.fromstring(dom.XMLDesc(0))
    g = next((x for x in live.findall("devices/graphics") if x.get("type") == kind), None)
    if g is None:
        raise Conflict(f"desktop {name} has no {kind} console")
    # VNC authentication only uses 8 characters
    password = secrets.token_hex(4) if kind == "vnc" else secrets.token_urlsafe(18)
    expires = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=ttl)
    g.set("passwd", password)
    g.set("passwdValidTo", domainxml.valid_to(expires))
    dom.updateDeviceFlags(ET.tostring(g, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    port = int(g.get("port", "-1"))
    tls_port = int(g.get("tlsPort", "-1")) if g.get("tlsPort") else None
    with ctx.db.session() as s:
        audit.record(s, actor, "desktop.console.ticket", name, kind=kind, ttl=ttl)
    return {
        "desktop": name, "type": kind, "host": address, "port": port, "tls_port": tls_port, "password": password,
        "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"), "ttl": ttl,
        "title": f"{name} (pool {title_pool})", "usb_redirect": usb, "smartcard": smartcard,
    }


def vv_file(ticket: dict, proxy: str | None = None) -> str:
    """The remote-viewer (virt-viewer) connection file for a ticket.

    With `proxy` (a plain `http://SERVER:PORT`, see `spiceproxy`), `ticket["host"]` must be the
    ticket-scoped name the proxy maps: the file then holds no hypervisor address."""
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # keys are case-sensitive for virt-viewer
    sec = {
        "type": ticket["type"],
        "host": ticket["host"],
        "port": str(ticket["port"]),
        "password": ticket["password"],
        "delete-this-file": "1",
        "title": ticket["title"] + " - press SHIFT+F12 to release the cursor",
        "release-cursor": "shift+f12",
        "secure-attention": "ctrl+alt+end",
        "fullscreen": "0",
    }
    if proxy is not None:
        if "?" in proxy or "#" in proxy:  # remote-viewer refuses a proxy URL with a query (OpenNebula #5393)
            raise ValueError(f"the SPICE proxy URL must be plain: {proxy!r}")
        sec["proxy"] = proxy
    if ticket["type"] == "spice":
        usb = ticket.get("usb_redirect", 0) > 0
        sec["enable-usbredir"] = "1" if usb else "0"
        sec["enable-usb-autoshare"] = "1" if usb else "0"
        sec["enable-smartcard"] = "1" if ticket.get("smartcard") else "0"
    cp["virt-viewer"] = sec
    out = io.StringIO()
    cp.write(out, space_around_delimiters=False)
    return out.getvalue()
