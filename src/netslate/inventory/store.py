"""The machine tables (`machines`, `machine_macs`): the one resolver and the only writer.

Every other part finds a machine with `resolve(session, ident)` and changes one only through the
functions here: operators (add, approve, label, remove), the boot path (discover, fill_facts,
mark_seen), config (place, set_credential) and fleet (record_report).

Changes that can alter what a boot script or a pxelinux file says (add, approve, label, placement,
remove) move the inventory generation, which the boot engine's cache fingerprint reads
(`GENERATION_SQL`). Discovery, facts and liveness do not: machine rows are read per boot request.
"""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, case, func, select, update
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.orm import Session

from netslate import audit
from netslate.errors import Conflict, NotFound, UserError
from netslate.inventory.idents import (
    check_hostname,
    check_label,
    forms,
    normalize_group,
    normalize_mac,
    normalize_text,
    normalize_uuid,
    shown,
)
from netslate.names import check_name
from netslate.store import outbox
from netslate.store.models import Machine, MachineMac, Setting

GENERATION_KEY = "inventory.generation"
# A scalar subquery for cache fingerprints (the boot engine's): moves on every identity change.
GENERATION_SQL = f"(SELECT value FROM settings WHERE key = '{GENERATION_KEY}')"
STATES = ("discovered", "held", "approved", "booting", "configured", "degraded")
IDENT_HELP = "give an id, name, MAC, SMBIOS UUID or serial"
MAX_CANDIDATES_SHOWN = 5


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() + "Z" if t else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def bump(s: Session) -> int:
    """Move the inventory generation (in the caller's transaction)."""
    row = s.get(Setting, GENERATION_KEY)
    if row is None:
        row = Setting(key=GENERATION_KEY, value="0")
        s.add(row)
    value = int(row.value or 0) + 1
    row.value = str(value)
    s.flush()
    return value


def generation(s: Session) -> int:
    row = s.get(Setting, GENERATION_KEY)
    return int(row.value) if row is not None else 0


# ---------------------------------------------------------------- finding


def by_mac(s: Session, mac: str) -> Machine | None:
    """The machine owning this MAC (any notation), or None; an invalid MAC is None too."""
    try:
        norm = normalize_mac(mac)
    except UserError:
        return None
    row = s.scalar(select(MachineMac).where(MachineMac.mac == norm))
    return row.machine if row is not None else None


def by_uuid(s: Session, uuid: str) -> Machine | None:
    try:
        norm = normalize_uuid(uuid)
    except UserError:
        return None
    return s.scalar(select(Machine).where(Machine.uuid == norm))


def _matches(s: Session, form: str, value: Any) -> list[Machine]:
    if form == "id":
        m = s.get(Machine, value)
        return [m] if m is not None else []
    if form == "mac":
        m = by_mac(s, value)
        return [m] if m is not None else []
    column = {"name": Machine.name, "uuid": Machine.uuid, "serial": Machine.serial}[form]
    return list(s.scalars(select(Machine).where(column == value).order_by(Machine.id).limit(MAX_CANDIDATES_SHOWN + 1)))


def _describe(m: Machine, how: list[str]) -> str:
    return f"machine {m.id}" + (f" {m.name!r}" if m.name else "") + f" (by {', '.join(how)})"


def resolve(s: Session, ident: str | int) -> Machine:
    """The one machine `ident` names: an id, a name, a MAC (aa:bb:cc:dd:ee:ff, AA-BB-.., aabb.ccdd.eeff,
    aabbccddeeff, 01-aa-bb-..), an SMBIOS UUID (any case, braces or no dashes) or a serial number.

    Unknown: NotFound. Naming two or more machines (say id 12 and another machine's serial "12"):
    UserError listing them and the `form:value` prefixes that pick one reading."""
    text = str(ident).strip()
    found: dict[int, tuple[Machine, list[str]]] = {}
    for form, value in forms(ident):
        for m in _matches(s, form, value):
            found.setdefault(m.id, (m, []))[1].append(form)
    if not found:
        raise NotFound(f"no machine {shown(text)} ({IDENT_HELP})")
    if len(found) == 1:
        return next(iter(found.values()))[0]
    cands = [_describe(m, how) for m, how in sorted(found.values(), key=lambda x: x[0].id)]
    more = f" and {len(cands) - MAX_CANDIDATES_SHOWN} more" if len(cands) > MAX_CANDIDATES_SHOWN else ""
    raise UserError(f"{shown(text)} names {len(cands)} machines: {'; '.join(cands[:MAX_CANDIDATES_SHOWN])}{more}; "
                    "say which with an id: (or name:, mac:, uuid:, serial:) prefix")


