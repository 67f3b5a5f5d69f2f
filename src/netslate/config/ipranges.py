"""IP pool definitions and address choice, pure (no I/O): `parse_pool` validates a pool (range
inside one subnet, gateway, DNS), `overlaps` compares two pools' ranges, `lowest_free` / `choose`
pick the lowest free address, `lease_view` is what a bundle carries. The database edge that stores
pools and leases is `ippools.py`.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable

from netslate.errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")


@dataclass(frozen=True)
class IpPoolSpec:
    name: str
    first: ipaddress.IPv4Address | ipaddress.IPv6Address
    last: ipaddress.IPv4Address | ipaddress.IPv6Address
    prefix: int
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    dns: tuple[str, ...]

    @property
    def network(self):
        return ipaddress.ip_network(f"{self.first}/{self.prefix}", strict=False)

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1 - (1 if self.gateway is not None and self.first <= self.gateway <= self.last else 0)


def _addr(text: str, what: str):
    try:
        return ipaddress.ip_address(str(text).strip())
    except ValueError:
        raise UserError(f"{what} {text!r} is not an IP address") from None


def parse_pool(name: str, range_text: str, prefix: int, gateway: str | None = None, dns: Iterable[str] = ()) -> IpPoolSpec:
    """Validate a pool definition; raise UserError with one clear line."""
    if not NAME_RE.match(name or ""):
        raise UserError(f"invalid pool name {name!r}: use letters, digits, '.', '_' or '-' (at most 63)")
    if not isinstance(range_text, str) or range_text.count("-") != 1:
        raise UserError(f"invalid range {range_text!r}: write FIRST-LAST, e.g. 10.0.0.10-10.0.0.200")
    a, b = range_text.split("-")
    first, last = _addr(a, "range start"), _addr(b, "range end")
    if first.version != last.version:
        raise UserError("the range mixes IPv4 and IPv6 addresses")
    if first > last:
        raise UserError(f"range start {first} is after range end {last}")
    maxlen = 32 if first.version == 4 else 128
    if not isinstance(prefix, int) or not 1 <= prefix <= maxlen:
        raise UserError(f"prefix must be between 1 and {maxlen} for IPv{first.version}")
    net = ipaddress.ip_network(f"{first}/{prefix}", strict=False)
    if last not in net:
        raise UserError(f"range {first}-{last} does not fit in one /{prefix} subnet ({net})")
    if first.version == 4 and prefix <= 30 and (first == net.network_address or last == net.broadcast_address):
        raise UserError(f"range {first}-{last} includes the network or broadcast address of {net}")
    gw = None
    if gateway:
        gw = _addr(gateway, "gateway")
        if gw.version != first.version or gw not in net:
            raise UserError(f"gateway {gw} is outside the subnet {net}")
        if gw.version == 4 and prefix <= 30 and gw in (net.network_address, net.broadcast_address):
            raise UserError(f"gateway {gw} is the network or broadcast address of {net}")
    servers = tuple(str(_addr(d, "DNS server")) for d in dns or ())
    spec = IpPoolSpec(name, first, last, prefix, gw, servers)
    if spec.size < 1:
        raise UserError(f"range {first}-{last} holds no address besides the gateway")
    return spec


def overlaps(a: IpPoolSpec, b: IpPoolSpec) -> bool:
    return a.first.version == b.first.version and a.first <= b.last and b.first <= a.last


def lowest_free(first: int, last: int, used: Iterable[int], skip: Iterable[int] = ()) -> int | None:
    """The lowest integer in [first, last] not in `used` or `skip`, or None (walks the gaps, so
    it costs O(n log n) in the number of leases, not in the size of the range)."""
    taken = sorted({u for u in used if first <= u <= last} | {s for s in skip if first <= s <= last})
    candidate = first
    i = bisect.bisect_left(taken, candidate)
    while candidate <= last:
        if i < len(taken) and taken[i] == candidate:
            candidate += 1
            i += 1
            continue
        return candidate
    return None


def choose(spec: IpPoolSpec, used: Iterable[str]) -> str | None:
    """Lowest free address of a pool given the addresses already leased (None if exhausted)."""
    skip = [int(spec.gateway)] if spec.gateway is not None else []
    n = lowest_free(int(spec.first), int(spec.last), (int(ipaddress.ip_address(u)) for u in used), skip)
    return None if n is None else str(ipaddress.ip_address(n))


def lease_view(spec: IpPoolSpec, address: str) -> dict:
    """What a bundle carries in `network.lease`."""
    return {"pool": spec.name, "address": address, "prefix": spec.prefix, "cidr": f"{address}/{spec.prefix}",
            "gateway": str(spec.gateway) if spec.gateway is not None else None, "dns": list(spec.dns)}
