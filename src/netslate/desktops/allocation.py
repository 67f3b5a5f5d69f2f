"""Who has which desktop: requests, releases, session events and listings (store + actuator; no HTTP or CLI here)."""

from __future__ import annotations

import datetime as dt
import time

from sqlalchemy import select, update

from netslate import audit
from netslate.errors import Conflict, NotFound, UserError
from netslate.names import check_name
from netslate.store import outbox
from netslate.store.db import utcnow

from netslate.desktops import reconcile as R
from netslate.desktops import states as S
from netslate.desktops.actuator import Actuator
from netslate.desktops.models import Desktop, DesktopPool
from netslate.desktops.records import desktop_dict, get_desktop, get_pool


_get = get_desktop  # older name


def list_desktops(ctx, pool: str | None = None, user: str | None = None) -> list[dict]:
    with ctx.db.read_session() as s:  # reads only: the branch's standby (issue 15)
        q = select(Desktop).order_by(Desktop.pool_name, Desktop.number)
        if pool:
            q = q.where(Desktop.pool_name == pool)
        if user:
            q = q.where(Desktop.user == user)
        return [desktop_dict(s, d) for d in s.scalars(q)]


def show_desktop(ctx, ref: str | int) -> dict:
    with ctx.db.read_session() as s:  # reads only: the branch's standby (issue 15)
        return desktop_dict(s, _get(s, ref))


def _claim(ctx, pool: DesktopPool, user: str) -> int | None:
    """Take a prestarted ready desktop with one conditional UPDATE (two requests never get the same one)."""
    with ctx.db.session() as s:
        candidates = list(s.scalars(
            select(Desktop.id).where(Desktop.pool_id == pool.id, Desktop.state == S.READY, Desktop.user.is_(None))
            .order_by(Desktop.golden_version.desc(), Desktop.started_at, Desktop.id)
        ))
    for did in candidates:
        with ctx.db.session() as s:
            res = s.execute(
                update(Desktop).where(Desktop.id == did, Desktop.state == S.READY, Desktop.user.is_(None))
                .values(state=S.ASSIGNED, user=user, assigned_at=utcnow(), logged_off_at=None, updated_at=utcnow())
            )
            if res.rowcount == 1:
                audit.record(s, user, "desktop.assign", f"desktop:{did}", pool=pool.name)
                return did
    return None


def request_desktop(ctx, pool_name: str, user: str, timeout: float = 300.0, provision=True) -> dict:
    """An assigned desktop for `user`: theirs already (dedicated or an open claim), a prestarted one, or a new one."""
    check_name(user, "user name")
    with ctx.db.session() as s:
        pool = get_pool(s, pool_name)
        mine = s.scalar(
            select(Desktop).where(Desktop.pool_id == pool.id, Desktop.user == user,
                                  Desktop.state.notin_([S.DESTROYING, S.QUARANTINE, S.ERROR]))
            .order_by(Desktop.id).limit(1)
        )
        if mine is not None and mine.state in (S.ASSIGNED, S.IN_USE, S.LOGGED_OFF, S.READY):
            if mine.state == S.LOGGED_OFF:  # back within the grace period: no reset
                mine.state = S.ASSIGNED
                mine.logged_off_at = None
            return desktop_dict(s, mine)
    # theirs, still provisioning or resetting: wait for it rather than take a second one
    did = mine.id if mine is not None else _claim(ctx, pool, user)
    if did is None:
        if not provision:
            raise Conflict(f"pool {pool_name} has no free desktop right now")
        did = _provision_for(ctx, pool, user, timeout)
    with ctx.db.session() as s:
        return desktop_dict(s, s.get(Desktop, did))