def find(s: Session, ident: str | int) -> Machine | None:
    """Like resolve, but None when nothing matches (an ambiguous identifier still raises)."""
    try:
        return resolve(s, ident)
    except NotFound:
        return None


def identify(s: Session, ident: str | None, macs: list[str], uuid: str | None) -> Machine | None:
    """Which machine is asking (agents, initramfs): `ident` if it names one, else the SMBIOS UUID, else any MAC."""
    m = find(s, ident) if ident else None
    if m is None and uuid:
        m = by_uuid(s, uuid)
    for mac in macs[:32]:
        if m is not None:
            break
        m = by_mac(s, mac)
    return m


def machine_id(ctx, ident: str | int) -> int:
    with ctx.db.session() as s:
        return resolve(s, ident).id


def machine_ids(ctx) -> list[int]:
    with ctx.db.session() as s:
        return list(s.scalars(select(Machine.id).order_by(Machine.id)))


# ---------------------------------------------------------------- reading


def machine_dict(m: Machine) -> dict[str, Any]:
    """A machine's identity and status facts (other parts add their own: pin, fleet, boots)."""
    return {
        "id": m.id,
        "name": m.name,
        "state": m.state,
        "approved": m.approved,
        "macs": sorted(x.mac for x in m.macs),
        "uuid": m.uuid,
        "serial": m.serial,
        "manufacturer": m.manufacturer,
        "product": m.product,
        "hostname": m.hostname,
        "labels": dict(m.labels or {}),
        "group": m.tree_path,
        "ip_address": m.ip_address,
        "trust": m.trust or "none",
        "first_seen": _iso(m.first_seen),
        "last_seen": _iso(m.last_seen),
        "reported": (m.status or {}).get("boot_reported", {}),
    }


def list_machines(ctx, state: str | None = None) -> list[dict]:
    with ctx.db.session() as s:
        q = select(Machine).order_by(Machine.id)
        if state:
            q = q.where(Machine.state == state)
        return [machine_dict(m) for m in s.scalars(q)]


def show_machine(ctx, ident: str | int) -> dict:
    with ctx.db.session() as s:
        return machine_dict(resolve(s, ident))


# ---------------------------------------------------------------- operator changes


def add_machine(
    ctx,
    macs: list[str],
    uuid: str | None = None,
    serial: str | None = None,
    name: str | None = None,
    hostname: str | None = None,
    labels: dict[str, str] | None = None,
    group: str | None = None,
    actor: str | None = None,
) -> dict:
    """Register a machine an operator knows about; it is approved at once."""
    actor = actor or audit.default_actor()
    norm_macs = sorted({normalize_mac(x) for x in macs})
    if not norm_macs and not uuid:
        raise UserError("a machine needs at least one --mac or a --uuid")
    uuid = normalize_uuid(uuid) if uuid else None
    serial = normalize_text(serial, "serial") if serial else None
    if name:
        check_name(name, "machine name")
    hostname = check_hostname(hostname) if hostname else None
    labels = dict(check_label(k, v) for k, v in (labels or {}).items())
    group = normalize_group(group) if group else "/"
    with ctx.db.session() as s:
        for mac in norm_macs:
            if s.scalar(select(MachineMac).where(MachineMac.mac == mac)):
                raise Conflict(f"MAC {mac} already belongs to a machine")
        if uuid and s.scalar(select(Machine).where(Machine.uuid == uuid)):
            raise Conflict(f"UUID {uuid} already belongs to a machine")
        if name and s.scalar(select(Machine).where(Machine.name == name)):
            raise Conflict(f"a machine named {name!r} already exists")
        m = Machine(name=name, uuid=uuid, serial=serial, hostname=hostname, labels=labels, tree_path=group,
                    state="approved", approved=True, status={})
        m.macs = [MachineMac(mac=x) for x in norm_macs]
        s.add(m)
        s.flush()
        audit.record(s, actor, "machine.add", f"machine:{m.id}", macs=norm_macs, uuid=uuid, name=name)
        bump(s)
        return machine_dict(m)


