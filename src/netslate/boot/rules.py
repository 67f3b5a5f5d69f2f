"""Boot rules, pure: selector validation, matching, specificity, tie detection, compiled rule sets.

A rule maps selectors to a profile. Among matching rules the highest priority wins, then the most
specific (the most selectors; each label counts as one). Two rules with the same priority and the
same specificity that could both match one machine are a *tie*; ties are refused when a rule is
saved, so at boot at most one rule of the best (priority, specificity) can ever match.

Selectors (all values exact, compared case-insensitively; a machine matches a rule when every
selector of the rule matches):

    mac           the MAC the machine booted from (aa:bb:cc:dd:ee:ff)
    uuid          SMBIOS UUID
    serial        SMBIOS serial number
    manufacturer  SMBIOS manufacturer
    product       SMBIOS product name
    arch          iPXE ${buildarch}: i386, x86_64, arm64, ...
    platform      iPXE ${platform}: pcbios or efi ("bios" is accepted as pcbios)
    label         {key: value, ...}; every listed label must be set on the machine to that value
    group         a tree path (/site/cluster/pool); matches the machine's tree path or anything below
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from netslate.errors import UserError
# MAC, UUID, SMBIOS text, group and label checks are inventory's (one notation for a machine everywhere);
# re-exported here for the selectors below and for request.py / pxelinux.py (UUID_RE).
from netslate.inventory.idents import (
    UUID_RE,
    check_label,
    normalize_group,
    normalize_mac,
    normalize_text,
    normalize_uuid,
    shown,
)

SCALAR_SELECTORS = ("mac", "uuid", "serial", "manufacturer", "product", "arch", "platform")
SELECTORS = SCALAR_SELECTORS + ("label", "group")

# The canonical MAC form the boot path compares (what normalize_mac returns); request.py and pxelinux.py check it.
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
WORD_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")
PLATFORMS = {"pcbios": "pcbios", "bios": "pcbios", "efi": "efi", "uefi": "efi"}


def normalize_platform(value: str) -> str:
    v = str(value).strip().lower()
    if v not in PLATFORMS:
        raise UserError(f"invalid platform {shown(value)}: use bios (pcbios) or efi")
    return PLATFORMS[v]


def normalize_selectors(selectors: dict[str, Any]) -> dict[str, Any]:
    """Validate and canonicalise a rule's selectors (raises UserError on anything unknown or malformed)."""
    out: dict[str, Any] = {}
    for key, value in selectors.items():
        if key not in SELECTORS:
            raise UserError(f"unknown selector {key!r}: use one of {', '.join(SELECTORS)}")
        if key == "mac":
            out[key] = normalize_mac(value)
        elif key == "uuid":
            out[key] = normalize_uuid(value)
        elif key in ("serial", "manufacturer", "product"):
            out[key] = normalize_text(value, key)
        elif key == "arch":
            v = str(value).strip().lower()
            if not WORD_RE.match(v):
                raise UserError(f"invalid arch {shown(value)}")
            out[key] = v
        elif key == "platform":
            out[key] = normalize_platform(value)
        elif key == "group":
            out[key] = normalize_group(value)
        elif key == "label":
            if not isinstance(value, dict) or not value:
                raise UserError("selector 'label' wants KEY=VALUE pairs")
            out[key] = dict(sorted(check_label(k, v) for k, v in value.items()))
    return out


def parse_selector_args(items: Iterable[str]) -> dict[str, Any]:
    """CLI form: ["mac=aa:..", "label=rack=r1", "label=role=gpu", "group=/lab"] → selectors dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"selector {item!r} wants KEY=VALUE")
        key = key.strip()
        if key == "label":
            lk, lsep, lv = value.partition("=")
            if not lsep:
                raise UserError(f"label selector {item!r} wants label=KEY=VALUE")
            out.setdefault("label", {})[lk] = lv
        else:
            if key in out:
                raise UserError(f"selector {key!r} given twice")
            out[key] = value
    return normalize_selectors(out)


def specificity(selectors: dict[str, Any]) -> int:
    """How specific a rule is: one point per selector, one per label."""
    return sum(len(v) if k == "label" else 1 for k, v in selectors.items())


def _group_contains(group: str, path: str) -> bool:
    return group == "/" or path == group or path.startswith(group + "/")


def _ci(a: Any, b: Any) -> bool:
    return str(a).lower() == str(b).lower()


@dataclass(frozen=True)
class Facts:
    """What is known about one booting machine: what iPXE sent plus the inventory."""

    mac: str | None = None
    uuid: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    arch: str | None = None
    platform: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    group: str = "/"


def selector_matches(key: str, want: Any, facts: Facts) -> bool:
    if key == "label":
        return all(facts.labels.get(k) == v for k, v in want.items())
    if key == "group":
        return _group_contains(want, facts.group or "/")
    have = getattr(facts, key)
    return have is not None and _ci(have, want)


def explain_rule(selectors: dict[str, Any], facts: Facts) -> list[dict[str, Any]]:
    """Per selector: wanted value, the machine's value, and whether it matched."""
    out = []
    for key, want in selectors.items():
        have: Any = facts.labels if key == "label" else getattr(facts, key)
        if key == "label":
            have = {k: facts.labels.get(k) for k in want}
        out.append({"selector": key, "want": want, "have": have, "match": selector_matches(key, want, facts)})
    return out


