"""The reconcile actuator: observe (store, libvirt, disks) → `reconcile.plan` → carry out each action.

Every action writes its intent to the store before touching libvirt or disks, and every step is
idempotent, so a netslate (or libvirtd) killed at any moment is repaired by the next pass:
- names follow `ns-<installation>-<pool>-<n>`; a running domain with our prefix and no row is an orphan;
- each desktop's disks live in DATA/desktops/disks/<domain name>/; a directory with no row is an orphan;
- an address row whose desktop is gone is an orphan.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import secrets
import shutil
import time
import uuid as uuidlib
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from netslate import audit
from netslate.errors import Conflict, UserError
from netslate.store.db import utcnow

from netslate.desktops import diskless as dl
from netslate.desktops import domains, domainxml, hosts as hostmod, reconcile as R, snapshots
from netslate.desktops import states as S
from netslate.desktops.disks import (  # noqa: F401  (qemu_img, linked_clone: older callers import them from here)
    disks_root, installation_id, linked_clone, logs_root, make_traversable, qemu_img,
)
from netslate.desktops.models import Desktop, DesktopAddress, DesktopHost, DesktopPool, DesktopSnapshot, GoldenImage

log = logging.getLogger("netslate.desktops")
ACTOR = "netslate:reconcile"


def _epoch(t: dt.datetime | None) -> float | None:
    return None if t is None else t.replace(tzinfo=dt.timezone.utc).timestamp()


def random_mac() -> str:
    b = secrets.token_bytes(3)
    return "52:54:00:%02x:%02x:%02x" % (b[0], b[1], b[2])


class Actuator:
    def __init__(self, ctx):
        self.ctx = ctx
        self.inst = installation_id(ctx)
        self.prefix = f"ns-{self.inst}-"
        disks_root(ctx).mkdir(parents=True, exist_ok=True)
        logs_root(ctx).mkdir(parents=True, exist_ok=True)
        make_traversable(disks_root(ctx))
        make_traversable(logs_root(ctx))
        self.lock_path = ctx.data_dir / "desktops" / "reconcile.lock"

    # ---------- locking ----------

    def locked(self, timeout: float = 120.0):
        """One reconciler at a time per installation (the server loop and CLI commands share it)."""
        return domains.reconcile_lock(self.ctx, timeout)

    # ---------- observing ----------

    def _host_rows(self) -> list[DesktopHost]:
        with self.ctx.db.session() as s:
            return list(s.scalars(select(DesktopHost)))

    def observe(self) -> tuple[list[R.PoolObs], R.World, dict]:
        host_rows = self._host_rows()
        hosts: dict[str, R.HostObs] = {}
        for h in host_rows:
            hosts[h.name] = self._observe_host(h)
        with self.ctx.db.session() as s:
            pools = list(s.scalars(select(DesktopPool)))
            specs = []
            for p in pools:
                target = self._target_golden(s, p)
                specs.append(R.PoolObs(
                    name=p.name, size=p.size, spare=p.spare, max=p.max, memory_mib=p.memory_mib,
                    golden_version=target.version if target else 0, persistent=p.persistent, dedicated=p.dedicated,
                    grace_seconds=p.grace_seconds, hosts=tuple(hostmod.select_hosts(p.hosts_selector, host_rows)),
                    snapshot_every=p.snapshot_every_hours * 3600 if p.snapshot_every_hours else None,
                    snapshot_keep=p.snapshot_keep,
                ))
            sched: dict[int, list[float]] = {}
            for snap in s.scalars(select(DesktopSnapshot).where(DesktopSnapshot.scheduled.is_(True))):
                sched.setdefault(snap.desktop_id, []).append(_epoch(snap.created_at))
            desktops = tuple(
                R.DesktopObs(
                    id=d.id, name=d.name, pool=d.pool_name if d.pool_id is not None else "", host=d.host, state=d.state,
                    memory_mib=self._mem(s, d), user=d.user, golden_version=d.golden_version,
                    logged_off_at=_epoch(d.logged_off_at), started_at=_epoch(d.started_at),
                    prior_state=d.prior_state, failures=d.failures, reason=d.reason,
                    last_scheduled_snapshot=max(sched[d.id]) if d.id in sched else None,
                    scheduled_snapshots=len(sched.get(d.id, [])),
                )
                for d in s.scalars(select(Desktop))
            )
            addrs = tuple((a.ip, a.desktop_id) for a in s.scalars(select(DesktopAddress)))
        root = disks_root(self.ctx)
        disks = frozenset(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(self.prefix))
        world = R.World(hosts=hosts, desktops=desktops, disks=disks, addresses=addrs, now=time.time())
        return specs, world, {h.name: h for h in host_rows}

    @staticmethod
    def _mem(s, d: Desktop) -> int:
        if d.pool_id is None:
            return 0
        p = s.get(DesktopPool, d.pool_id)
        return p.memory_mib if p else 0

    @staticmethod
    def _target_golden(s, p: DesktopPool) -> GoldenImage | None:
        if p.diskless:
            return None  # the boot rules decide what a diskless desktop boots
        q = select(GoldenImage).where(GoldenImage.name == p.golden)
        if p.golden_version is not None:
            return s.scalar(q.where(GoldenImage.version == p.golden_version))
        return s.scalar(q.order_by(GoldenImage.version.desc()).limit(1))

    def _observe_host(self, h: DesktopHost) -> R.HostObs:
        import libvirt

        try:
            conn = hostmod.connect(h.uri)
            doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            names = frozenset(d.name() for d in doms if d.name().startswith(self.prefix))
            info = conn.getInfo()
            free = conn.getFreeMemory() // (1024 * 1024)
            reachable = True
            err = ""
        except Exception as exc:
            hostmod.drop_connection(h.uri)
            names, info, free, reachable, err = frozenset(), [0, 0], 0, False, str(exc)
        if reachable != h.reachable or err != h.last_error:
            with self.ctx.db.session() as s:
                row = s.get(DesktopHost, h.id)
                row.reachable, row.last_error = reachable, err
                if reachable:
                    row.last_seen = utcnow()
        return R.HostObs(name=h.name, reachable=reachable, total_memory_mib=int(info[1]), free_memory_mib=int(free),
                         reserve_mib=h.reserve_mib, max_starting=h.max_starting, domains=names,
                         degraded=(h.capacity or {}).get("degraded") or "")

    # ---------- the loop ----------

    def reconcile(self, pool: str | None = None, wait: bool = False, timeout: float = 300.0, on_action=None) -> dict:
        """Passes until nothing is left to do (with wait: also until throttled work is done)."""
        done: list[str] = []
        blocked: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            with self.locked():
                specs, world, host_rows = self.observe()
                actions = R.plan(specs, world)
                if pool is not None:
                    actions = [a for a in actions if _action_pool(a, world) in (pool, None)]
                work = [a for a in actions if not isinstance(a, R.Blocked)]
                blocked = [a.describe() for a in actions if isinstance(a, R.Blocked)]
                for a in work:
                    self.execute(a, world, host_rows)
                    done.append(a.describe())
                    if on_action:
                        on_action(a)
            if work and time.monotonic() < deadline:
                continue  # a pass changed things: look again
            if wait and self._throttled(specs, world, pool) and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            return {"actions": done, "blocked": blocked}

    def _throttled(self, specs, world, pool) -> bool:
        """Is there work the planner held back only because hosts are busy booting desktops?"""
        for p in specs:
            if pool is not None and p.name != pool:
                continue
            mine = [d for d in world.desktops if d.pool == p.name and d.state not in (S.DESTROYING, S.QUARANTINE)]
            claimed = sum(1 for d in mine if d.state in S.CLAIMED or d.user)
            if len(mine) < R.desired_count(p, claimed):
                return True
            if any(d.state in (S.PROVISIONING, S.RESETTING) for d in mine):
                return True
        return False

    # ---------- actions ----------

    def execute(self, a: R.Action, world: R.World, host_rows: dict) -> None:
        observed = {d.id: d for d in world.desktops}
        try:
            if isinstance(a, R.Create):
                did = self.create_row(a.pool, a.host)
                self.provision(did, host_rows)
            elif isinstance(a, R.Provision):
                self.provision(a.desktop_id, host_rows)
            elif isinstance(a, R.Reset):
                if self._cas(a.desktop_id, observed[a.desktop_id].state, S.RESETTING, a.reason):
                    self.provision(a.desktop_id, host_rows, reset=True)
            elif isinstance(a, R.Start):
                self.start(a.desktop_id, host_rows)
            elif isinstance(a, R.SetState):
                self.set_state(a.desktop_id, observed[a.desktop_id].state, a.state, a.reason)
            elif isinstance(a, R.Destroy):
                self.destroy(a.desktop_id, observed[a.desktop_id].state, host_rows, a.reason)
            elif isinstance(a, R.TakeSnapshot):
                snapshots.scheduled(self.ctx, a.desktop_id, a.keep)
            elif isinstance(a, R.DestroyOrphanDomain):
                self._kill_domain(host_rows[a.host].uri, a.name)
                self._audit("desktop.orphan.domain", a.name, host=a.host)
            elif isinstance(a, R.DeleteOrphanDisk):
                shutil.rmtree(disks_root(self.ctx) / a.name, ignore_errors=True)
                self._audit("desktop.orphan.disk", a.name)
            elif isinstance(a, R.ReleaseOrphanAddress):
                with self.ctx.db.session() as s:
                    row = s.scalar(select(DesktopAddress).where(DesktopAddress.ip == a.ip))
                    if row is not None and (row.desktop_id is None or s.get(Desktop, row.desktop_id) is None):
                        s.delete(row)
                        audit.record(s, ACTOR, "desktop.orphan.address", a.ip)
        except Exception as exc:  # one desktop's failure must not stop the pass
            did = getattr(a, "desktop_id", None)
            host = getattr(a, "host", None) or (observed[did].host if did in observed else None)
            line = hostmod.degraded_line(host, str(exc)) if host else None
            if line is not None:  # the hypervisor, not the desktop: mark the host, do not count it against the desktop
                if hostmod.mark_degraded(self.ctx, host, line):
                    log.warning("%s", line)
                if did is not None:
                    self._fail(did, line, count=False)
                return
            log.warning("%s failed: %s", a.describe(), exc)
            if did is not None:
                self._fail(did, f"{a.describe()}: {exc}")

    def _audit(self, action: str, target: str, **detail) -> None:
        with self.ctx.db.session() as s:
            audit.record(s, ACTOR, action, target, **detail)

    def _cas(self, did: int, expect: str, new: str, reason: str = "") -> bool:
        """Move a desktop from `expect` to `new` only if nobody moved it meanwhile (e.g. a request)."""
        if expect != new:
            S.check(expect, new)
        with self.ctx.db.session() as s:
            res = s.execute(update(Desktop).where(Desktop.id == did, Desktop.state == expect)
                            .values(state=new, reason=reason, updated_at=utcnow()))
            return res.rowcount == 1

    def set_state(self, did: int, expect: str, new: str, reason: str) -> None:
        S.check(expect, new)
        with self.ctx.db.session() as s:
            d = s.get(Desktop, did)
            if d is None or d.state != expect:
                return
            if new == S.UNKNOWN:
                d.prior_state = d.state
            elif expect == S.UNKNOWN:
                d.prior_state = None
            if new in (S.READY,) and expect == S.LOGGED_OFF:
                d.user = None
                d.assigned_at = None
            if new in (S.READY, S.ASSIGNED):
                d.logged_off_at = None
            d.state = new
            d.reason = reason
            audit.record(s, ACTOR, "desktop.state", d.name, state=new, reason=reason)

    def _fail(self, did: int, reason: str, count: bool = True) -> None:
        with self.ctx.db.session() as s:
            d = s.get(Desktop, did)
            if d is None or d.state == S.DESTROYING:
                return
            if S.can(d.state, S.ERROR) or d.state == S.ERROR:
                d.state = S.ERROR
            d.failures += 1 if count else 0
            d.reason = reason[:2000]
            audit.record(s, ACTOR, "desktop.error", d.name, reason=d.reason)

    def create_row(self, pool_name: str, host: str, user: str | None = None) -> int:
        """Write the intent first: the desktop row (provisioning) and its address, in one transaction."""
        for _ in range(50):
            with self.ctx.db.session() as s:
                p = s.scalar(select(DesktopPool).where(DesktopPool.name == pool_name))
                if p is None:
                    raise UserError(f"no pool named {pool_name!r}")
                target = self._target_golden(s, p)
                if target is None and not p.diskless:
                    raise UserError(f"pool {pool_name}: golden image {p.golden} has no usable version")
                number = (s.scalar(select(func.max(Desktop.number)).where(Desktop.pool_name == pool_name)) or 0) + 1
                name = f"{self.prefix}{pool_name}-{number}"
                used = {int(ipaddress.ip_address(ip)) for ip in s.scalars(select(DesktopAddress.ip))}
                lo, hi = int(ipaddress.ip_address(p.ip_first)), int(ipaddress.ip_address(p.ip_last))
                free = next((i for i in range(lo, hi + 1) if i not in used), None)
                if free is None:
                    raise Conflict(f"pool {pool_name}: address range {p.ip_first}-{p.ip_last} is exhausted")
                mac = random_mac()
                d = Desktop(name=name, pool_id=p.id, pool_name=pool_name, number=number, host=host,
                            uuid=str(uuidlib.uuid4()), mac=mac, state=S.PROVISIONING, user=user,
                            golden_version=target.version if target else 0,
                            # diskless: a path that never exists (destroy removes its parent directory)
                            disk=str(disks_root(self.ctx) / name / ("diskless" if p.diskless else "disk.qcow2")),
                            assigned_at=utcnow() if user else None)
                s.add(d)
                try:
                    s.flush()
                    s.add(DesktopAddress(ip=str(ipaddress.ip_address(free)), pool_name=pool_name, desktop_id=d.id,
                                         mac=mac, hostname=name))
                    s.flush()
                except IntegrityError:
                    s.rollback()
                    time.sleep(0.01)  # lost a race for the number or the address: take the next
                    continue
                audit.record(s, ACTOR, "desktop.create", name, pool=pool_name, host=host, user=user)
                return d.id
        raise Conflict(f"pool {pool_name}: could not reserve a desktop name and address")

    def _load(self, did: int):
        with self.ctx.db.session() as s:
            d = s.get(Desktop, did)
            if d is None:
                return None
            p = s.get(DesktopPool, d.pool_id) if d.pool_id else None
            g = self._target_golden(s, p) if p else None
            return d, p, g

    def provision(self, did: int, host_rows: dict, reset: bool = False) -> None:
        """Create (or recreate, for a reset) the overlay on the target golden, then start the domain."""
        loaded = self._load(did)
        if loaded is None:
            return
        d, p, g = loaded
        if p is not None and p.diskless:
            return self._provision_diskless(did, d, p, host_rows, reset)
        if p is None or g is None:
            raise RuntimeError("pool or golden image is gone")
        host = host_rows[d.host]
        self._kill_domain(host.uri, d.name)  # idempotent: a half-done earlier attempt may have started it
        ddir = Path(d.disk).parent
        if reset:
            shutil.rmtree(ddir, ignore_errors=True)  # discard the overlay (and anything else written)
            with self.ctx.db.session() as s:
                for snap in s.scalars(select(DesktopSnapshot).where(DesktopSnapshot.desktop_id == did)):
                    s.delete(snap)
        ddir.mkdir(parents=True, exist_ok=True)
        make_traversable(ddir)
        disk = ddir / "disk.qcow2"
        linked_clone(g.path, disk)
        with self.ctx.db.session() as s:
            row = s.get(Desktop, did)
            row.golden_version = g.version
            row.disk = str(disk)
        self._start_domain(did, host_rows)
        self._settle(did, p, reset, f"{g.name}@{g.version}")

    def _provision_diskless(self, did: int, d: Desktop, p: DesktopPool, host_rows: dict, reset: bool) -> None:
        """No disk: make sure the boot part sends this MAC the pool's image, then power-cycle the domain.
        The image version is whatever the pool's ref (a tag, say) points to when the desktop PXE-boots."""
        image, _, ref = p.diskless.partition("@")
        dl.ensure_boot(self.ctx, p.name, image, ref)
        dl.register_machine(self.ctx, p.name, d.name, d.mac)
        self._kill_domain(host_rows[d.host].uri, d.name)  # the reset: power off, nothing to discard
        self._start_domain(did, host_rows)
        self._settle(did, p, reset, p.diskless)

    def _settle(self, did: int, p: DesktopPool, reset: bool, booted: str) -> None:
        with self.ctx.db.session() as s:
            row = s.get(Desktop, did)
            target = S.after_reset(p.dedicated, row.user) if row.state in (S.RESETTING, S.PROVISIONING, S.ERROR) else row.state
            if row.state == S.PROVISIONING and row.user:
                target = S.ASSIGNED
            if row.state != target:
                S.check(row.state, target)
            if target == S.READY:
                row.user = None
                row.assigned_at = None
            row.state = target
            row.reason = ""
            row.failures = 0
            row.logged_off_at = None
            row.session = {}
            audit.record(s, ACTOR, "desktop.reset" if reset else "desktop.provisioned", row.name,
                         golden=booted, state=target)

    def start(self, did: int, host_rows: dict) -> None:
        self._start_domain(did, host_rows)
        with self.ctx.db.session() as s:
            row = s.get(Desktop, did)
            if row.state == S.ERROR:  # a persistent desktop that failed before: back to its owner or the pool
                row.state = S.ASSIGNED if row.user else S.READY
                row.reason = ""

    def domain_spec(self, did: int, host_rows: dict) -> domainxml.DomainSpec:
        return domains.domain_spec(self.ctx, did, host_rows)

    def _start_domain(self, did: int, host_rows: dict) -> None:
        domains.start_domain(self.ctx, did, host_rows)

    def _kill_domain(self, uri: str, name: str) -> None:
        domains.kill_domain(uri, name)

    def destroy(self, did: int, expect: str, host_rows: dict, reason: str) -> None:
        """destroying (persisted) → domain gone → disks gone → row and address gone (one transaction)."""
        with self.ctx.db.session() as s:
            d = s.get(Desktop, did)
            if d is None:
                return
            if d.state != S.DESTROYING:
                if d.state != expect:
                    return  # somebody claimed it meanwhile: keep it
                S.check(d.state, S.DESTROYING)
                d.prior_state = d.state
                d.state = S.DESTROYING
                d.reason = reason
            name, host, disk, mac = d.name, d.host, d.disk, d.mac
        self._kill_domain(host_rows[host].uri, name)
        shutil.rmtree(Path(disk).parent, ignore_errors=True)
        dl.unregister_machine(self.ctx, mac)  # a diskless desktop's inventory entry (nothing otherwise)
        with contextlib.suppress(FileNotFoundError):
            (logs_root(self.ctx) / f"{name}.log").unlink()
        with self.ctx.db.session() as s:
            d = s.get(Desktop, did)
            if d is None:
                return
            for a in s.scalars(select(DesktopAddress).where(DesktopAddress.desktop_id == did)):
                s.delete(a)
            s.delete(d)  # the user's claim ends with the desktop
            audit.record(s, ACTOR, "desktop.destroy", name, reason=reason, user=d.user)


def _action_pool(a: R.Action, world: R.World) -> str | None:
    if isinstance(a, (R.Create, R.Blocked)):
        return a.pool
    did = getattr(a, "desktop_id", None)
    if did is not None:
        for d in world.desktops:
            if d.id == did:
                return d.pool or None
    return None