def approve_machine(ctx, ident: str | int, actor: str | None = None) -> dict:
    actor = actor or audit.default_actor()
    with ctx.db.session() as s:
        m = resolve(s, ident)
        m.approved = True
        if m.state in ("discovered", "held"):
            m.state = "approved"
        audit.record(s, actor, "machine.approve", f"machine:{m.id}")
        bump(s)
        return machine_dict(m)


def label_machine(ctx, ident: str | int, set_labels: dict[str, str], remove: list[str], actor: str | None = None,
                  hostname: str | None = None, group: str | None = None, name: str | None = None) -> dict:
    """Set/remove labels; a given hostname, group or name is changed too ('' clears hostname and name)."""
    actor = actor or audit.default_actor()
    set_labels = dict(check_label(k, v) for k, v in set_labels.items())
    with ctx.db.session() as s:
        m = resolve(s, ident)
        labels = dict(m.labels or {})
        for k in remove:
            labels.pop(k, None)
        labels.update(set_labels)
        m.labels = labels
        if hostname is not None:
            m.hostname = check_hostname(hostname) if hostname else None
        if group is not None:
            m.tree_path = normalize_group(group)
        if name is not None:
            if name:
                check_name(name, "machine name")
                other = s.scalar(select(Machine).where(Machine.name == name))
                if other is not None and other.id != m.id:
                    raise Conflict(f"a machine named {name!r} already exists")
            m.name = name or None
        audit.record(s, actor, "machine.label", f"machine:{m.id}", set=set_labels, removed=remove)
        bump(s)
        return machine_dict(m)


def remove_machine(ctx, ident: str | int, actor: str | None = None) -> dict:
    """Forget a machine. Rows of other parts that hang off it go with it (foreign keys: pins,
    per-machine config, leases) or lose the link (boot events)."""
    actor = actor or audit.default_actor()
    with ctx.db.session() as s:
        m = resolve(s, ident)
        d = machine_dict(m)
        s.delete(m)
        audit.record(s, actor, "machine.rm", f"machine:{d['id']}", macs=d["macs"], uuid=d["uuid"])
        bump(s)
        return d


# ---------------------------------------------------------------- the boot path


def _clip(v: Any) -> str | None:
    return str(v)[:128] if v else None


def discover_machine(ctx, facts: dict, remote: str | None, actor: str = "boot") -> int:
    """Record an unknown machine as `discovered` with everything iPXE reported. Returns its id.

    `facts` are validated already (netslate.boot.request). A known UUID (the machine booted from
    another NIC) gets this MAC added instead. Safe against two servers seeing the same MAC at once:
    the unique MAC wins, the loser re-reads."""
    mac = facts["mac"]
    uuid = facts.get("uuid")
    try:
        with ctx.db.session() as s:
            m = s.scalar(select(Machine).where(Machine.uuid == uuid)) if uuid else None
            if m is not None:
                m.macs.append(MachineMac(mac=mac))
                audit.record(s, actor, "machine.mac.add", f"machine:{m.id}", mac=mac)
                return m.id
            m = Machine(
                uuid=uuid, serial=_clip(facts.get("serial")), manufacturer=_clip(facts.get("manufacturer")),
                product=_clip(facts.get("product")), labels={}, state="discovered", approved=False,
                ip_address=remote, status={"boot_reported": {k: v for k, v in facts.items() if v}},
            )
            m.macs = [MachineMac(mac=mac)]
            s.add(m)
            s.flush()
            audit.record(s, actor, "machine.discover", f"machine:{m.id}", mac=mac, uuid=uuid, remote=remote)
            return m.id
    except DbIntegrityError:
        with ctx.db.session() as s:
            row = s.scalar(select(MachineMac).where(MachineMac.mac == mac))
            if row is None:
                raise
            return row.machine_id


@outbox.handler("inventory.discover")
def _discover_event(ctx, payload: dict) -> int:
    """A discovery made at boot, applied at once or replayed from a branch server's outbox."""
    return discover_machine(ctx, payload["facts"], payload.get("remote"))


@outbox.handler("inventory.facts")
def _facts_event(ctx, payload: dict) -> None:
    fill_facts(ctx, payload["machine_id"], payload["facts"])