def could_overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Could one machine match both selector sets? Only selectors present in both can exclude each other."""
    for key in set(a) & set(b):
        if key == "label":
            for lk in set(a["label"]) & set(b["label"]):
                if a["label"][lk] != b["label"][lk]:
                    return False
        elif key == "group":
            if not (_group_contains(a[key], b[key]) or _group_contains(b[key], a[key])):
                return False
        elif not _ci(a[key], b[key]):
            return False
    return True


@dataclass(frozen=True)
class Rule:
    name: str
    priority: int
    selectors: dict[str, Any]
    profile: str

    @property
    def specificity(self) -> int:
        return specificity(self.selectors)


def find_ties(rule: Rule, others: Iterable[Rule]) -> list[Rule]:
    """Rules that tie with `rule`: same priority, same specificity, and one machine could match both."""
    return [
        o
        for o in others
        if o.name != rule.name
        and o.priority == rule.priority
        and o.specificity == rule.specificity
        and could_overlap(rule.selectors, o.selectors)
    ]


def check_no_ties(rule: Rule, others: Iterable[Rule]) -> None:
    ties = find_ties(rule, others)
    if ties:
        names = ", ".join(repr(t.name) for t in ties)
        raise UserError(
            f"rule {rule.name!r} ties with {names}: same priority {rule.priority}, same specificity "
            f"{rule.specificity}, and one machine could match both; change the priority or the selectors"
        )


class CompiledRules:
    """An immutable, pre-sorted rule set for the boot path. First match in (priority, specificity) order wins.

    Rules that select one MAC or UUID are also indexed, so 10,000 per-machine rules cost a dict lookup.
    """

    def __init__(self, rules: Iterable[Rule], version: int = 0):
        self.version = version
        self.rules = sorted(rules, key=lambda r: (-r.priority, -r.specificity, r.name))
        self._order = {r.name: i for i, r in enumerate(self.rules)}
        self._by_mac: dict[str, list[Rule]] = {}
        self._by_uuid: dict[str, list[Rule]] = {}
        self._by_label: dict[tuple[str, str], list[Rule]] = {}
        self._general: list[Rule] = []
        for r in self.rules:
            if "mac" in r.selectors:
                self._by_mac.setdefault(r.selectors["mac"], []).append(r)
            elif "uuid" in r.selectors:
                self._by_uuid.setdefault(r.selectors["uuid"], []).append(r)
            elif "label" in r.selectors:  # anchored on one of its labels; the rest are checked in match()
                self._by_label.setdefault(next(iter(r.selectors["label"].items())), []).append(r)
            else:
                self._general.append(r)

    def candidates(self, facts: Facts) -> list[Rule]:
        cands = list(self._general)
        if facts.mac:
            cands += self._by_mac.get(facts.mac.lower(), ())
        if facts.uuid:
            cands += self._by_uuid.get(facts.uuid.lower(), ())
        if self._by_label:
            for item in facts.labels.items():
                cands += self._by_label.get(item, ())
        cands.sort(key=lambda r: self._order[r.name])
        return cands

    def match(self, facts: Facts) -> Rule | None:
        for r in self.candidates(facts):
            if all(selector_matches(k, v, facts) for k, v in r.selectors.items()):
                return r
        return None

    def explain(self, facts: Facts) -> dict[str, Any]:
        """Every rule in evaluation order with per-selector results, and the winner."""
        winner = self.match(facts)
        return {
            "rule_set_version": self.version,
            "matched": winner.name if winner else None,
            "rules": [
                {
                    "name": r.name,
                    "priority": r.priority,
                    "specificity": r.specificity,
                    "profile": r.profile,
                    "matches": all(selector_matches(k, v, facts) for k, v in r.selectors.items()),
                    "selectors": explain_rule(r.selectors, facts),
                }
                for r in self.rules
            ],
        }


def diff_rule_sets(active: Iterable[Rule], working: Iterable[Rule]) -> dict[str, list]:
    """Added / removed / changed rules from active to working."""
    a = {r.name: r for r in active}
    w = {r.name: r for r in working}
    as_dict = lambda r: {"name": r.name, "priority": r.priority, "selectors": r.selectors, "profile": r.profile}  # noqa: E731
    return {
        "added": [as_dict(w[n]) for n in sorted(set(w) - set(a))],
        "removed": [as_dict(a[n]) for n in sorted(set(a) - set(w))],
        "changed": [
            {"name": n, "from": as_dict(a[n]), "to": as_dict(w[n])}
            for n in sorted(set(a) & set(w))
            if as_dict(a[n]) != as_dict(w[n])
        ],
    }
