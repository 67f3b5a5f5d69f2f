"""Fleet status against the database: store a report, identify a machine, list the fleet.

A report is stored in one transaction: `machines.status["fleet"]` (last report + short history),
`machines.state` (booting | configured | degraded as the report says; "offline" is derived when
reading) and `machines.last_seen`.

Only a report authenticated by the machine's credential is trusted with what feeds signed bundles
(issue 11 #2): its facts go to `machines.status["facts"]` (template input, read by the config part)
and its TCP peer to `machines.ip_address` (the site hint of `image_pin`). A report without a
credential (a machine not enrolled yet: anyone could send it) keeps its facts and address apart,
under `status["fleet"]["unverified"]`, shown in the fleet view and flagged `unauthenticated`, and
never read by template rendering or site hints.
"""

from __future__ import annotations

import datetime as dt
import os

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from netslate import audit, inventory
from netslate.boot import store as boot
from netslate.config import credentials, resolution
from netslate.config import state as config_state
from netslate.enrollment import store as enrollment_store
from netslate.errors import NotFound, UserError
from netslate.fleet import core
from netslate.store import outbox
from netslate.store.models import Machine


class ReportRefused(Exception):
    """An enrolled machine's report came without its credential (the route answers 403)."""


def offline_after() -> dt.timedelta:
    try:
        return dt.timedelta(seconds=float(os.environ.get("NETSLATE_FLEET_OFFLINE_SECONDS", "")))
    except ValueError:
        return core.OFFLINE_AFTER


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _find(s: Session, ident: str) -> Machine:
    return inventory.resolve(s, ident)


def _credential_ok(m: Machine, token: str | None) -> bool:
    return credentials.credential_ok(m, token)


def report(ctx, ident: str, body, credential: str | None, remote: str | None) -> dict:
    """Store one report through the outbox (issue 15): on a branch server cut off from the central
    primary it is checked on the local standby (machine, credential, shape), queued durably and
    answered as accepted; the outbox applies it later with its original time, exactly once. The
    credential itself is never queued: only whether it was right."""
    if ctx.outbox is None:
        return ingest(ctx, ident, body, credential, remote)
    try:
        rep = core.clean_report(body)
    except core.BadReport as exc:
        raise UserError(f"bad report: {exc}") from None
    with ctx.db.read_session() as s:
        m = _find(s, ident)
        authenticated = _credential_ok(m, credential)
        if not authenticated and (m.credential_sha256 or credentials.enrolled(s, m.id)):
            raise ReportRefused("this machine is enrolled: its report needs its credential (Authorization: Bearer nsm_...)")
        mid = m.id
    res = outbox.submit(ctx, "fleet.report", {"machine_id": mid, "body": body, "authenticated": authenticated,
                                              "remote": remote, "at": _now().isoformat()})
    if isinstance(res, outbox.Queued):
        return {"id": mid, "accepted": True, "current": True, "authenticated": authenticated,
                "state": core.reported_state(rep)}
    return res


@outbox.handler("fleet.report")
def _report_event(ctx, p: dict) -> dict:
    return ingest(ctx, f"id:{p['machine_id']}", p["body"], None, p.get("remote"), authenticated=p["authenticated"],
                  at=dt.datetime.fromisoformat(p["at"]))


@outbox.batch_handler("fleet.report")
def _report_events(ctx, payloads: list[dict]) -> list[str | None]:
    """Many queued reports in one go (the outbox replay after a WAN cut): their machines loaded in
    one query, the enrolment check in one query, every report merged onto its machine in queue
    order (the same `_store` as one report: history, state, facts, audit rows), then one UPDATE per
    machine with its final row (one executemany) and the audit rows in one multi-row insert.
    Nothing is coalesced away: a machine's row ends exactly as the reports one by one would leave
    it. Answers, per payload in order, None (applied) or why it was refused."""
    out: list[str | None] = [None] * len(payloads)
    reps: list[dict | None] = []
    for i, p in enumerate(payloads):
        try:
            reps.append(core.clean_report(p["body"]))
        except core.BadReport as exc:
            reps.append(None)
            out[i] = f"bad report: {exc}"
    ids = {int(p["machine_id"]) for p in payloads}
    with ctx.db.session() as s:
        machines = inventory.report_rows(s, ids)
        unauth = {int(p["machine_id"]) for p in payloads if not p["authenticated"]}
        unauth = {mid for mid in unauth if mid in machines and not machines[mid].credential_sha256}
        enrolled = credentials.enrolled_among(s, unauth) if unauth else set()
        touched: dict = {}
        with s.no_autoflush:
            for i, (p, rep) in enumerate(zip(payloads, reps)):
                if rep is None:
                    continue
                m = machines.get(int(p["machine_id"]))
                if m is None:
                    out[i] = f"no machine id:{p['machine_id']}"
                    continue
                if not p["authenticated"] and (m.credential_sha256 or m.id in enrolled):
                    out[i] = ENROLLED_NEEDS_CREDENTIAL
                    continue
                _store(s, m, rep, p["body"], dt.datetime.fromisoformat(p["at"]), p["authenticated"], p.get("remote"),
                       newest_seen=True)
                touched[m.id] = m
        inventory.record_reports(s, touched.values())
    return out


