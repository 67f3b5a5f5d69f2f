"""Reconcile decisions as a pure function: desired pools + observed world → a list of actions.

No I/O here. `actuator.py` observes libvirt, disks and the store, calls `plan`, and carries out the
actions one by one (each persisted before it acts), so a crash at any point is repaired by the
next pass: the plan is computed again from what is really there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netslate.desktops import states as S

MAX_FAILURES = 3  # an errored desktop is reset this many times, then quarantined


@dataclass(frozen=True)
class PoolObs:
    name: str
    size: int
    spare: int
    max: int
    memory_mib: int
    golden_version: int  # the version new and reset desktops get
    persistent: bool = False
    dedicated: bool = False
    grace_seconds: float = 60.0
    hosts: tuple[str, ...] = ()  # hosts this pool may use (already resolved from its selector)
    snapshot_every: float | None = None  # seconds between scheduled snapshots (persistent pools)
    snapshot_keep: int = 7


@dataclass(frozen=True)
class HostObs:
    name: str
    reachable: bool
    total_memory_mib: int = 0
    free_memory_mib: int = 0  # as libvirt reports it
    reserve_mib: int = 512  # kept for the host itself
    max_starting: int = 4  # desktops booting at once on this host (boot-storm throttle)
    domains: frozenset[str] = frozenset()  # running domains with netslate's prefix
    degraded: str = ""  # the hypervisor failed a domain start: no new starts here (issue 11 #10)


@dataclass(frozen=True)
class DesktopObs:
    id: int
    name: str
    pool: str
    host: str
    state: str
    memory_mib: int = 0
    user: str | None = None
    golden_version: int = 0
    logged_off_at: float | None = None
    started_at: float | None = None
    prior_state: str | None = None  # the state before `unknown`
    failures: int = 0
    reason: str = ""
    last_scheduled_snapshot: float | None = None
    scheduled_snapshots: int = 0


@dataclass(frozen=True)
class World:
    hosts: dict[str, HostObs]
    desktops: tuple[DesktopObs, ...]
    disks: frozenset[str] = frozenset()  # desktop names that have a disk directory
    addresses: tuple[tuple[str, int | None], ...] = ()  # (ip, desktop id or None)
    now: float = 0.0
    boot_window: float = 15.0  # a desktop counts as booting this long after its start


# ---- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    def describe(self) -> str:  # pragma: no cover - overridden
        return type(self).__name__


@dataclass(frozen=True)
class Create(Action):
    pool: str
    host: str

    def describe(self) -> str:
        return f"create a desktop in pool {self.pool} on host {self.host}"


@dataclass(frozen=True)
class Provision(Action):
    """Finish (or redo) provisioning of a desktop row that exists: disk, domain, start."""
    desktop_id: int
    host: str

    def describe(self) -> str:
        return f"provision desktop {self.desktop_id}"


@dataclass(frozen=True)
class Reset(Action):
    desktop_id: int
    host: str
    reason: str

    def describe(self) -> str:
        return f"reset desktop {self.desktop_id} ({self.reason})"


@dataclass(frozen=True)
class Start(Action):
    desktop_id: int
    host: str

    def describe(self) -> str:
        return f"start desktop {self.desktop_id}"


@dataclass(frozen=True)
class SetState(Action):
    desktop_id: int
    state: str
    reason: str = ""

    def describe(self) -> str:
        return f"desktop {self.desktop_id} → {self.state}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class Destroy(Action):
    desktop_id: int
    reason: str

    def describe(self) -> str:
        return f"destroy desktop {self.desktop_id} ({self.reason})"


@dataclass(frozen=True)
class DestroyOrphanDomain(Action):
    host: str
    name: str

    def describe(self) -> str:
        return f"destroy orphan domain {self.name} on {self.host}"


@dataclass(frozen=True)
class DeleteOrphanDisk(Action):
    name: str

    def describe(self) -> str:
        return f"delete orphan disk directory {self.name}"


@dataclass(frozen=True)
class ReleaseOrphanAddress(Action):
    ip: str

    def describe(self) -> str:
        return f"release orphan address {self.ip}"


@dataclass(frozen=True)
class TakeSnapshot(Action):
    """A scheduled snapshot of a persistent desktop; older scheduled ones beyond `keep` are pruned."""
    desktop_id: int
    keep: int

    def describe(self) -> str:
        return f"scheduled snapshot of desktop {self.desktop_id} (keep {self.keep})"


@dataclass(frozen=True)
class Blocked(Action):
    pool: str
    reason: str

    def describe(self) -> str:
        return f"pool {self.pool}: {self.reason}"


# ---- planning ------------------------------------------------------------------------------


@dataclass
class _Budget:
    """Per-host booking while planning: boot slots and memory."""
    starting: dict[str, int] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)

    def slots(self, h: HostObs) -> int:
        return h.max_starting - self.starting.get(h.name, 0)

    def take_slot(self, host: str) -> None:
        self.starting[host] = self.starting.get(host, 0) + 1

    def free_mib(self, h: HostObs) -> int:
        by_netslate = h.total_memory_mib - h.reserve_mib - self.committed.get(h.name, 0)
        return min(h.free_memory_mib, by_netslate)


def desired_count(pool: PoolObs, claimed: int) -> int:
    """Keep `size` desktops, and `spare` unclaimed ones on top of the claimed, never above `max`."""
    return min(pool.max, max(pool.size, claimed + pool.spare))


def _effective_state(d: DesktopObs) -> str:
    return d.prior_state if d.state == S.UNKNOWN and d.prior_state else d.state


def plan(pools: list[PoolObs], world: World) -> list[Action]:
    actions: list[Action] = []
    hosts = world.hosts
    budget = _Budget()
    names = {d.name for d in world.desktops}
    ids = {d.id for d in world.desktops}

    # memory already promised to desktops, and desktops still inside their boot window
    for d in world.desktops:
        budget.committed[d.host] = budget.committed.get(d.host, 0) + d.memory_mib
        if d.state in S.RUNNING and d.started_at is not None and world.now - d.started_at < world.boot_window:
            budget.take_slot(d.host)

    def reachable(host: str) -> bool:
        h = hosts.get(host)
        return bool(h and h.reachable)

    def book(host: str) -> bool:
        h = hosts.get(host)
        if h is None or not h.reachable or h.degraded or budget.slots(h) <= 0:
            return False
        budget.take_slot(host)
        return True

    # 1. host failures first: desktops on unreachable hosts become unknown, and come back later
    for d in world.desktops:
        if d.state == S.DESTROYING:
            continue
        if not reachable(d.host):
            if d.state != S.UNKNOWN:
                actions.append(SetState(d.id, S.UNKNOWN, f"host {d.host} unreachable"))
        elif d.state == S.UNKNOWN:
            actions.append(SetState(d.id, d.prior_state or S.ERROR, f"host {d.host} is back"))

    pool_by_name = {p.name: p for p in pools}

    # 2. per-desktop repairs
    for d in world.desktops:
        if not reachable(d.host) or d.state == S.UNKNOWN:
            continue
        pool = pool_by_name.get(d.pool)
        dom_up = d.name in hosts[d.host].domains
        if d.state == S.DESTROYING or pool is None:
            actions.append(Destroy(d.id, "pool removed" if pool is None else "finishing destroy"))
        elif d.state == S.PROVISIONING:
            if book(d.host):
                actions.append(Provision(d.id, d.host))
        elif d.state == S.RESETTING:
            if book(d.host):
                actions.append(Reset(d.id, d.host, "finishing reset"))
        elif d.state == S.ERROR:
            if d.failures >= MAX_FAILURES:
                actions.append(SetState(d.id, S.QUARANTINE, d.reason or "failed repeatedly"))
            elif book(d.host):
                # a persistent desktop keeps its disk: retry the start, never wipe it
                actions.append(Start(d.id, d.host) if pool.persistent else Reset(d.id, d.host, f"retry after error: {d.reason}"))
        elif d.state in S.RUNNING and not dom_up:
            if pool.persistent:
                if book(d.host):
                    actions.append(Start(d.id, d.host))
            elif book(d.host):
                actions.append(Reset(d.id, d.host, "domain is gone"))
        elif d.state == S.LOGGED_OFF and d.logged_off_at is not None and world.now - d.logged_off_at >= pool.grace_seconds:
            target = S.after_logoff(pool.persistent, pool.dedicated)
            if target == S.RESETTING:
                if book(d.host):
                    actions.append(Reset(d.id, d.host, "logged off"))
            else:
                actions.append(SetState(d.id, target, "logged off"))
        elif (
            pool.persistent and pool.snapshot_every and d.state in S.RUNNING and dom_up
            and (d.last_scheduled_snapshot is None or world.now - d.last_scheduled_snapshot >= pool.snapshot_every)
        ):
            actions.append(TakeSnapshot(d.id, pool.snapshot_keep))
        elif (
            d.state == S.READY and not pool.persistent and d.golden_version != pool.golden_version
        ):
            # roll a new golden version through unclaimed desktops only: nobody is forced off
            if book(d.host):
                actions.append(Reset(d.id, d.host, f"golden version {d.golden_version} → {pool.golden_version}"))

    # 3. pool sizes: create or trim
    for pool in pools:
        mine = [d for d in world.desktops if d.pool == pool.name and d.state not in (S.DESTROYING, S.QUARANTINE)]
        claimed = sum(1 for d in mine if _effective_state(d) in S.CLAIMED or d.user)
        want = desired_count(pool, claimed)
        have = len(mine)
        # quarantined desktops still hold a disk and an address: they count against max
        quarantined = sum(1 for d in world.desktops if d.pool == pool.name and d.state == S.QUARANTINE)
        if have < want:
            for _ in range(min(want - have, pool.max - have - quarantined)):
                candidates = [hosts[h] for h in pool.hosts if h in hosts and hosts[h].reachable and not hosts[h].degraded]
                if not candidates:
                    degraded = [hosts[h].degraded for h in pool.hosts if h in hosts and hosts[h].degraded]
                    actions.append(Blocked(pool.name, degraded[0] if degraded else "no reachable host for this pool"))
                    break
                fits = [h for h in candidates if budget.free_mib(h) >= pool.memory_mib]
                if not fits:
                    actions.append(Blocked(pool.name, f"no host has {pool.memory_mib} MiB free"))
                    break
                ready = [h for h in fits if budget.slots(h) > 0]
                if not ready:
                    break  # throttled: the next pass continues once boots settle
                best = max(ready, key=lambda h: (budget.free_mib(h), h.name))
                budget.take_slot(best.name)
                budget.committed[best.name] = budget.committed.get(best.name, 0) + pool.memory_mib
                actions.append(Create(pool.name, best.name))
        elif have > want:
            spare = [d for d in mine if d.state == S.READY and not d.user]
            # oldest golden first, then the newest desktops (highest id)
            spare.sort(key=lambda d: (d.golden_version, -d.id))
            for d in spare[: have - want]:
                actions.append(Destroy(d.id, f"pool {pool.name} shrinks to {want}"))

    # 4. orphans: things on hosts or disk that no desktop row owns
    for h in hosts.values():
        if not h.reachable:
            continue
        owned = {d.name for d in world.desktops if d.host == h.name}
        for dom in sorted(h.domains - owned):
            actions.append(DestroyOrphanDomain(h.name, dom))
    for disk in sorted(world.disks - names):
        actions.append(DeleteOrphanDisk(disk))
    for ip, did in world.addresses:
        if did is None or did not in ids:
            actions.append(ReleaseOrphanAddress(ip))
    return actions