def _provision_for(ctx, pool: DesktopPool, user: str, timeout: float) -> int:
    """No prestarted desktop: make one for this user now (within --max), placed like the reconciler would."""
    act = Actuator(ctx)
    with act.locked(timeout):
        did = _claim(ctx, pool, user)  # one may have become ready while we waited for the lock
        if did is not None:
            return did
        specs, world, host_rows = act.observe()
        spec = next((p for p in specs if p.name == pool.name), None)
        live = [d for d in world.desktops if d.pool == pool.name and d.state not in (S.DESTROYING, S.QUARANTINE)]
        if spec is None or len(live) >= spec.max:
            raise Conflict(f"pool {pool.name} is full: all {pool.max} desktops are taken")
        # a one-desktop plan for this pool, ignoring the boot throttle (a user is waiting)
        one = R.PoolObs(**{**spec.__dict__, "size": len(live) + 1, "spare": 0, "max": len(live) + 1})
        hosts = {n: R.HostObs(**{**h.__dict__, "max_starting": 1000}) for n, h in world.hosts.items()}
        plan = R.plan([one], R.World(hosts=hosts, desktops=tuple(d for d in world.desktops if d.pool == pool.name),
                                     now=world.now))
        create = next((a for a in plan if isinstance(a, R.Create)), None)
        if create is None:
            reason = next((a.reason for a in plan if isinstance(a, R.Blocked)), "no host can take it")
            raise Conflict(f"pool {pool.name}: cannot start a desktop: {reason}")
        did = act.create_row(pool.name, create.host, user=user)
        try:
            act.provision(did, host_rows)
        except Exception as exc:
            act._fail(did, f"provision: {exc}")
            raise Conflict(f"pool {pool.name}: starting a desktop failed: {exc}") from None
        return did


def session_event(ctx, ref: str | int, event: str, user: str | None, actor: str, source: str = "agent") -> dict:
    """logon / logoff from the in-guest agent or the console (libvirt graphics events)."""
    if event not in ("logon", "logoff"):
        raise UserError(f"event {event!r}: use logon or logoff")
    if user is not None:
        check_name(user, "user name")
    with ctx.db.session() as s:
        d = _get(s, ref)
        if event == "logon":
            if d.state == S.IN_USE:
                return desktop_dict(s, d)
            if d.state not in (S.READY, S.ASSIGNED, S.LOGGED_OFF):
                raise Conflict(f"desktop {d.name} is {d.state}; a logon is not possible now")
            if d.user and user and user != d.user:
                raise Conflict(f"desktop {d.name} is assigned to {d.user}, not {user}")
            S.check(d.state, S.ASSIGNED if d.state == S.READY else S.IN_USE)
            d.user = d.user or user
            d.assigned_at = d.assigned_at or utcnow()
            d.state = S.IN_USE
            d.logged_off_at = None
        else:
            if d.state in (S.LOGGED_OFF, S.READY, S.RESETTING):
                return desktop_dict(s, d)  # repeated or late logoff: nothing to do
            if d.state not in (S.IN_USE, S.ASSIGNED):
                raise Conflict(f"desktop {d.name} is {d.state}; a logoff is not possible now")
            S.check(d.state, S.LOGGED_OFF)
            d.state = S.LOGGED_OFF
            d.logged_off_at = utcnow()
        d.session = {"last_event": event, "source": source, "at": time.time()}
        audit.record(s, actor, f"desktop.{event}", d.name, user=d.user, source=source)
        return desktop_dict(s, d)


def report_session_event(ctx, ref: str | int, event: str, user: str | None, actor: str, source: str = "agent") -> dict:
    """A logon/logoff through the outbox (issue 15): on a branch server cut off from the central
    primary it is checked here, queued durably and replayed later in order, exactly once; the
    answer is then the desktop as the standby has it (before this event)."""
    if ctx.outbox is None:
        return session_event(ctx, ref, event, user, actor, source=source)
    if event not in ("logon", "logoff"):
        raise UserError(f"event {event!r}: use logon or logoff")
    if user is not None:
        check_name(user, "user name")
    current = show_desktop(ctx, ref)
    res = outbox.submit(ctx, "desktops.session", {"desktop": current["id"], "event": event, "user": user,
                                                  "actor": actor, "source": source})
    return current if isinstance(res, outbox.Queued) else res


