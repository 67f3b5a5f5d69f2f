"""The boot decision: which script a machine gets, and why (pure, given a snapshot).

Order: site policy (hold an unapproved machine?) → pin → the active rules' best match → its profile
(or the site's default profile) → the image version (a tag resolved through the snapshot) → the
iPXE script. With `with_explain`, every step is recorded for `netslate boot explain`.

The snapshot carries everything a decision reads: compiled rules, profiles, pins, policies, site
subnets, and two resolvers (image ref → version, image → versions) whose answers it caches; the
engine (engine.py) builds it from the database (queries.py) and the image library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from netslate.boot import ipxe, pxelinux
from netslate.boot.rules import CompiledRules, Facts

DEFAULT_SITE = "default"
DEFAULT_POLICY = {"site": DEFAULT_SITE, "policy": "boot-default", "retry_seconds": 30, "default_profile": None}
MENU_MAX_VERSIONS = 20
# A version that cannot be served (missing, no kernel) gets a screen that asks again this often.
TARGET_RETRY_SECONDS = 30


@dataclass
class MachineRow:
    """The inventory facts a decision reads about one machine."""

    id: int
    uuid: str | None
    serial: str | None
    manufacturer: str | None
    product: str | None
    labels: dict
    approved: bool
    group: str
    state: str
    key: tuple | None = None  # the raw row, for the decision cache


@dataclass
class Target:
    """A resolved image version, or why it cannot be served."""

    name: str
    version: int = 0
    digest: str = ""
    has_initrd: bool = False
    error: str | None = None


@dataclass
class BootSnapshot:
    fingerprint: tuple
    rules: CompiledRules
    profiles: dict[str, dict]
    pins: dict[int, tuple[str, int]]
    policies: dict[str, dict]
    resolve: Callable[[str, str], Target]  # (image, version or tag) → Target
    list_versions: Callable[[str], list[dict]]  # image → its versions, newest first
    subnets: Any = None  # discovery's SubnetMap (client address → site), if discovery has subnets
    targets: dict[tuple[str, str], Target] = field(default_factory=dict)
    menus: dict[str, list[dict]] = field(default_factory=dict)
    # Rendered decisions keyed on everything decide() reads: request facts + the raw machine row.
    decisions: dict[tuple, "Decision"] = field(default_factory=dict)
    # assignment answers keyed on the raw machine row (+ first MAC, address): image pin or None.
    assignments: dict[tuple, dict | None] = field(default_factory=dict)

    def target(self, name: str, ref: str) -> Target:
        key = (name, str(ref))
        t = self.targets.get(key)
        if t is None:
            t = self.targets[key] = self.resolve(name, str(ref))
        return t

    def versions(self, name: str) -> list[dict]:
        v = self.menus.get(name)
        if v is None:
            v = self.menus[name] = self.list_versions(name)[:MENU_MAX_VERSIONS]
        return v


@dataclass
class Decision:
    kind: str  # image | local | menu | hold | wait
    script: str
    rule: str | None = None
    profile: str | None = None
    image: str | None = None
    version: int | None = None
    pinned: bool = False
    detail: str = ""
    explain: dict | None = None


@dataclass(frozen=True)
class ScriptSettings:
    """What every script of this server shares: advertised URLs, retry policy, the signing key."""

    advertise: tuple[str, ...]
    retry: ipxe.Retry
    public_key: str  # netslate.key=: the server key pinned at boot
    tls_port: int | None = None  # the server also answers HTTPS here (serve --tls-listen)
    tls_pin: str | None = None  # netslate.pin=: sha256 of its certificate, pinned at boot

    def servers(self, base: str) -> list[str]:
        """netslate.server=: with TLS, the same hosts over https on the TLS port (iPXE itself keeps
        fetching the kernel and initramfs over plain HTTP from `base`)."""
        urls = list(self.advertise) or [base]
        if self.tls_port and self.tls_pin:
            urls = list(dict.fromkeys(_https(u, self.tls_port) for u in urls))
        return urls


def _https(url: str, port: int) -> str:
    """http://HOST[:PORT] → https://HOST:TLS_PORT (an https URL stays as it is)."""
    scheme, _, rest = url.partition("://")
    if scheme == "https":
        return url
    host = rest.rsplit(":", 1)[0] if not rest.endswith("]") and ":" in rest else rest
    return f"https://{host}:{port}"


def request_facts(q: dict, m: MachineRow | None) -> Facts:
    return Facts(
        mac=q.get("mac"),
        uuid=q.get("uuid") or (m.uuid if m else None),
        serial=q.get("serial") or (m.serial if m else None),
        manufacturer=q.get("manufacturer") or (m.manufacturer if m else None),
        product=q.get("product") or (m.product if m else None),
        arch=q.get("arch"),
        platform=q.get("platform"),
        labels=dict(m.labels or {}) if m else {},
        group=(m.group if m else "/") or "/",
    )


