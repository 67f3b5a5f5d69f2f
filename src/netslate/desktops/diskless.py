"""Diskless desktop pools: desktops with no disk that PXE-boot a netslate image in ram mode.

A reset is a power cycle. What a desktop boots is decided by the boot part: each desktop's MAC is
in the machine inventory (approved, labelled `desktop-pool=POOL`), and an active rule
`desktop-pool=POOL → profile desktop-POOL` (image, ram mode) points it at the pool's image ref, so a
moved tag reaches each desktop at its next reset.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from netslate.errors import Conflict, NotFound, UserError

log = logging.getLogger("netslate.desktops")
ACTOR = "netslate:desktops"
LABEL = "desktop-pool"
PROFILE_ARGS = ["panic=-1"]
CONSOLE = "ttyS0"


def parse_ref(value: str) -> tuple[str, str]:
    """IMAGE, IMAGE@TAG or IMAGE@VERSION → (image, ref); no ref means the newest version."""
    from netslate.names import check_name

    name, sep, ref = value.partition("@")
    if sep and not ref:
        raise UserError(f"--diskless {value!r}: want IMAGE, IMAGE@TAG or IMAGE@VERSION")
    return check_name(name, "image name"), check_name(ref or "latest", "image version or tag")


def profile_name(pool: str) -> str:
    return f"desktop-{pool}"


def rule_name(pool: str) -> str:
    return f"desktop-pool-{pool}"


def ensure_boot(ctx, pool: str, image: str, ref: str) -> None:
    """Profile `desktop-POOL` (image@ref, ram) and rule `desktop-pool=POOL → it`, both active.

    Idempotent and cheap when everything is already in place. The rule's priority is chosen so it
    ties with no other rule (working or active); the active set gets the rule without activating
    anyone else's pending working-set changes."""
    from netslate.boot import store as bstore
    from netslate.boot.models import BootProfile, BootRule
    from netslate.boot.rules import Rule, find_ties, normalize_selectors

    pname, rname = profile_name(pool), rule_name(pool)
    selectors = normalize_selectors({"label": {LABEL: pool}})
    with ctx.db.session() as s:
        prof = s.scalar(select(BootProfile).where(BootProfile.name == pname))
        prof_ok = prof is not None and (prof.kind, prof.image, prof.ref, prof.mode, prof.console) == ("image", image, ref, "ram", CONSOLE)
        rows = {r.ruleset: r for r in s.scalars(select(BootRule).where(BootRule.name == rname))}
    if not prof_ok:
        bstore.add_profile(ctx, pname, kind="image", image=image, ref=ref, mode="ram", args=PROFILE_ARGS,
                           console=CONSOLE, note=f"diskless desktop pool {pool}", actor=ACTOR, replace=True)

    def good(r) -> bool:
        return r is not None and r.selectors == selectors and r.profile == pname

    if good(rows.get("working")) and good(rows.get("active")):
        return
    with ctx.db.session() as s:
        others = [r for r in bstore.load_rules(s, "working") + bstore.load_rules(s, "active") if r.name != rname]
    prio = rows["active"].priority if good(rows.get("active")) else 1000
    for _ in range(200):  # bounded: find a priority no other rule ties with
        if not find_ties(Rule(rname, prio, selectors, pname), others):
            break
        prio += 1
    else:
        raise Conflict(f"no free priority for boot rule {rname!r}")
    bstore.add_rule(ctx, rname, selectors, pname, priority=prio, actor=ACTOR, replace=True)
    diff = bstore.diff_rules(ctx)
    if diff["changed_count"] <= 1:
        bstore.activate_rules(ctx, actor=ACTOR)  # only our rule differs: a normal activation
        return
    # the operator has pending working-set changes: put only our rule into the active set
    from netslate.boot.models import BootState

    with ctx.db.session() as s:
        row = s.scalar(select(BootRule).where(BootRule.ruleset == "active", BootRule.name == rname))
        if row is None:
            row = BootRule(ruleset="active", name=rname)
            s.add(row)
        row.priority, row.selectors, row.profile = prio, selectors, pname
        st = s.get(BootState, 1)
        if st is not None:
            st.active_version += 1
        bstore.bump(s)
        from netslate import audit

        audit.record(s, ACTOR, "boot.rules.activate", f"rule:{rname}", only=rname, priority=prio)


def remove_boot(ctx, pool: str) -> None:
    """The pool is gone: its rule (working and active) and profile go too."""
    from netslate.boot import store as bstore
    from netslate.boot.models import BootProfile, BootRule

    with ctx.db.session() as s:
        for r in s.scalars(select(BootRule).where(BootRule.name == rule_name(pool))):
            s.delete(r)
        p = s.scalar(select(BootProfile).where(BootProfile.name == profile_name(pool)))
        users = s.scalars(select(BootRule).where(BootRule.profile == profile_name(pool))).all()
        if p is not None and not [u for u in users if u.name != rule_name(pool)]:
            s.delete(p)
        bstore.bump(s)


def register_machine(ctx, pool: str, name: str, mac: str) -> None:
    """The desktop's MAC in the machine inventory: approved, labelled desktop-pool=POOL. Idempotent."""
    from netslate.boot import store as bstore
    from netslate.boot.rules import normalize_mac
    from netslate.store.models import MachineMac

    with ctx.db.session() as s:
        mm = s.scalar(select(MachineMac).where(MachineMac.mac == normalize_mac(mac)))
        mid = mm.machine_id if mm is not None else None
    if mid is None:
        bstore.add_machine(ctx, [mac], name=name, hostname=name, labels={LABEL: pool}, actor=ACTOR)
        return
    m = bstore.show_machine(ctx, str(mid), events=0)
    if (m.get("labels") or {}).get(LABEL) != pool:
        bstore.label_machine(ctx, str(mid), {LABEL: pool}, [], actor=ACTOR)
    if not m.get("approved"):
        bstore.approve_machine(ctx, str(mid), actor=ACTOR)


def unregister_machine(ctx, mac: str) -> None:
    """Remove the inventory entry of a destroyed desktop (only one netslate registered for it)."""
    from netslate.boot import store as bstore
    from netslate.boot.rules import normalize_mac
    from netslate.store.models import Machine, MachineMac

    with ctx.db.session() as s:
        mm = s.scalar(select(MachineMac).where(MachineMac.mac == normalize_mac(mac)))
        if mm is None:
            return
        m = s.get(Machine, mm.machine_id)
        if m is None or LABEL not in (m.labels or {}):
            return
        mid = m.id
    try:
        bstore.remove_machine(ctx, str(mid), actor=ACTOR)
    except NotFound:
        pass