@outbox.handler("desktops.session")
def _session_event(ctx, p: dict) -> dict:
    return session_event(ctx, p["desktop"], p["event"], p.get("user"), p["actor"], source=p.get("source", "agent"))


def release_desktop(ctx, ref: str | int, actor: str) -> dict:
    """By hand: the user is done now (no grace period); the next reconcile pass resets it."""
    with ctx.db.session() as s:
        d = _get(s, ref)
        if d.state not in S.CLAIMED:
            raise Conflict(f"desktop {d.name} is {d.state}, not assigned to anyone")
        if d.state != S.LOGGED_OFF:
            S.check(d.state, S.LOGGED_OFF)
        d.state = S.LOGGED_OFF
        # back-date the logoff so the grace period is already over
        d.logged_off_at = utcnow() - dt.timedelta(days=3650)
        audit.record(s, actor, "desktop.release", d.name, user=d.user)
        return desktop_dict(s, d)


def availability(s, p: DesktopPool) -> tuple[int, int]:
    """(free, total) of a pool as its users see it: total is its max; free is what nobody holds."""
    rows = list(s.execute(select(Desktop.state).where(Desktop.pool_id == p.id)))
    held = sum(1 for (st,) in rows if st in S.CLAIMED or st == S.QUARANTINE)
    return max(0, p.max - held), p.max


def user_pools(ctx, user: str, entitled: list[str]) -> list[dict]:
    """One entry per pool the user is entitled to or holds a desktop in: the pool's portal settings,
    "N of M free", and the user's own desktop there (or None)."""
    with ctx.db.read_session() as s:  # reads only: the branch's standby (issue 15)
        held = {d.pool_name: d for d in s.scalars(
            select(Desktop).where(Desktop.user == user, Desktop.pool_id.is_not(None),
                                  Desktop.state.notin_([S.DESTROYING])).order_by(Desktop.id))}
        names = sorted(set(entitled) | set(held))
        out = []
        for p in s.scalars(select(DesktopPool).where(DesktopPool.name.in_(names)).order_by(DesktopPool.name)):
            free, total = availability(s, p)
            mine = held.get(p.name)
            out.append({
                "pool": p.name, "entitled": p.name in entitled, "display": p.display,
                "assignment": "dedicated" if p.dedicated else "floating",
                "persistence": "persistent" if p.persistent else "none",
                "allow_reset": bool(p.allow_reset), "allow_release": bool(p.allow_release),
                "free": free, "total": total, "desktop": desktop_dict(s, mine) if mine is not None else None,
            })
        return out


def check_request(ctx, pool_name: str, user: str) -> None:
    """Before a user's own request: a plain sentence when the pool has nothing left for them."""
    with ctx.db.session() as s:
        p = get_pool(s, pool_name)
        theirs = s.scalar(select(Desktop.id).where(Desktop.pool_id == p.id, Desktop.user == user,
                                                   Desktop.state.notin_([S.DESTROYING, S.QUARANTINE, S.ERROR])))
        if theirs is None and availability(s, p)[0] == 0:
            raise Conflict(f"all {p.max} desktops of {p.name} are in use; try again later")


def own_desktop(ctx, ref: str | int, user: str, action: str) -> dict:
    """The user's own desktop for a self-service `action` (reset | release), checked against its pool."""
    with ctx.db.session() as s:
        d = _get(s, ref)
        if d.user != user or d.state not in S.CLAIMED:
            raise NotFound(f"you have no desktop {ref!r}")
        p = s.get(DesktopPool, d.pool_id) if d.pool_id else None
        if p is None:
            raise Conflict(f"desktop {d.name} is being removed")
        allowed = p.allow_reset if action == "reset" else p.allow_release
        if not allowed:
            raise Conflict(f"pool {p.name} does not let its users {action} their desktop")
        return desktop_dict(s, d)