def count_pending(ctx) -> int:
    """Machines discovered at boot and not approved yet (the discovery cap counts these)."""
    with ctx.db.session() as s:
        return s.scalar(select(func.count()).select_from(Machine).where(Machine.state == "discovered", Machine.approved.is_(False))) or 0


def fill_facts(ctx, machine_id: int, facts: dict) -> None:
    """A known machine reports SMBIOS facts it lacks (added by MAC only): keep them. Never overwrites."""
    with ctx.db.session() as s:
        m = s.get(Machine, machine_id)
        if m is None:
            return
        for k in ("uuid", "serial", "manufacturer", "product"):
            if getattr(m, k) is None and facts.get(k):
                setattr(m, k, _clip(facts[k]))


def mark_seen(s: Session, seen: dict[int, dt.datetime]) -> None:
    """Last-seen times of many machines at once (the boot event writer's batches), in the caller's
    transaction. Never moves a time back (an outbox replay of old events after newer ones)."""
    if seen:
        table = Machine.__table__
        at = bindparam("b_at", type_=table.c.last_seen.type)
        newer = case((table.c.last_seen.is_(None) | (table.c.last_seen < at), at), else_=table.c.last_seen)
        s.execute(update(table).where(table.c.id == bindparam("b_id")).values(last_seen=newer),
                  [{"b_id": k, "b_at": v} for k, v in seen.items()])


# ---------------------------------------------------------------- config and fleet


def place(s: Session, ident: str | int | Machine, path: str) -> tuple[Machine, str]:
    """Put a machine at a config tree path (in the caller's transaction). Returns (machine, old path)."""
    m = ident if isinstance(ident, Machine) else resolve(s, ident)
    path = normalize_group(path)
    old = m.tree_path
    m.tree_path = path
    bump(s)
    return m, old


def set_credential(s: Session, ident: str | int | Machine, sha256: str | None) -> bool:
    """Store a machine's credential hash (in the caller's transaction). Returns whether one was replaced."""
    m = ident if isinstance(ident, Machine) else resolve(s, ident)
    replaced = m.credential_sha256 is not None
    m.credential_sha256 = sha256
    return replaced


TRUST_LEVELS = ("none", "token", "host", "tpm")  # weakest → strongest (issue 13)


def set_trust(s: Session, ident: str | int | Machine, trust: str) -> str:
    """Set a machine's trust level (in the caller's transaction; config.credentials calls it). Returns the old one."""
    if trust not in TRUST_LEVELS:
        raise ValueError(f"unknown trust level {trust!r}")
    m = ident if isinstance(ident, Machine) else resolve(s, ident)
    old = m.trust or "none"
    if old != trust:
        m.trust = trust
        bump(s)
    return old


_REPORTED = ("status", "state", "last_seen", "ip_address")


def report_rows(s: Session, ids) -> dict[int, SimpleNamespace]:
    """The machine columns an agent report reads and writes, for many machines in one query (the
    outbox replay): id → a plain row that `record_report` can change; `record_reports` writes them."""
    t = Machine.__table__
    rows = s.execute(select(t.c.id, t.c.credential_sha256, *(t.c[c] for c in _REPORTED)).where(t.c.id.in_(list(ids))))
    return {r.id: SimpleNamespace(**r._asdict()) for r in rows}


def record_reports(s: Session, rows) -> None:
    """Write rows of `report_rows` back, one UPDATE per machine sent as one executemany (in the
    caller's transaction)."""
    rows = list(rows)
    if rows:
        t = Machine.__table__
        s.execute(update(t).where(t.c.id == bindparam("b_id")).values(**{c: bindparam(f"b_{c}", type_=t.c[c].type) for c in _REPORTED}),
                  [{"b_id": r.id, **{f"b_{c}": getattr(r, c) for c in _REPORTED}} for r in rows])


def record_report(s: Session, m: Machine, status: dict, state: str | None = None, seen: dt.datetime | None = None,
                  address: str | None = None) -> None:
    """What an agent's report changes on its machine row (in the caller's transaction): the status
    document, and for a current report the state, last-seen time and address. `m` is a Machine, or
    a row of `report_rows` (then `record_reports` writes it)."""
    m.status = dict(status)
    if state is not None:
        m.state = state
    if seen is not None:
        m.last_seen = seen
    if address:
        m.ip_address = address[:45]
