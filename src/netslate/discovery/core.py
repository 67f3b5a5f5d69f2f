"""The pure core of discovery: subnet → site, server ordering (RFC 2782), SRV records, exports.

No I/O here. `View` is a snapshot of sites, subnets and live servers; the DNS responder, the
locate endpoint and the exporters all ask it the same questions, so they give the same answers.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import re
from dataclasses import dataclass, field

from netslate.onmachine import srv as srv_order

SERVICE = "_netslate._tcp"
# SRV priority = tier * TIER_STEP + the server's own priority (0..TIER_STEP-1).
SAME_SITE_TIER = 0
OTHER_SITE_TIER = 1  # central: servers over the writable database (every other server, without branches)
BRANCH_TIER = 2  # another site's branch server (on a read-only standby): after central (issue 15 §4)
TIER_STEP = 10
MAX_SERVER_PRIORITY = TIER_STEP - 1
DNS_TTL = 30  # seconds; short so a server that stops heartbeating drops out of caches quickly
LOCATE_TTL = 300  # machines re-ask after this, and keep using a stale answer when the server is down

_LINK_LOCAL_V6 = ipaddress.ip_network("fe80::/10")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DiscoveryInputError(ValueError):
    """Bad input to the pure core; the edges turn it into a UserError."""


# ---------------------------------------------------------------- addresses and names


def parse_address(value: str) -> IPAddress:
    """An IP address; IPv4-mapped IPv6 (from dual-stack sockets) becomes the IPv4 address."""
    try:
        addr = ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise DiscoveryInputError(f"not an IP address: {value!r}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_publishable(addr: IPAddress) -> bool:
    """Never publish IPv6 link-local (fe80::/10: useless off-link, needs a zone), nor zoned,
    unspecified or multicast addresses."""
    if addr.is_unspecified or addr.is_multicast:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id or addr in _LINK_LOCAL_V6:
            return False
    return True


def publishable(addresses) -> list[str]:
    """Filter and normalise a list of address strings; unparsable entries are dropped."""
    out: list[str] = []
    for a in addresses:
        try:
            addr = parse_address(a)
        except DiscoveryInputError:
            continue
        if is_publishable(addr) and str(addr) not in out:
            out.append(str(addr))
    return out


def parse_cidr(value: str) -> IPNetwork:
    """A normalised network; host bits set is refused with the network the user probably meant."""
    text = str(value).strip()
    if "/" not in text:
        raise DiscoveryInputError(f"not a CIDR (want ADDRESS/PREFIX, e.g. 10.1.0.0/16): {value!r}")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise DiscoveryInputError(f"not a CIDR: {value!r} ({exc})") from None
        raise DiscoveryInputError(f"{value} has host bits set; did you mean {loose}?") from None


def check_label(value: str, what: str = "server name") -> str:
    """A DNS label (the server's name becomes `<name>.<domain>`, the SRV target)."""
    v = str(value).lower()
    if not _LABEL.match(v):
        raise DiscoveryInputError(
            f"invalid {what} {value!r}: use 1-63 letters, digits or '-', not starting or ending with '-'"
        )
    return v


def check_domain(value: str) -> str:
    """A DNS domain, normalised to lower case without the trailing dot."""
    d = str(value).strip().lower().rstrip(".")
    if not d or len(d) > 200:
        raise DiscoveryInputError(f"invalid DNS domain {value!r}")
    for label in d.split("."):
        if not _LABEL.match(label):
            raise DiscoveryInputError(f"invalid DNS domain {value!r}: bad label {label!r}")
    return d


def srv_name(domain: str) -> str:
    return f"{SERVICE}.{check_domain(domain)}"


def target_name(server_name: str, domain: str) -> str:
    return f"{server_name}.{check_domain(domain)}"


# ---------------------------------------------------------------- the snapshot


@dataclass(frozen=True)
class ServerInfo:
    name: str
    site: str | None
    addresses: tuple[str, ...]
    port: int
    priority: int = 0
    weight: int = 100
    branch: bool = False  # a branch server (reads a standby of the central database)
    tls_port: int | None = None  # its HTTPS listener (`serve --tls-listen`), None without TLS
    tls_pin: str | None = None  # that listener's certificate pin (sha256:HEX)


@dataclass(frozen=True)
class SrvEntry:
    """One server as seen by one client: the SRV priority and weight it gets."""

    server: ServerInfo
    priority: int
    weight: int

    def as_dict(self) -> dict:
        s = self.server
        d = {
            "name": s.name,
            "site": s.site,
            "addresses": list(s.addresses),
            "port": s.port,
            "priority": self.priority,
            "weight": self.weight,
            "urls": [_url(a, s.port) for a in s.addresses],
        }
        if s.tls_port and s.tls_pin:  # a server with TLS: its https URLs and certificate pin (machines that pin use these)
            d.update(https_urls=[_url(a, s.tls_port, "https") for a in s.addresses], pin=s.tls_pin)
        return d


def _url(address: str, port: int, scheme: str = "http") -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"


class SubnetMap:
    """Longest-prefix match of an address to a site: one dict per (family, prefix length)."""

    def __init__(self, subnets: list[tuple[str, str]]):
        # (version, prefixlen) -> {network int: site}
        tables: dict[tuple[int, int], dict[int, str]] = {}
        for cidr, site in subnets:
            net = parse_cidr(cidr)
            tables.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = site
        # Longest prefixes first so the first hit is the most specific.
        self._tables = sorted(tables.items(), key=lambda kv: -kv[0][1])

    def site_for(self, addr: IPAddress) -> str | None:
        bits = 32 if addr.version == 4 else 128
        value = int(addr)
        for (version, plen), table in self._tables:
            if version != addr.version:
                continue
            mask = ((1 << plen) - 1) << (bits - plen) if plen else 0
            site = table.get(value & mask)
            if site is not None:
                return site
        return None


@dataclass
class View:
    """What discovery knows at one moment: sites, their subnets, and the live servers."""

    sites: list[str] = field(default_factory=list)
    subnets: list[tuple[str, str]] = field(default_factory=list)  # (cidr, site)
    servers: list[ServerInfo] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._map = SubnetMap(self.subnets)
        # Only servers that have something publishable to say.
        self.servers = [
            dataclasses.replace(s, addresses=tuple(publishable(s.addresses)))
            for s in sorted(self.servers, key=lambda s: s.name)
        ]
        self.servers = [s for s in self.servers if s.addresses]
        self._by_name = {s.name: s for s in self.servers}
        self._entries: dict = {}  # site -> entries; a View never changes, so this is safe
        self._sites: dict = {}  # client address string -> site, bounded

    def site_for(self, client: str | IPAddress | None) -> str | None:
        if client is None:
            return None
        if isinstance(client, str):
            try:
                return self._sites[client]
            except KeyError:
                site = self._site_for(client)
                if len(self._sites) >= 65536:
                    self._sites.clear()
                self._sites[client] = site
                return site
        return self._site_for(client)

    def _site_for(self, client: str | IPAddress) -> str | None:
        try:
            addr = client if isinstance(client, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else parse_address(client)
        except DiscoveryInputError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return self._map.site_for(addr)

    def server(self, name: str) -> ServerInfo | None:
        return self._by_name.get(name)

    def entries(self, client_site: str | None) -> list[SrvEntry]:
        """Every live server with the priority it gets for a client in `client_site`, sorted by
        (priority, name). Same-site servers get tier 0; everything else (or every server, when the
        client's site is unknown) tier 1, as AD does for clients in unknown subnets; except another
        site's branch servers, which get tier 2: a branch's machines try their branch, then
        central, then other branches (RFC 2782: lower priority first)."""
        cached = self._entries.get(client_site)
        if cached is not None:
            return list(cached)
        out = []
        for s in self.servers:
            if client_site is not None and s.site == client_site:
                tier = SAME_SITE_TIER
            else:
                tier = BRANCH_TIER if s.branch else OTHER_SITE_TIER
            prio = tier * TIER_STEP + min(max(s.priority, 0), MAX_SERVER_PRIORITY)
            out.append(SrvEntry(s, prio, max(0, min(s.weight, 65535))))
        out.sort(key=lambda e: (e.priority, e.server.name))
        if len(self._entries) < 1024:
            self._entries[client_site] = tuple(out)
        return out

    def ordered(self, client_site: str | None, rng: random.Random | None = None) -> list[SrvEntry]:
        """The order a client should try servers in: RFC 2782 (priority, then weighted random)."""
        return rfc2782_order(self.entries(client_site), rng or random)


def rfc2782_order(entries: list[SrvEntry], rng) -> list[SrvEntry]:
    """RFC 2782 selection applied to the whole list (lowest priority first, weighted random within
    one priority). The one weighted-choice function lives in the on-machine library, so the agent
    orders DNS SRV answers exactly as this orders the locate answer."""
    return srv_order.rfc2782_order(entries, rng)


# ---------------------------------------------------------------- records and exports


@dataclass(frozen=True)
class ResourceRecord:
    """One DNS resource record (SRV, A or AAAA) of the exported zone."""

    name: str  # absolute, without the trailing dot
    rtype: str  # SRV | A | AAAA
    ttl: int
    data: tuple  # SRV: (priority, weight, port, target); A/AAAA: (address,)


def srv_records(entries: list[SrvEntry], domain: str, ttl: int = DNS_TTL) -> list[ResourceRecord]:
    name = srv_name(domain)
    return [ResourceRecord(name, "SRV", ttl, (e.priority, e.weight, e.server.port, target_name(e.server.name, domain))) for e in entries]


def address_records(server: ServerInfo, domain: str, ttl: int = DNS_TTL, rtype: str | None = None) -> list[ResourceRecord]:
    name = target_name(server.name, domain)
    out = []
    for a in server.addresses:
        t = "AAAA" if ":" in a else "A"
        if rtype is None or rtype == t:
            out.append(ResourceRecord(name, t, ttl, (a,)))
    return out


def locate_answer(view: View, client: str | None, rng=None, ttl: int = LOCATE_TTL) -> dict:
    site = view.site_for(client)
    return {
        "client": client,
        "site": site,
        "ttl": ttl,
        "servers": [e.as_dict() for e in view.ordered(site, rng)],
    }


def _export_entries(view: View, site: str | None) -> list[SrvEntry]:
    if site is not None and site not in view.sites:
        raise DiscoveryInputError(f"no such site {site!r}")
    return view.entries(site)


def render_bind(view: View, domain: str, site: str | None = None, serial: int = 1,
                ns: str | None = None, ttl: int = DNS_TTL, records_only: bool = False) -> str:
    """A BIND zone file for `domain` (or just its records with `records_only`, for $INCLUDE).
    With `site`, priorities are as seen from that site: use one zone file per BIND view."""
    domain = check_domain(domain)
    entries = _export_entries(view, site)
    lines = [f"; netslate discovery records for {domain}" + (f", as seen from site {site}" if site else "")]
    if not records_only:
        if ns is None:
            ns = target_name(entries[0].server.name, domain) if entries else f"ns.{domain}"
        ns = ns.rstrip(".") + "."
        lines += [
            f"$ORIGIN {domain}.",
            f"$TTL {ttl}",
            f"@\tIN\tSOA\t{ns} hostmaster.{domain}. ( {serial} 3600 600 604800 {ttl} )",
            f"@\tIN\tNS\t{ns}",
        ]
    for r in srv_records(entries, domain, ttl):
        p, w, port, target = r.data
        lines.append(f"{r.name}.\t{ttl}\tIN\tSRV\t{p} {w} {port} {target}.")
    for e in entries:
        for r in address_records(e.server, domain, ttl):
            lines.append(f"{r.name}.\t{ttl}\tIN\t{r.rtype}\t{r.data[0]}")
    return "\n".join(lines) + "\n"


def render_dnsmasq(view: View, domain: str, site: str | None = None) -> str:
    """dnsmasq configuration lines (srv-host=, host-record=) for a conf-dir snippet."""
    domain = check_domain(domain)
    entries = _export_entries(view, site)
    lines = [f"# netslate discovery records for {domain}" + (f", as seen from site {site}" if site else "")]
    for r in srv_records(entries, domain):
        p, w, port, target = r.data
        lines.append(f"srv-host={r.name},{target},{port},{p},{w}")
    for e in entries:
        if e.server.addresses:
            lines.append(f"host-record={target_name(e.server.name, domain)},{','.join(e.server.addresses)}")
    return "\n".join(lines) + "\n"