def decide(cfg: ScriptSettings, snap: BootSnapshot, m: MachineRow | None, q: dict, base: str, with_explain: bool = False,
           site_hint: str | None = None) -> Decision:
    """site: the machine's `site` label, else the site of its address (discovery subnets), else default."""
    facts = request_facts(q, m)
    site = ((m.labels or {}).get("site") if m else None) or site_hint or DEFAULT_SITE
    policy = snap.policies.get(site) or snap.policies.get(DEFAULT_SITE) or DEFAULT_POLICY
    who = f"machine {m.id}" if m else "unknown machine"
    comments = [f"netslate boot script for {who} (mac {facts.mac})"]
    explain: dict[str, Any] | None = None
    if with_explain:
        explain = {"machine": m.id if m else None, "facts": facts.__dict__, "site": site, "policy": policy,
                   "rules": snap.rules.explain(facts), "pin": None}

    def finish(d: Decision) -> Decision:
        d.explain = explain
        return d

    if not (m and m.approved) and policy["policy"] == "hold":
        msg = [f"this machine ({who}, mac {facts.mac}) is waiting for approval"]
        if m:
            msg.append(f"approve it with: netslate machine approve {m.id}")
        script = ipxe.wait_script(base, msg, int(policy["retry_seconds"]), comments)
        if explain is not None:
            explain["reason"] = f"not approved; held by the hold policy of site {site}"
        return finish(Decision("hold", script, detail=f"held by site {site} policy"))

    rule = snap.rules.match(facts)
    profile = snap.profiles.get(rule.profile) if rule else None
    why = f"rule {rule.name}" if rule else "no rule matched"
    if profile is None and not rule and policy.get("default_profile"):
        profile = snap.profiles.get(policy["default_profile"])
        why = f"no rule matched, default profile of site {site}"
    pin = snap.pins.get(m.id) if m else None
    if explain is not None:
        explain["pin"] = {"image": pin[0], "version": pin[1]} if pin else None
        explain["reason"] = why + (f"; pinned to {pin[0]}@{pin[1]}" if pin else "")
    rname, pname = (rule.name if rule else None), (profile["name"] if profile else None)
    comments.append(f"{why}, profile {pname or '-'}")

    if pin:
        t = snap.target(pin[0], str(pin[1]))
        base_profile = profile if profile and profile["kind"] == "image" else {"mode": "ram", "args": [], "console": None}
        return finish(_image_decision(cfg, t, base_profile, base, facts, comments, rname, pname, pinned=True))
    if profile is None:
        msg = [f"no boot rule matches this machine ({who}, mac {facts.mac})"]
        script = ipxe.wait_script(base, msg, int(policy["retry_seconds"]), comments)
        return finish(Decision("wait", script, rule=rname, detail="no rule matched"))
    if profile["kind"] == "local":
        return finish(Decision("local", ipxe.local_script(comments, facts.platform), rule=rname, profile=pname))
    if profile["kind"] == "menu":
        return finish(_menu_decision(cfg, snap, profile, base, facts, comments, rname))
    t = snap.target(profile["image"], profile["ref"])
    return finish(_image_decision(cfg, t, profile, base, facts, comments, rname, pname))


def kernel_args(cfg: ScriptSettings, t: Target, profile: dict, base: str) -> tuple[str, ...]:
    args = [
        "netslate.server=" + ",".join(cfg.servers(base)),
        f"netslate.image={t.name}@{t.version}",
        f"netslate.manifest={t.digest}",
        f"netslate.mode={profile.get('mode') or 'ram'}",
        # The server key pinned at boot: the initramfs and the agent verify signed data against it.
        f"netslate.key={cfg.public_key}",
    ]
    if cfg.tls_port and cfg.tls_pin:
        # The TLS certificate pinned at boot: the initramfs and the agent refuse any other.
        args.append(f"netslate.pin={cfg.tls_pin}")
    if profile.get("console"):
        args.append(f"console={profile['console']}")
    return tuple(args + list(profile.get("args") or []))


def image_boot(cfg: ScriptSettings, t: Target, profile: dict, base: str) -> ipxe.ImageBoot:
    return ipxe.ImageBoot(
        kernel_url=f"{base}/images/{t.name}/{t.version}/kernel",
        initrd_url=f"{base}/images/{t.name}/{t.version}/initrd" if t.has_initrd else None,
        args=kernel_args(cfg, t, profile, base),
        title=f"{t.name}@{t.version}",
    )


