"""Inventory, profiles, rule sets, pins, policies and events in the database. One transaction per change.

Every change to what the boot path caches in memory (rules, profiles, pins, policies) bumps
`boot_state.generation`, which the cache is keyed on (see engine.py). Machine rows are read per
request, so discovering a machine does not invalidate the cache.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.orm import Session

from netslate import audit
from netslate.boot import ipxe
from netslate.boot.models import BootEvent, BootPin, BootPolicy, BootProfile, BootRule, BootState
from netslate.boot.rules import (
    Rule,
    check_label,
    check_no_ties,
    diff_rule_sets,
    normalize_group,
    normalize_mac,
    normalize_selectors,
    normalize_text,
    normalize_uuid,
)
from netslate.errors import Conflict, NotFound, UserError
from netslate.names import check_name
from netslate.store.models import Machine, MachineMac

PROFILE_KINDS = ("image", "local", "menu")
# The netslate initramfs modes (netslate.initramfs.stage.MODES); a new mode is added in both places.
MODES = ("ram", "cache")
POLICIES = ("boot-default", "hold")
DEFAULT_SITE = "default"
CONSOLE_RE = re.compile(r"^[A-Za-z0-9,]{1,32}\Z")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() + "Z" if t else None


def bump(s: Session) -> int:
    st = s.get(BootState, 1)
    if st is None:
        st = BootState(id=1, generation=0, active_version=0)
        s.add(st)
    st.generation = (st.generation or 0) + 1
    s.flush()
    return st.generation


def boot_state(s: Session) -> BootState:
    st = s.get(BootState, 1)
    return st if st is not None else BootState(id=1, generation=0, active_version=0)


# ---------------------------------------------------------------- machines


def find_machine(s: Session, ident: str | int) -> Machine:
    """By id, MAC, UUID or name."""
    text = str(ident).strip()
    m = None
    if text.isdigit():
        m = s.get(Machine, int(text))
    else:
        try:
            mac = normalize_mac(text)
        except UserError:
            mac = None
        if mac and re.fullmatch(r"[0-9A-Fa-f:.-]{12,17}", text):
            row = s.scalar(select(MachineMac).where(MachineMac.mac == mac))
            m = row.machine if row else None
        elif re.fullmatch(r"[0-9A-Fa-f-]{36}", text):
            m = s.scalar(select(Machine).where(Machine.uuid == text.lower()))
        else:
            m = s.scalar(select(Machine).where(Machine.name == text))
    if m is None:
        raise NotFound(f"no machine {text[:80]!r} (give an id, MAC, UUID or name)")
    return m


def machine_dict(m: Machine, pin: BootPin | None = None) -> dict[str, Any]:
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
        "first_seen": _iso(m.first_seen),
        "last_seen": _iso(m.last_seen),
        "reported": (m.status or {}).get("boot_reported", {}),
        "pin": {"image": pin.image, "version": pin.version, "by": pin.actor, "at": _iso(pin.created_at)} if pin else None,
        "fleet": _fleet_view(m),  # agent-reported status (netslate.fleet)
    }


def _fleet_view(m: Machine) -> dict:
    from netslate.fleet.service import machine_view

    return machine_view(m)


def list_machines(ctx, state: str | None = None) -> list[dict]:
    with ctx.db.session() as s:
        q = select(Machine).order_by(Machine.id)
        if state:
            q = q.where(Machine.state == state)
        pins = {p.machine_id: p for p in s.scalars(select(BootPin))}
        return [machine_dict(m, pins.get(m.id)) for m in s.scalars(q)]


def show_machine(ctx, ident: str, events: int = 10) -> dict:
    with ctx.db.session() as s:
        m = find_machine(s, ident)
        d = machine_dict(m, s.get(BootPin, m.id))
        d["boots"] = [event_dict(e) for e in s.scalars(select(BootEvent).where(BootEvent.machine_id == m.id).order_by(BootEvent.id.desc()).limit(events))]
        return d


def _check_hostname(value: str) -> str:
    if not HOSTNAME_RE.match(value):
        raise UserError(f"invalid hostname {value[:80]!r}")
    return value


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
    hostname = _check_hostname(hostname) if hostname else None
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


def approve_machine(ctx, ident: str, actor: str | None = None) -> dict:
    actor = actor or audit.default_actor()
    with ctx.db.session() as s:
        m = find_machine(s, ident)
        m.approved = True
        if m.state in ("discovered", "held"):
            m.state = "approved"
        audit.record(s, actor, "machine.approve", f"machine:{m.id}")
        bump(s)
        return machine_dict(m, s.get(BootPin, m.id))


def label_machine(ctx, ident: str, set_labels: dict[str, str], remove: list[str], actor: str | None = None,
                  hostname: str | None = None, group: str | None = None, name: str | None = None) -> dict:
    actor = actor or audit.default_actor()
    set_labels = dict(check_label(k, v) for k, v in set_labels.items())
    with ctx.db.session() as s:
        m = find_machine(s, ident)
        labels = dict(m.labels or {})
        for k in remove:
            labels.pop(k, None)
        labels.update(set_labels)
        m.labels = labels
        if hostname is not None:
            m.hostname = _check_hostname(hostname) if hostname else None
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
        return machine_dict(m, s.get(BootPin, m.id))


def remove_machine(ctx, ident: str, actor: str | None = None) -> dict:
    actor = actor or audit.default_actor()
    with ctx.db.session() as s:
        m = find_machine(s, ident)
        d = machine_dict(m)
        s.execute(delete(BootPin).where(BootPin.machine_id == m.id))
        s.delete(m)
        audit.record(s, actor, "machine.rm", f"machine:{d['id']}", macs=d["macs"], uuid=d["uuid"])
        bump(s)
        return d


def parse_image_at(value: str) -> tuple[str, str]:
    name, sep, ref = value.partition("@")
    if not sep or not ref:
        raise UserError(f"want IMAGE@VERSION, got {value[:80]!r}")
    return check_name(name, "image name"), check_name(ref, "version")


def pin_machine(ctx, ident: str, image_at: str, actor: str | None = None) -> dict:
    """Pin to one version. A tag is resolved now: a pin never moves by itself."""
    actor = actor or audit.default_actor()
    name, ref = parse_image_at(image_at)
    resolved = ctx.library.resolve(name, ref)
    with ctx.db.session() as s:
        m = find_machine(s, ident)
        pin = s.get(BootPin, m.id)
        old = (pin.image, pin.version) if pin else None
        if pin is None:
            pin = BootPin(machine_id=m.id, image=name, version=resolved.version, actor=actor)
            s.add(pin)
        else:
            pin.image, pin.version, pin.actor, pin.created_at = name, resolved.version, actor, dt.datetime.utcnow()
        audit.record(s, actor, "machine.pin", f"machine:{m.id}", image=name, version=resolved.version, old=old)
        bump(s)
        s.flush()
        return machine_dict(m, pin)


def unpin_machine(ctx, ident: str, actor: str | None = None) -> dict:
    actor = actor or audit.default_actor()
    with ctx.db.session() as s:
        m = find_machine(s, ident)
        pin = s.get(BootPin, m.id)
        if pin is None:
            raise NotFound(f"machine {m.id} is not pinned")
        s.delete(pin)
        audit.record(s, actor, "machine.unpin", f"machine:{m.id}", image=pin.image, version=pin.version)
        bump(s)
        return machine_dict(m)


def versions_in_use(ctx, image: str, version: int) -> list[str]:
    """For the image library's `rm` check: a version a machine is pinned to, or a profile names by
    number, must not disappear under them."""
    with ctx.db.session() as s:
        ids = s.scalars(select(BootPin.machine_id).where(BootPin.image == image, BootPin.version == version)).all()
        profiles = s.scalars(select(BootProfile.name).where(BootProfile.image == image, BootProfile.ref == str(version))).all()
    return [f"machine {i} is pinned to {image}@{version}" for i in ids] + [f"boot profile {p!r} names it" for p in profiles]


# ---------------------------------------------------------------- profiles


def profile_dict(p: BootProfile) -> dict:
    return {"name": p.name, "kind": p.kind, "image": p.image, "ref": p.ref, "mode": p.mode,
            "args": list(p.args or []), "console": p.console, "note": p.note, "created_at": _iso(p.created_at)}


def add_profile(ctx, name: str, kind: str = "image", image: str | None = None, ref: str | None = None,
                mode: str = "ram", args: list[str] | None = None, console: str | None = None, note: str = "",
                actor: str | None = None, replace: bool = False) -> dict:
    actor = actor or audit.default_actor()
    check_name(name, "profile name")
    if kind not in PROFILE_KINDS:
        raise UserError(f"unknown profile kind {kind!r}: use one of {', '.join(PROFILE_KINDS)}")
    args = list(args or [])
    if kind == "image":
        if not image or not ref:
            raise UserError("an image profile needs --image NAME and --ref VERSION-OR-TAG")
    if kind == "menu" and not image:
        raise UserError("a menu profile needs --image NAME (its versions are listed)")
    if kind == "local":
        image = ref = None
        args, console = [], None
    if image:
        check_name(image, "image name")
    if ref:
        check_name(ref, "version or tag")
    if mode not in MODES:
        raise UserError(f"unknown boot mode {mode!r}: use one of {', '.join(MODES)}")
    for a in args:
        try:
            ipxe.arg(a, "kernel argument")
        except ipxe.UnsafeValue:
            raise UserError(f"kernel argument {a[:80]!r} has characters that are not allowed (letters, digits and ._:/=,@+%- only)") from None
        if a.split("=", 1)[0] in ("netslate.server", "netslate.image", "netslate.manifest", "netslate.mode"):
            raise UserError(f"kernel argument {a.split('=', 1)[0]} is set by netslate itself")
    if console is not None and not CONSOLE_RE.match(console):
        raise UserError(f"invalid console {console[:40]!r}: e.g. ttyS0 or ttyS0,115200n8")
    with ctx.db.session() as s:
        p = s.scalar(select(BootProfile).where(BootProfile.name == name))
        if p is not None and not replace:
            raise Conflict(f"a profile named {name!r} already exists")
        if p is None:
            p = BootProfile(name=name)
            s.add(p)
        p.kind, p.image, p.ref, p.mode, p.args, p.console, p.note = kind, image, ref, mode, args, console, note
        audit.record(s, actor, "boot.profile.set", f"profile:{name}", kind=kind, image=image, ref=ref, mode=mode, args=args, console=console)
        bump(s)
        s.flush()
        return profile_dict(p)


def list_profiles(ctx) -> list[dict]:
    with ctx.db.session() as s:
        return [profile_dict(p) for p in s.scalars(select(BootProfile).order_by(BootProfile.name))]


def show_profile(ctx, name: str) -> dict:
    with ctx.db.session() as s:
        p = s.scalar(select(BootProfile).where(BootProfile.name == name))
        if p is None:
            raise NotFound(f"no profile named {name!r}")
        d = profile_dict(p)
        d["used_by"] = [f"{r.ruleset}:{r.name}" for r in s.scalars(select(BootRule).where(BootRule.profile == name))]
        return d


def remove_profile(ctx, name: str, actor: str | None = None) -> None:
    actor = actor or audit.default_actor()
    with ctx.db.session() as s:
        p = s.scalar(select(BootProfile).where(BootProfile.name == name))
        if p is None:
            raise NotFound(f"no profile named {name!r}")
        users = [f"{r.ruleset} rule {r.name!r}" for r in s.scalars(select(BootRule).where(BootRule.profile == name))]
        users += [f"policy of site {x.site!r}" for x in s.scalars(select(BootPolicy).where(BootPolicy.default_profile == name))]
        if users:
            raise Conflict(f"profile {name!r} is used by {', '.join(users)}")
        s.delete(p)
        audit.record(s, actor, "boot.profile.rm", f"profile:{name}")
        bump(s)


# ---------------------------------------------------------------- rules


def rule_of(r: BootRule) -> Rule:
    return Rule(r.name, r.priority, dict(r.selectors or {}), r.profile)


def rule_dict(r: Rule) -> dict:
    return {"name": r.name, "priority": r.priority, "specificity": r.specificity, "selectors": r.selectors, "profile": r.profile}


def load_rules(s: Session, ruleset: str) -> list[Rule]:
    return [rule_of(r) for r in s.scalars(select(BootRule).where(BootRule.ruleset == ruleset).order_by(BootRule.name))]


def add_rule(ctx, name: str, selectors: dict, profile: str, priority: int = 0, actor: str | None = None, replace: bool = False) -> dict:
    """Add (or with replace, change) a rule in the working set; a tie with another working rule is refused."""
    actor = actor or audit.default_actor()
    check_name(name, "rule name")
    selectors = normalize_selectors(selectors)
    if not -1_000_000 <= int(priority) <= 1_000_000:
        raise UserError("priority must be between -1000000 and 1000000")
    rule = Rule(name, int(priority), selectors, profile)
    with ctx.db.session() as s:
        if s.scalar(select(BootProfile).where(BootProfile.name == profile)) is None:
            raise NotFound(f"no profile named {profile!r} (netslate boot profile add first)")
        row = s.scalar(select(BootRule).where(BootRule.ruleset == "working", BootRule.name == name))
        if row is not None and not replace:
            raise Conflict(f"the working set already has a rule named {name!r}")
        check_no_ties(rule, load_rules(s, "working"))
        if row is None:
            row = BootRule(ruleset="working", name=name)
            s.add(row)
        row.priority, row.selectors, row.profile = rule.priority, selectors, profile
        audit.record(s, actor, "boot.rule.set", f"rule:{name}", priority=rule.priority, selectors=selectors, profile=profile)
        return rule_dict(rule)


def remove_rule(ctx, name: str, actor: str | None = None) -> None:
    actor = actor or audit.default_actor()
    with ctx.db.session() as s:
        row = s.scalar(select(BootRule).where(BootRule.ruleset == "working", BootRule.name == name))
        if row is None:
            raise NotFound(f"the working set has no rule named {name!r}")
        s.delete(row)
        audit.record(s, actor, "boot.rule.rm", f"rule:{name}")


def list_rules(ctx, ruleset: str = "working") -> dict:
    if ruleset not in ("working", "active"):
        raise UserError("rule set is working or active")
    with ctx.db.session() as s:
        st = boot_state(s)
        rules = sorted(load_rules(s, ruleset), key=lambda r: (-r.priority, -r.specificity, r.name))
        return {"ruleset": ruleset, "active_version": st.active_version, "activated_at": _iso(st.activated_at),
                "activated_by": st.activated_by, "rules": [rule_dict(r) for r in rules]}


def diff_rules(ctx) -> dict:
    with ctx.db.session() as s:
        d = diff_rule_sets(load_rules(s, "active"), load_rules(s, "working"))
        d["active_version"] = boot_state(s).active_version
        d["changed_count"] = len(d["added"]) + len(d["removed"]) + len(d["changed"])
        return d


def activate_rules(ctx, actor: str | None = None) -> dict:
    """Working set → active set in one transaction; the audit entry records the diff."""
    actor = actor or audit.default_actor()
    with ctx.db.session() as s:
        working = load_rules(s, "working")
        for r in working:  # the working set is tie-free by construction; check again, cheaply, to be sure
            check_no_ties(r, working)
            if s.scalar(select(BootProfile).where(BootProfile.name == r.profile)) is None:
                raise NotFound(f"rule {r.name!r} names a missing profile {r.profile!r}")
        d = diff_rule_sets(load_rules(s, "active"), working)
        s.execute(delete(BootRule).where(BootRule.ruleset == "active"))
        for r in working:
            s.add(BootRule(ruleset="active", name=r.name, priority=r.priority, selectors=r.selectors, profile=r.profile))
        bump(s)
        st = s.get(BootState, 1)
        st.active_version += 1
        st.activated_at = dt.datetime.utcnow()
        st.activated_by = actor
        audit.record(s, actor, "boot.rules.activate", f"ruleset:{st.active_version}", rules=len(working), diff=d)
        return {"active_version": st.active_version, "rules": len(working), "diff": d}


def activate_rule(ctx, name: str, actor: str | None = None) -> dict:
    """Only the rule `name` goes from the working set to the active set (added, changed, or removed
    when the working set no longer has it); other pending working-set changes stay pending.
    A tie with another active rule is refused. Nothing changes (no new version) when both agree."""
    actor = actor or audit.default_actor()
    with ctx.db.session() as s:
        want = s.scalar(select(BootRule).where(BootRule.ruleset == "working", BootRule.name == name))
        row = s.scalar(select(BootRule).where(BootRule.ruleset == "active", BootRule.name == name))
        st = s.get(BootState, 1)
        if want is None and row is None or (want is not None and row is not None and rule_of(want) == rule_of(row)):
            return {"active_version": st.active_version, "changed": False}
        if want is not None:
            check_no_ties(rule_of(want), [r for r in load_rules(s, "active") if r.name != name])
            if row is None:
                row = BootRule(ruleset="active", name=name)
                s.add(row)
            row.priority, row.selectors, row.profile = want.priority, want.selectors, want.profile
        else:
            s.delete(row)
        bump(s)
        st.active_version += 1
        st.activated_at = dt.datetime.utcnow()
        st.activated_by = actor
        audit.record(s, actor, "boot.rules.activate", f"rule:{name}", only=name, removed=want is None)
        return {"active_version": st.active_version, "changed": True}



# ---------------------------------------------------------------- policies


def policy_dict(p: BootPolicy) -> dict:
    return {"site": p.site, "policy": p.policy, "retry_seconds": p.retry_seconds, "default_profile": p.default_profile}


def set_policy(ctx, policy: str, site: str = DEFAULT_SITE, retry_seconds: int | None = None,
               default_profile: str | None = None, actor: str | None = None) -> dict:
    actor = actor or audit.default_actor()
    check_name(site, "site name")
    if policy not in POLICIES:
        raise UserError(f"unknown policy {policy!r}: use {' or '.join(POLICIES)}")
    if retry_seconds is not None and not 1 <= retry_seconds <= 3600:
        raise UserError("--retry-seconds must be between 1 and 3600")
    with ctx.db.session() as s:
        if default_profile and s.scalar(select(BootProfile).where(BootProfile.name == default_profile)) is None:
            raise NotFound(f"no profile named {default_profile!r}")
        p = s.get(BootPolicy, site)
        if p is None:
            p = BootPolicy(site=site, policy=policy, retry_seconds=30)
            s.add(p)
        p.policy = policy
        if retry_seconds is not None:
            p.retry_seconds = retry_seconds
        if default_profile is not None:
            p.default_profile = default_profile or None
        audit.record(s, actor, "boot.policy.set", f"site:{site}", policy=policy, retry_seconds=p.retry_seconds, default_profile=p.default_profile)
        bump(s)
        s.flush()
        return policy_dict(p)


def list_policies(ctx) -> list[dict]:
    with ctx.db.session() as s:
        rows = {p.site: policy_dict(p) for p in s.scalars(select(BootPolicy))}
    rows.setdefault(DEFAULT_SITE, {"site": DEFAULT_SITE, "policy": "boot-default", "retry_seconds": 30, "default_profile": None})
    return [rows[k] for k in sorted(rows)]


# ---------------------------------------------------------------- events


def event_dict(e: BootEvent) -> dict:
    return {"id": e.id, "at": _iso(e.at), "machine": e.machine_id, "mac": e.mac, "kind": e.kind, "rule": e.rule,
            "profile": e.profile, "image": e.image, "version": e.version, "pinned": e.pinned, "remote": e.remote, "detail": e.detail}


def list_events(ctx, limit: int = 100, machine: str | None = None) -> list[dict]:
    with ctx.db.session() as s:
        q = select(BootEvent).order_by(BootEvent.id.desc()).limit(max(1, min(limit, 10000)))
        if machine:
            q = q.where(BootEvent.machine_id == find_machine(s, machine).id)
        return [event_dict(e) for e in s.scalars(q)]


def count_events(ctx) -> int:
    with ctx.db.session() as s:
        return s.scalar(select(func.count(BootEvent.id))) or 0


def discover_machine(ctx, facts: dict, remote: str | None) -> int:
    """Record an unknown machine as `discovered` with everything iPXE reported. Returns its id.

    Safe against two servers seeing the same MAC at once: the unique MAC wins, the loser re-reads.
    """
    mac = facts["mac"]
    uuid = facts.get("uuid")
    try:
        with ctx.db.session() as s:
            if uuid and s.scalar(select(Machine.id).where(Machine.uuid == uuid)) is not None:
                # Known by UUID (e.g. booted from another NIC): add this MAC to it.
                m = s.scalar(select(Machine).where(Machine.uuid == uuid))
                m.macs.append(MachineMac(mac=mac))
                audit.record(s, "boot", "machine.mac.add", f"machine:{m.id}", mac=mac)
                return m.id
            m = Machine(
                uuid=uuid, serial=_clip(facts.get("serial")), manufacturer=_clip(facts.get("manufacturer")),
                product=_clip(facts.get("product")), labels={}, state="discovered", approved=False,
                ip_address=remote, status={"boot_reported": {k: v for k, v in facts.items() if v}},
            )
            m.macs = [MachineMac(mac=mac)]
            s.add(m)
            s.flush()
            audit.record(s, "boot", "machine.discover", f"machine:{m.id}", mac=mac, uuid=uuid, remote=remote)
            return m.id
    except DbIntegrityError:
        with ctx.db.session() as s:
            row = s.scalar(select(MachineMac).where(MachineMac.mac == mac))
            if row is None:
                raise
            return row.machine_id


def _clip(v: str | None) -> str | None:
    return v[:128] if v else None
