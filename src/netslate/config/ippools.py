"""Named IP pools and per-machine address leases for `network.mode: pool`.

Pure core (no I/O): `parse_pool` validates a pool definition, `overlaps` compares ranges,
`lowest_free` picks the lowest free address. The database edge below it leases addresses:

- A machine holds at most one lease (unique `machine_id`) and an address is held by at most one
  machine per pool (unique `pool_id, address`). Allocation picks the lowest free address and
  inserts; if a concurrent writer took the same address, the insert fails on the constraint and
  we retry with a fresh view. On SQLite the write transaction starts with `BEGIN IMMEDIATE`, so
  writers queue on the database lock instead of failing.
- A lease is stable: the same machine gets the same address for as long as its resolved document
  names that pool, across bundles and generations.
- Release: when the machine row is removed (foreign key cascade); eagerly after every publish,
  promote, rollback and place (`sweep`: leases whose machine no longer resolves to that pool are
  dropped); when a machine's bundle names another pool (its old lease moves); when a pool would
  otherwise be exhausted (stale leases are reclaimed first); and by `netslate config ippool release`.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Callable, Iterable

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from netslate import audit
from netslate.config.models import IpLease, IpPool
from netslate.errors import Conflict, NotFound, UserError

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
ALLOCATE_ATTEMPTS = 20


class PoolError(UserError):
    """A lease could not be given (unknown or exhausted pool): shown in the bundle and explain."""


# ---------------------------------------------------------------- pure core


@dataclass(frozen=True)
class PoolSpec:
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


def parse_pool(name: str, range_text: str, prefix: int, gateway: str | None = None, dns: Iterable[str] = ()) -> PoolSpec:
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
    spec = PoolSpec(name, first, last, prefix, gw, servers)
    if spec.size < 1:
        raise UserError(f"range {first}-{last} holds no address besides the gateway")
    return spec


def overlaps(a: PoolSpec, b: PoolSpec) -> bool:
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


def choose(spec: PoolSpec, used: Iterable[str]) -> str | None:
    """Lowest free address of a pool given the addresses already leased (None if exhausted)."""
    skip = [int(spec.gateway)] if spec.gateway is not None else []
    n = lowest_free(int(spec.first), int(spec.last), (int(ipaddress.ip_address(u)) for u in used), skip)
    return None if n is None else str(ipaddress.ip_address(n))


def lease_view(spec: PoolSpec, address: str) -> dict:
    """What a bundle carries in `network.lease`."""
    return {"pool": spec.name, "address": address, "prefix": spec.prefix, "cidr": f"{address}/{spec.prefix}",
            "gateway": str(spec.gateway) if spec.gateway is not None else None, "dns": list(spec.dns)}


# ---------------------------------------------------------------- database edge


def _spec(row: IpPool) -> PoolSpec:
    return PoolSpec(row.name, ipaddress.ip_address(row.first), ipaddress.ip_address(row.last), row.prefix,
                    ipaddress.ip_address(row.gateway) if row.gateway else None, tuple(row.dns or ()))


def _write_lock(s: Session) -> None:
    # SQLite: take the write lock up front so concurrent writers wait (busy_timeout) instead of
    # failing on a stale snapshot; other databases rely on the unique constraints and retry.
    if s.get_bind().dialect.name == "sqlite":
        s.connection().exec_driver_sql("BEGIN IMMEDIATE")


def _pool(s: Session, name: str) -> IpPool:
    row = s.scalar(select(IpPool).where(IpPool.name == name))
    if row is None:
        raise NotFound(f"no IP pool {name!r} (see `netslate config ippool list`)")
    return row


def _pool_dict(s: Session, row: IpPool, leases: bool = False) -> dict:
    spec = _spec(row)
    rows = s.execute(select(IpLease.address, IpLease.machine_id, IpLease.leased_at).where(IpLease.pool_id == row.id)).all()
    out = {"name": row.name, "range": f"{row.first}-{row.last}", "first": row.first, "last": row.last,
           "prefix": row.prefix, "subnet": str(spec.network), "gateway": row.gateway, "dns": list(row.dns or []),
           "size": spec.size, "leased": len(rows), "free": spec.size - len(rows)}
    if leases:
        from netslate.store.models import Machine

        names = dict(s.execute(select(Machine.id, Machine.name).where(Machine.id.in_([r[1] for r in rows]))).all()) if rows else {}
        out["leases"] = sorted(
            ({"address": a, "machine_id": mid, "machine": names.get(mid), "leased_at": at.isoformat() + "Z"} for a, mid, at in rows),
            key=lambda d: int(ipaddress.ip_address(d["address"])))
    return out


def add_pool(ctx, name: str, range_text: str, prefix: int, gateway: str | None, dns: Iterable[str], actor: str) -> dict:
    spec = parse_pool(name, range_text, prefix, gateway, dns)
    with ctx.db.session() as s:
        _write_lock(s)
        for row in s.scalars(select(IpPool)):
            if row.name == spec.name:
                raise Conflict(f"IP pool {name!r} already exists")
            if overlaps(spec, _spec(row)):
                raise Conflict(f"range {spec.first}-{spec.last} overlaps pool {row.name!r} ({row.first}-{row.last})")
        row = IpPool(name=spec.name, first=str(spec.first), last=str(spec.last), prefix=spec.prefix,
                     gateway=str(spec.gateway) if spec.gateway else None, dns=list(spec.dns), created_by=actor)
        s.add(row)
        s.flush()
        audit.record(s, actor, "config.ippool.add", f"ippool/{name}", range=f"{spec.first}-{spec.last}",
                     prefix=spec.prefix, gateway=row.gateway, dns=row.dns)
        return _pool_dict(s, row)


def list_pools(ctx) -> list[dict]:
    with ctx.db.session() as s:
        return [_pool_dict(s, r) for r in s.scalars(select(IpPool).order_by(IpPool.name))]


def show_pool(ctx, name: str) -> dict:
    with ctx.db.session() as s:
        return _pool_dict(s, _pool(s, name), leases=True)


def remove_pool(ctx, name: str, actor: str, force: bool = False) -> dict:
    with ctx.db.session() as s:
        _write_lock(s)
        row = _pool(s, name)
        n = len(s.scalars(select(IpLease.id).where(IpLease.pool_id == row.id)).all())
        if n and not force:
            raise Conflict(f"IP pool {name!r} still has {n} lease(s); release them or use --force")
        s.execute(delete(IpLease).where(IpLease.pool_id == row.id))
        s.delete(row)
        audit.record(s, actor, "config.ippool.remove", f"ippool/{name}", released=n)
        return {"name": name, "removed": True, "released": n}


def release(ctx, name: str, machine: str, actor: str) -> dict:
    from netslate.config.store import find_machine

    with ctx.db.session() as s:
        _write_lock(s)
        row = _pool(s, name)
        m = find_machine(s, machine)
        lease = s.scalar(select(IpLease).where(IpLease.machine_id == m.id, IpLease.pool_id == row.id))
        if lease is None:
            raise NotFound(f"machine {m.name or m.id} holds no lease in pool {name!r}")
        address = lease.address
        s.delete(lease)
        audit.record(s, actor, "config.ippool.release", f"ippool/{name}", machine_id=m.id, address=address)
        return {"pool": name, "machine_id": m.id, "machine": m.name, "address": address, "released": True}


def current_lease(ctx, machine_id: int) -> dict | None:
    """The machine's lease, read only (for explain)."""
    with ctx.db.session() as s:
        row = s.execute(select(IpLease.address, IpPool).join(IpPool, IpPool.id == IpLease.pool_id)
                        .where(IpLease.machine_id == machine_id)).first()
        return lease_view(_spec(row[1]), row[0]) if row else None


