"""Named IP pools and per-machine address leases for `network.mode: pool`: the database edge.

The pure core (pool validation, overlap, lowest free address) is `ipranges.py`; which machine
wants which pool is decided by `leases.py` from resolution.

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

import ipaddress
import logging
from typing import Callable, Iterable

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from netslate import audit
from netslate.config import machines
from netslate.config.ipranges import IpPoolSpec, choose, lease_view, overlaps, parse_pool
from netslate.config.models import IpLease, IpPool
from netslate.errors import Conflict, NotFound, UserError

log = logging.getLogger(__name__)

ALLOCATE_ATTEMPTS = 20


class PoolError(UserError):
    """A lease could not be given (unknown or exhausted pool): shown in the bundle and explain."""


def _spec(row: IpPool) -> IpPoolSpec:
    return IpPoolSpec(row.name, ipaddress.ip_address(row.first), ipaddress.ip_address(row.last), row.prefix,
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
        names = machines.names(s, [r[1] for r in rows])
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
    with ctx.db.session() as s:
        _write_lock(s)
        row = _pool(s, name)
        m = machines.find(s, machine)
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