def ingest(ctx, ident: str, body, credential: str | None, remote: str | None,
           authenticated: bool | None = None, at: dt.datetime | None = None) -> dict:
    """Store one report. A machine with a credential must present it (ReportRefused otherwise); a
    machine without one is accepted and marked unauthenticated. `authenticated`/`at`: a report the
    outbox replays, checked when it arrived (its credential is not kept) and stored with its time."""
    try:
        rep = core.clean_report(body)
    except core.BadReport as exc:
        raise UserError(f"bad report: {exc}") from None
    now = at or _now()
    with ctx.db.session() as s:
        m = _find(s, ident)
        if authenticated is None:
            authenticated = _credential_ok(m, credential)
        if not authenticated and (m.credential_sha256 or credentials.enrolled(s, m.id)):
            raise ReportRefused(ENROLLED_NEEDS_CREDENTIAL)
        return _store(s, m, rep, body, now, authenticated, remote)


ENROLLED_NEEDS_CREDENTIAL = "this machine is enrolled: its report needs its credential (Authorization: Bearer nsm_...)"


def _store(s: Session, m, rep: dict, body, now: dt.datetime, authenticated: bool, remote: str | None,
           newest_seen: bool = False) -> dict:
    """One checked report onto its machine row (a Machine, or a row of `inventory.report_rows`) and its audit
    row. `newest_seen`: last_seen never moves back (a replayed batch, where boot events of the same
    batch may already have set a newer one)."""
    facts = body.get("facts") if isinstance(body.get("facts"), dict) else None
    status = dict(m.status or {})
    unverified = (status.get("fleet") or {}).get("unverified")
    fleet, current = core.merge_report(status.get("fleet"), rep, now, authenticated, remote)
    if current and authenticated:
        if facts is not None:
            status["facts"] = facts
        unverified = None  # the machine itself spoke last
    elif current:
        unverified = core.unverified(now, remote, facts)
    if unverified:
        fleet["unverified"] = unverified
    else:
        fleet.pop("unverified", None)
    status["fleet"] = fleet
    seen = now if current else None
    if seen is not None and newest_seen and m.last_seen is not None and m.last_seen > seen:
        seen = m.last_seen
    inventory.record_report(s, m, status, state=core.reported_state(rep) if current else None,
                            seen=seen, address=remote if current and authenticated else None)
    if rep["phase"] != "heartbeat":  # one audit row per boot step; heartbeats only refresh liveness
        audit.record(s, f"machine:{m.id}", "fleet.report", f"machine:{m.id}", phase=rep["phase"],
                     state=core.reported_state(rep), generation=rep.get("generation"),
                     config_source=rep.get("config_source"), image_source=rep.get("image_source"),
                     queued=rep.get("queued"), current=current, authenticated=authenticated)
    return {"id": m.id, "accepted": True, "current": current, "authenticated": authenticated,
            "state": core.reported_state(rep)}


def identify(ctx, ident: str | None, macs: list[str], uuid: str | None) -> dict:
    """Which machine is asking: by id/name/UUID (`ident`), else SMBIOS UUID, else any MAC."""
    with ctx.db.session() as s:
        m = inventory.identify(s, ident, macs, uuid)
        if m is None:
            raise NotFound("no machine matches these MACs/UUID; is it registered (`netslate machine add`) or approved?")
        return {"id": m.id, "name": m.name}


# ---------------------------------------------------------------- reading


def _session_cache(s: Session) -> dict:
    """Per-session (one transaction) lookups shared by every machine in a list."""
    cache = s.info.get("netslate_fleet")
    if cache is None:
        cache = {"boots": boot.last_boots(s), "config": config_state.read(s), "now": _now()}
        s.info["netslate_fleet"] = cache
    return cache


def _current_generation(st, tree_path: str) -> int | None:
    if st is None or not st.current:
        return None
    return resolution.effective_generation(st, tree_path or "/")


def machine_view(m: Machine) -> dict:
    """The fleet fields of one machine (used by `machine list/show` and `fleet status`)."""
    s = object_session(m)
    cache = _session_cache(s) if s is not None else {"boots": {}, "config": None, "now": _now()}
    v = core.view((m.status or {}).get("fleet"), bool(m.approved), cache["boots"].get(m.id),
                  _current_generation(cache["config"], m.tree_path), cache["now"], offline_after(), trust=m.trust)
    if s is not None and "identity" not in cache:  # e.g. identity_conflict: another TPM claims this machine
        cache["identity"] = enrollment_store.identity_flags(s)
    extra = [f for f in cache.get("identity", {}).get(m.id, []) if f not in v["flags"]]
    if extra:
        v["flags"] = v["flags"] + extra
    return v


def machine_views(ctx, ids: list[int] | None = None) -> dict[int, dict]:
    """Machine id → its fleet view (the machines service adds it to each machine record)."""
    with ctx.db.session() as s:
        q = select(Machine)
        if ids is not None:
            q = q.where(Machine.id.in_(ids))
            # the last boots of these machines only: a page of 50 need not group every boot event
            s.info["netslate_fleet"] = {"boots": boot.last_boots(s, ids), "config": config_state.read(s), "now": _now()}
        return {m.id: machine_view(m) for m in s.scalars(q)}


def fleet_status(ctx, state: str | None = None) -> list[dict]:
    if state is not None and state not in core.STATES:
        raise UserError(f"unknown state {state!r}: choose one of {', '.join(core.STATES)}")
    out = []
    with ctx.db.session() as s:
        for m in s.scalars(select(Machine).order_by(Machine.id)):
            v = machine_view(m)
            if state and v["state"] != state:
                continue
            out.append({"id": m.id, "name": m.name, "hostname": m.hostname, "ip_address": m.ip_address, **v})
    return out


def summary(rows: list[dict]) -> dict:
    counts = {k: 0 for k in core.STATES}
    flagged = 0
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
        flagged += bool(r["flags"])
    return {"machines": len(rows), "states": counts, "flagged": flagged}
