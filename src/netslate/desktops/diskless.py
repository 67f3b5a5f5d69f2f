"""Diskless desktop pools: desktops with no disk that PXE-boot a netslate image in ram mode.

A reset is a power cycle. What a desktop boots is decided by the boot part: each desktop's MAC is
in the machine inventory (`netslate.inventory`: approved, labelled `desktop-pool=POOL`), and an active rule
`desktop-pool=POOL → profile desktop-POOL` (image, ram mode) points it at the pool's image ref, so a
moved tag reaches each desktop at its next reset.
"""

from __future__ import annotations

import contextlib
import logging

from netslate.boot import store as bstore
from netslate.boot.rules import Rule, find_ties, normalize_selectors
from netslate.errors import Conflict, NotFound, UserError
from netslate.inventory import store as inventory
from netslate.names import check_name

log = logging.getLogger("netslate.desktops")
ACTOR = "netslate:desktops"
LABEL = "desktop-pool"
PROFILE_ARGS = ["panic=-1"]
CONSOLE = "ttyS0"


def parse_ref(value: str) -> tuple[str, str]:
    """IMAGE, IMAGE@TAG or IMAGE@VERSION → (image, ref); no ref means the newest version."""
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
    ties with no other rule (working or active); only this rule goes into the active set, so an
    operator's pending working-set changes stay pending. All through the boot part's functions."""
    pname, rname = profile_name(pool), rule_name(pool)
    selectors = normalize_selectors({"label": {LABEL: pool}})
    try:
        prof = bstore.show_profile(ctx, pname)
        prof_ok = (prof["kind"], prof["image"], prof["ref"], prof["mode"], prof["console"]) == ("image", image, ref, "ram", CONSOLE)
    except NotFound:
        prof_ok = False
    if not prof_ok:
        bstore.add_profile(ctx, pname, kind="image", image=image, ref=ref, mode="ram", args=PROFILE_ARGS,
                           console=CONSOLE, note=f"diskless desktop pool {pool}", actor=ACTOR, replace=True)
    working = bstore.list_rules(ctx, "working")["rules"]
    active = bstore.list_rules(ctx, "active")["rules"]
    mine = {"working": next((r for r in working if r["name"] == rname), None),
            "active": next((r for r in active if r["name"] == rname), None)}

    def good(r) -> bool:
        return r is not None and r["selectors"] == selectors and r["profile"] == pname

    if good(mine["working"]) and good(mine["active"]):
        return
    others = [Rule(r["name"], r["priority"], r["selectors"], r["profile"]) for r in working + active if r["name"] != rname]
    prio = mine["active"]["priority"] if good(mine["active"]) else 1000
    for _ in range(200):  # bounded: find a priority no other rule ties with
        if not find_ties(Rule(rname, prio, selectors, pname), others):
            break
        prio += 1
    else:
        raise Conflict(f"no free priority for boot rule {rname!r}")
    bstore.add_rule(ctx, rname, selectors, pname, priority=prio, actor=ACTOR, replace=True)
    bstore.activate_rule(ctx, rname, actor=ACTOR)


def remove_boot(ctx, pool: str) -> None:
    """The pool is gone: its rule (working and active) and profile go too (a profile another rule
    still uses stays)."""
    rname = rule_name(pool)
    with contextlib.suppress(NotFound):
        bstore.remove_rule(ctx, rname, actor=ACTOR)
    bstore.activate_rule(ctx, rname, actor=ACTOR)
    with contextlib.suppress(NotFound, Conflict):
        bstore.remove_profile(ctx, profile_name(pool), actor=ACTOR)


def _machine(ctx, mac: str) -> dict | None:
    try:
        return inventory.show_machine(ctx, f"mac:{mac}")
    except NotFound:
        return None


def register_machine(ctx, pool: str, name: str, mac: str) -> None:
    """The desktop's MAC in the machine inventory: approved, labelled desktop-pool=POOL. Idempotent."""
    m = _machine(ctx, mac)
    if m is None:
        inventory.add_machine(ctx, [mac], name=name, hostname=name, labels={LABEL: pool}, actor=ACTOR)
        return
    if (m.get("labels") or {}).get(LABEL) != pool:
        inventory.label_machine(ctx, str(m["id"]), {LABEL: pool}, [], actor=ACTOR)
    if not m.get("approved"):
        inventory.approve_machine(ctx, str(m["id"]), actor=ACTOR)


def unregister_machine(ctx, mac: str) -> None:
    """Remove the inventory entry of a destroyed desktop (only one netslate registered for it)."""
    m = _machine(ctx, mac)
    if m is None or LABEL not in (m.get("labels") or {}):
        return
    with contextlib.suppress(NotFound):
        inventory.remove_machine(ctx, str(m["id"]), actor=ACTOR)
