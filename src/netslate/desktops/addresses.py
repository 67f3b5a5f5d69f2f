"""Pool address ranges. Uniqueness comes from the database (unique ip), so concurrent allocators
in different processes can race safely: the loser of an insert retries with the next free address."""

from __future__ import annotations

import ipaddress
import re
import time

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from netslate.errors import Conflict, UserError

from netslate.desktops.models import Desktop, DesktopAddress

MAX_RANGE = 65536


def parse_range(text: str) -> tuple[str, str]:
    first, sep, last = text.partition("-")
    if not sep:
        raise UserError(f"--ip-range {text!r}: use FIRST-LAST, e.g. 10.20.0.10-10.20.0.99")
    try:
        a = ipaddress.ip_address(first.strip())
        b = ipaddress.ip_address(last.strip())
    except ValueError as exc:
        raise UserError(f"--ip-range {text!r}: {exc}") from None
    if a.version != b.version:
        raise UserError(f"--ip-range {text!r}: both ends must be the same IP version")
    if int(b) < int(a):
        raise UserError(f"--ip-range {text!r}: the last address is before the first")
    if int(b) - int(a) + 1 > MAX_RANGE:
        raise UserError(f"--ip-range {text!r}: more than {MAX_RANGE} addresses")
    for ip in (a, b):
        if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local:
            raise UserError(f"--ip-range {text!r}: {ip} cannot be a desktop address")
    return str(a), str(b)


def range_size(first: str, last: str) -> int:
    return int(ipaddress.ip_address(last)) - int(ipaddress.ip_address(first)) + 1


def ranges_overlap(a: tuple[str, str], b: tuple[str, str]) -> bool:
    a0, a1 = (int(ipaddress.ip_address(x)) for x in a)
    b0, b1 = (int(ipaddress.ip_address(x)) for x in b)
    return ipaddress.ip_address(a[0]).version == ipaddress.ip_address(b[0]).version and a0 <= b1 and b0 <= a1


def allocate(session_factory, pool_name: str, first: str, last: str, desktop_id: int, mac: str, hostname: str, attempts: int = 50) -> str:
    """Give desktop `desktop_id` the lowest free address of the range, in its own transaction."""
    lo = int(ipaddress.ip_address(first))
    hi = int(ipaddress.ip_address(last))
    for _ in range(attempts):
        with session_factory() as s:
            used = {int(ipaddress.ip_address(ip)) for ip in s.scalars(select(DesktopAddress.ip))}
        candidate = next((i for i in range(lo, hi + 1) if i not in used), None)
        if candidate is None:
            raise Conflict(f"pool {pool_name}: address range {first}-{last} is exhausted ({hi - lo + 1} addresses in use)")
        ip = str(ipaddress.ip_address(candidate))
        try:
            with session_factory() as s:
                s.add(DesktopAddress(ip=ip, pool_name=pool_name, desktop_id=desktop_id, mac=mac, hostname=hostname))
            return ip
        except IntegrityError:
            time.sleep(0.01)  # someone else took it between our read and our insert: next one
    raise Conflict(f"pool {pool_name}: could not allocate an address after {attempts} attempts")


def reservations(session) -> list[tuple[str, str, str]]:
    """(mac, ip, hostname) for every address held by a live desktop: the DHCP reservations."""
    rows = session.execute(
        select(DesktopAddress.mac, DesktopAddress.ip, DesktopAddress.hostname)
        .join(Desktop, Desktop.id == DesktopAddress.desktop_id)
        .order_by(DesktopAddress.ip)
    ).all()
    # DHCP host names: letters, digits and '-' only (pool names may hold '.' or '_')
    return [(m, i, re.sub(r"[^A-Za-z0-9-]", "-", h)[:63]) for m, i, h in rows]


def desktop_reservations(ctx) -> list[tuple[str, str, str]]:
    """For the dnsmasq renderer: `dhcp-host=MAC,IP,HOSTNAME` for every desktop that holds an address."""
    with ctx.db.session() as s:
        return reservations(s)
