"""Profiles, rule sets, pins, policies and events in the database. One transaction per change.

Every change to what the boot path caches in memory (rules, profiles, pins, policies) bumps
`boot_state.generation`, which the cache is keyed on (see engine.py). Machines themselves belong to
netslate.inventory (whose generation is in the same fingerprint); their rows are read per request.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from netslate import audit, inventory
from netslate.boot import ipxe
from netslate.boot.models import BootEvent, BootPin, BootPolicy, BootProfile, BootRule, BootState
from netslate.boot.rules import (
    Rule,
    check_no_ties,
    diff_rule_sets,
    normalize_selectors,
)
from netslate.errors import Conflict, NotFound, UserError
from netslate.names import check_name

PROFILE_KINDS = ("image", "local", "menu")
# The netslate initramfs modes (netslate.initramfs.stage.MODES); a new mode is added in both places.
MODES = ("ram", "cache")
POLICIES = ("boot-default", "hold")
DEFAULT_SITE = "default"
CONSOLE_RE = re.compile(r"^[A-Za-z0-9,]{1,32}\Z")


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


# ---------------------------------------------------------------- pins (machines themselves: netslate.inventory)


def pin_dict(pin: BootPin | None) -> dict | None:
    return {"image": pin.image, "version": pin.version, "by": pin.actor, "at": _iso(pin.created_at)} if pin else None


def pins(ctx, machine_ids: list[int] | None = None) -> dict[int, dict]:
    """Machine id → its pin, for the machines given (all pinned machines when None)."""
    with ctx.db.session() as s:
        q = select(BootPin)
        if machine_ids is not None:
            q = q.where(BootPin.machine_id.in_(machine_ids))
        return {p.machine_id: pin_dict(p) for p in s.scalars(q)}


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
    with ctx.db.session(write=True) as s:  # last writer wins
        m = inventory.resolve(s, ident)
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
        return {"id": m.id, "pin": pin_dict(pin)}


def unpin_machine(ctx, ident: str, actor: str | None = None) -> dict:
    actor = actor or audit.default_actor()
    with ctx.db.session() as s:
        m = inventory.resolve(s, ident)
        pin = s.get(BootPin, m.id)
        if pin is None:
            raise NotFound(f"machine {m.id} is not pinned")
        s.delete(pin)
        audit.record(s, actor, "machine.unpin", f"machine:{m.id}", image=pin.image, version=pin.version)
        bump(s)
        return {"id": m.id, "pin": None}


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
    with ctx.db.session(write=replace) as s:  # with replace: last writer wins
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
    with ctx.db.session(write=True) as s:  # the tie check sees every rule written before it
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
    with ctx.db.session(write=True) as s:  # last writer wins
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
            q = q.where(BootEvent.machine_id == inventory.resolve(s, machine).id)
        return [event_dict(e) for e in s.scalars(q)]


def count_events(ctx) -> int:
    with ctx.db.session() as s:
        return s.scalar(select(func.count(BootEvent.id))) or 0


def last_boots(s: Session, machine_ids: list[int] | None = None) -> dict[int, dt.datetime]:
    """Machine id → when it last asked for a boot script (naive UTC); read by the fleet view.
    Only for `machine_ids` when given (a page of the machine list, not the whole fleet)."""
    q = select(BootEvent.machine_id, func.max(BootEvent.at)).where(BootEvent.machine_id.is_not(None)).group_by(BootEvent.machine_id)
    if machine_ids is not None:
        q = q.where(BootEvent.machine_id.in_(machine_ids))
    return dict(s.execute(q).all())