def _image_decision(cfg: ScriptSettings, t: Target, profile: dict, base: str, facts: Facts, comments: list[str],
                    rname: str | None, pname: str | None, pinned: bool = False) -> Decision:
    if t.error:
        script = ipxe.wait_script(base, [f"cannot boot: {safe_text(t.error)}"], TARGET_RETRY_SECONDS, comments)
        return Decision("wait", script, rule=rname, profile=pname, image=t.name, pinned=pinned, detail=t.error)
    comments = comments + [f"image {t.name}@{t.version}" + (" (pinned)" if pinned else "")]
    script = ipxe.boot_script(image_boot(cfg, t, profile, base), comments, cfg.retry, ipxe.jitter(facts.mac or ""),
                              local_fallback=profile.get("mode") == "cache", platform=facts.platform)
    return Decision("image", script, rule=rname, profile=pname, image=t.name, version=t.version, pinned=pinned)


def _menu_decision(cfg: ScriptSettings, snap: BootSnapshot, profile: dict, base: str, facts: Facts, comments: list[str],
                   rname: str | None) -> Decision:
    name = profile["image"]
    entries = []
    for v in snap.versions(name):
        t = snap.target(name, str(v["version"]))
        if t.error:
            continue
        created = str(v.get("created_at") or "")[:10]
        entries.append(ipxe.MenuEntry(t.version, tuple(sorted(v.get("tags") or [])), created, image_boot(cfg, t, profile, base)))
    default = None
    tag = None
    if profile.get("ref"):
        t = snap.target(name, profile["ref"])
        if not t.error:
            default = t.version
            tag = None if str(profile["ref"]).isdigit() else profile["ref"]
    if default is None and entries:
        default = entries[0].version
    menu = ipxe.Menu(name, tuple(entries), default, tag, comments=tuple(comments))
    return Decision("menu", ipxe.menu_script(menu, cfg.retry, ipxe.jitter(facts.mac or "")), rule=rname,
                    profile=profile["name"], image=name, version=default)


# decide() renders a script; an assignment only keeps the image and version, so any valid base will do.
ASSIGN_BASE = "http://netslate.invalid"


def assignment(cfg: ScriptSettings, snap: BootSnapshot, m: MachineRow, first_mac: str | None, site_hint: str | None) -> dict | None:
    """The image version a known machine's boot from its first MAC would get, as the signed config
    bundle carries it (`image_pin`), or None when that boot is not one image version."""
    q = {"mac": first_mac, "uuid": None, "serial": None, "manufacturer": None, "product": None,
         "arch": None, "platform": None}  # uuid/serial/…: decide() takes them from the machine row
    d = decide(cfg, snap, m, q, ASSIGN_BASE, site_hint=site_hint)
    if d.kind != "image" or d.image is None or d.version is None:
        return None
    t = snap.target(d.image, str(d.version))
    if t.error:
        return None
    source = "boot pin" if d.pinned else f"boot rule {d.rule}" if d.rule else "site default profile"
    return {"name": d.image, "version": int(d.version), "digest": t.digest, "source": source}


def pxelinux_entry(cfg: ScriptSettings, snap: BootSnapshot, d: Decision, base: str, label: str = "netslate") -> pxelinux.PxeEntry | None:
    """The pxelinux.cfg entry of a decision: its image, the local disk, or None (held, unmatched, menu)."""
    if d.kind == "local":
        return pxelinux.LOCAL
    if d.kind != "image" or d.version is None or d.image is None:
        return None
    t = snap.target(d.image, str(d.version))
    prof = snap.profiles.get(d.profile or "") or {}
    boot = image_boot(cfg, t, prof if prof.get("kind") == "image" else {"mode": "ram"}, base)
    return pxelinux.PxeEntry(label, boot.title, boot.kernel_url, boot.initrd_url, boot.args)


def pxelinux_menu(cfg: ScriptSettings, snap: BootSnapshot, base: str) -> str:
    """`pxelinux.cfg/default`: every image profile that resolves, plus the local disk (the default)."""
    entries = []
    for name in sorted(snap.profiles):
        p = snap.profiles[name]
        if p["kind"] != "image":
            continue
        t = snap.target(p["image"], p["ref"])
        if t.error:
            continue
        b = image_boot(cfg, t, p, base)
        entries.append(pxelinux.PxeEntry("p_" + "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:38],
                                         f"{name}: {b.title}", b.kernel_url, b.initrd_url, b.args))
    return pxelinux.render_menu(entries, default="local")


def safe_text(s: str) -> str:
    return "".join(c if ipxe.TEXT_RE.match(c) else "_" for c in s)[:150]