def lease_for(ctx, machine_id: int, pool_name: str, wants: Callable[[int, str], bool] | None = None) -> dict:
    """The machine's address in `pool_name`: its existing lease, or the lowest free address.

    `wants(machine_id, pool_name)` says whether a machine still resolves to a pool; it is used to
    reclaim stale leases before declaring a pool exhausted. Raises PoolError.
    """
    # fast path, no write lock: the machine already holds its address
    with ctx.db.session() as s:
        row = s.execute(select(IpLease.address, IpPool).join(IpPool, IpPool.id == IpLease.pool_id)
                        .where(IpLease.machine_id == machine_id)).first()
        if row is not None and row[1].name == pool_name:
            return lease_view(_spec(row[1]), row[0])
    for _attempt in range(ALLOCATE_ATTEMPTS):
        try:
            with ctx.db.session() as s:
                _write_lock(s)
                pool = s.scalar(select(IpPool).where(IpPool.name == pool_name))
                if pool is None:
                    raise PoolError(f"IP pool {pool_name!r} does not exist (network.pool names it; see `netslate config ippool list`)")
                spec = _spec(pool)
                mine = s.scalar(select(IpLease).where(IpLease.machine_id == machine_id))
                if mine is not None and mine.pool_id == pool.id:
                    return lease_view(spec, mine.address)
                if mine is not None:  # the machine moved to another pool: its old address is free again
                    s.delete(mine)
                    s.flush()
                used = s.execute(select(IpLease.machine_id, IpLease.address).where(IpLease.pool_id == pool.id)).all()
                address = choose(spec, [a for _, a in used])
                if address is None and wants is not None:
                    stale = [mid for mid, _ in used if not wants(mid, pool_name)]
                    if stale:
                        s.execute(delete(IpLease).where(IpLease.pool_id == pool.id, IpLease.machine_id.in_(stale)))
                        log.info("ippool %s: reclaimed %d stale lease(s)", pool_name, len(stale))
                        address = choose(spec, [a for mid, a in used if mid not in set(stale)])
                if address is None:
                    raise PoolError(f"IP pool {pool_name!r} is exhausted: all {spec.size} addresses are leased "
                                    f"(range {spec.first}-{spec.last}); no address was given to machine {machine_id}")
                s.add(IpLease(pool_id=pool.id, machine_id=machine_id, address=address))
                s.flush()
                audit.record(s, "netslate", "config.ippool.lease", f"ippool/{pool_name}", machine_id=machine_id, address=address)
                return lease_view(spec, address)
        except IntegrityError:
            continue  # a concurrent writer took this address (or leased this machine): look again
    raise PoolError(f"IP pool {pool_name!r}: could not lease an address after {ALLOCATE_ATTEMPTS} attempts under contention")


def sweep(ctx, wants: Callable[[int, str], bool]) -> int:
    """Drop every lease whose machine no longer resolves to that lease's pool; returns how many."""
    with ctx.db.session() as s:
        rows = s.execute(select(IpLease.id, IpLease.machine_id, IpPool.name).join(IpPool, IpPool.id == IpLease.pool_id)).all()
    stale = [lid for lid, mid, pname in rows if not wants(mid, pname)]
    if not stale:
        return 0
    with ctx.db.session() as s:
        _write_lock(s)
        s.execute(delete(IpLease).where(IpLease.id.in_(stale)))
        audit.record(s, "netslate", "config.ippool.sweep", "ippool", released=len(stale))
    return len(stale)
