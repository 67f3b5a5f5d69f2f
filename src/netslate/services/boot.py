"""Network boot: profiles, rule sets (working → active), per-site policies, boot events, explain,
and the pxelinux files. The firmware endpoints (/boot.ipxe, /boot/ipxe) are not here: they answer
iPXE in text/plain and stay in server/routers/boot.py, over the same boot engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from netslate import inventory
from netslate.boot import bootfiles, ipxe, store, tftp
from netslate.errors import UserError
from netslate.services.framework import Service, http_client, op

# ---------------------------------------------------------------- records


class Profile(BaseModel):
    name: str
    kind: str  # image | local | menu
    image: str | None
    ref: str | None  # version number or tag
    mode: str  # ram | cache
    args: list[str]
    console: str | None
    note: str
    created_at: str | None


class ProfileDetail(Profile):
    used_by: list[str]  # "working:NAME" / "active:NAME" rules naming it


class ProfileRequest(BaseModel):
    name: str
    kind: str = "image"
    image: str | None = None
    ref: str | None = None
    mode: str = "ram"
    args: list[str] = []
    console: str | None = None
    note: str = ""
    replace: bool = False


class RuleRecord(BaseModel):
    name: str
    priority: int
    specificity: int
    selectors: dict[str, Any]
    profile: str


class RuleSet(BaseModel):
    ruleset: str  # working | active
    active_version: int
    activated_at: str | None
    activated_by: str | None
    rules: list[RuleRecord]  # in evaluation order


class RuleRequest(BaseModel):
    name: str
    profile: str
    priority: int = 0
    selectors: dict[str, Any] = {}
    replace: bool = False


class RuleSpec(BaseModel):
    name: str
    priority: int
    selectors: dict[str, Any]
    profile: str


class RuleChange(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    name: str
    from_: RuleSpec = Field(alias="from")
    to: RuleSpec


class RuleDiff(BaseModel):
    added: list[RuleSpec]
    removed: list[RuleSpec]
    changed: list[RuleChange]


class RuleSetDiff(RuleDiff):
    active_version: int
    changed_count: int


class Activation(BaseModel):
    active_version: int
    rules: int
    diff: RuleDiff


class Policy(BaseModel):
    site: str
    policy: str  # boot-default | hold
    retry_seconds: int
    default_profile: str | None


class PolicyRequest(BaseModel):
    site: str = store.DEFAULT_SITE
    policy: str
    retry_seconds: int | None = None
    default_profile: str | None = None  # "" clears it


class BootEventRecord(BaseModel):
    id: int
    at: str | None
    machine: int | None
    mac: str | None
    kind: str  # image | local | menu | hold | wait
    rule: str | None
    profile: str | None
    image: str | None
    version: int | None
    pinned: bool
    remote: str | None
    detail: str


class MachineFacts(BaseModel):
    mac: str | None
    uuid: str | None
    serial: str | None
    manufacturer: str | None
    product: str | None
    arch: str | None
    platform: str | None
    labels: dict[str, str]
    group: str


class SelectorCheck(BaseModel):
    selector: str
    want: Any
    have: Any
    match: bool


class RuleCheck(BaseModel):
    name: str
    priority: int
    specificity: int
    profile: str
    matches: bool
    selectors: list[SelectorCheck]


class RuleEvaluation(BaseModel):
    rule_set_version: int
    matched: str | None
    rules: list[RuleCheck]


class PinRef(BaseModel):
    image: str
    version: int


class BootPathUsed(BaseModel):
    path: str | None  # ipxe-bios | ipxe-uefi | ipxe-rom | pxelinux | grub; None: no boot seen
    label: str
    first_file: str | None  # the option-67 file it fetched over TFTP
    tftp_files: list[str]  # its last TFTP transfers, oldest first
    last_script_at: str | None  # its last boot script request (iPXE), if any


class BootPathNext(BaseModel):
    path: str | None  # the firmware and the DHCP server pick the path: the same as last time
    label: str
    file: str | None  # pxelinux/GRUB: the per-machine file it will read (or pxelinux.cfg/default)
    boots: str  # image@version, local, menu, or the iPXE decision (kind image@version)


class BootPath(BaseModel):
    last: BootPathUsed
    next: BootPathNext


class BootExplanation(BaseModel):
    machine: int | None
    known: bool
    facts: MachineFacts
    site: str
    policy: Policy
    rules: RuleEvaluation  # every active rule in evaluation order
    pin: PinRef | None
    reason: str
    kind: str
    rule: str | None
    profile: str | None
    image: str | None
    version: int | None
    pinned: bool
    script: str
    boot_path: BootPath | None = None  # which path (iPXE BIOS/UEFI, pxelinux, GRUB) it used last and will use next


# ---------------------------------------------------------------- contract


class BootService(Service):
    noun = "boot"

    @op("GET", "/api/v1/boot/profiles")
    def list_profiles(self) -> list[Profile]:
        """List boot profiles."""
        raise NotImplementedError

    @op("GET", "/api/v1/boot/profiles/{name}")
    def show_profile(self, name: str) -> ProfileDetail:
        """One profile and the rules that use it."""
        raise NotImplementedError

    @op("POST", "/api/v1/boot/profiles", role="operator", status=201)
    def add_profile(self, request: ProfileRequest) -> Profile:
        """Add (or with replace, change) a boot profile."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/boot/profiles/{name}", role="operator", status=204)
    def remove_profile(self, name: str) -> None:
        """Remove a profile (refused while a rule or a policy uses it)."""
        raise NotImplementedError

    @op("GET", "/api/v1/boot/rules")
    def list_rules(self, ruleset: str = "working") -> RuleSet:
        """The working or active rule set, in evaluation order."""
        raise NotImplementedError

    @op("POST", "/api/v1/boot/rules", role="operator", status=201)
    def add_rule(self, request: RuleRequest) -> RuleRecord:
        """Add a rule to the working set (a tie with another rule is refused)."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/boot/rules/{name}", role="operator", status=204)
    def remove_rule(self, name: str) -> None:
        """Remove a rule from the working set."""
        raise NotImplementedError

    @op("GET", "/api/v1/boot/rules/diff")
    def diff_rules(self) -> RuleSetDiff:
        """What activation would change: active → working."""
        raise NotImplementedError

    @op("POST", "/api/v1/boot/rules/activate", role="operator")
    def activate_rules(self) -> Activation:
        """Make the working set active, atomically (recorded in the audit log)."""
        raise NotImplementedError

    @op("GET", "/api/v1/boot/policies")
    def list_policies(self) -> list[Policy]:
        """Per-site policies for machines nobody approved yet."""
        raise NotImplementedError

    @op("PUT", "/api/v1/boot/policies", role="operator")
    def set_policy(self, request: PolicyRequest) -> Policy:
        """Set a site's policy."""
        raise NotImplementedError

    @op("GET", "/api/v1/boot/events")
    def events(self, limit: int = 100, machine: str | None = None) -> list[BootEventRecord]:
        """Boot scripts served, newest first."""
        raise NotImplementedError

    @op("GET", "/api/v1/boot/explain/{ident}")
    def explain(self, ident: str, arch: str | None = None, platform: str | None = None, address: str | None = None,
                base_url: str | None = None) -> BootExplanation:
        """Which rule matches a machine (MAC or UUID) and why, and the script it would be served.
        `base_url` is the server URL put in the script (default: the first advertised address)."""
        raise NotImplementedError

    @op("GET", "/api/v1/boot/pxelinux")
    def pxelinux(self, base_url: str | None = None) -> dict[str, str]:
        """The pxelinux.cfg files for the TFTP root: {path: contents}."""
        raise NotImplementedError

    @op("GET", "/api/v1/boot/files")
    def files(self) -> BootFiles:
        """What the TFTP root serves (the server's, or DATA/tftp) and what each file is for."""
        raise NotImplementedError

    @op("GET", "/api/v1/boot/site-loader")
    def site_loader(self, servers: str, attempts: int = 6) -> SiteLoader:
        """A site's own loop-free first stage (`sites.ipxe`, docs/sites.md): an iPXE script that
        tries each boot server in order (comma-separated base URLs, e.g. the branch's then
        central's) every round, for `attempts` rounds. The site's DHCP/TFTP serves it to iPXE."""
        raise NotImplementedError


class BootFileRecord(BaseModel):
    path: str  # under the TFTP root; <mac>/<uuid> rows are patterns
    package: str  # the Debian package it is copied from, or "netslate" (written by netslate)
    firmware: str  # bios | uefi | uefi-secureboot | any
    purpose: str
    option67: bool  # a name to give as DHCP option 67
    loops_with_plain_dhcp: bool  # re-chains itself behind a DHCP server that names one file for all
    source: str | None
    present: bool
    size: int | None
    sha256: str | None


class BootFiles(BaseModel):
    root: str
    files: list[BootFileRecord]
    per_machine: list[str]  # the pxelinux.cfg/01-<mac> and <uuid> files there now


class SiteLoader(BaseModel):
    servers: list[str]  # base URLs, in the order tried
    attempts: int
    script: str


class LocalBoot(BootService):
    @property
    def ctx(self):
        return self.parts.ctx

    def list_profiles(self) -> list[Profile]:
        return [Profile(**p) for p in store.list_profiles(self.ctx)]

    def show_profile(self, name: str) -> ProfileDetail:
        return ProfileDetail(**store.show_profile(self.ctx, name))

    def add_profile(self, request: ProfileRequest) -> Profile:
        r = request
        return Profile(**store.add_profile(self.ctx, r.name, r.kind, r.image, r.ref, r.mode, r.args, r.console, r.note,
                                           actor=self.actor, replace=r.replace))

    def remove_profile(self, name: str) -> None:
        store.remove_profile(self.ctx, name, actor=self.actor)

    def list_rules(self, ruleset: str = "working") -> RuleSet:
        return RuleSet(**store.list_rules(self.ctx, ruleset))

    def add_rule(self, request: RuleRequest) -> RuleRecord:
        r = request
        return RuleRecord(**store.add_rule(self.ctx, r.name, r.selectors, r.profile, r.priority, actor=self.actor, replace=r.replace))

    def remove_rule(self, name: str) -> None:
        store.remove_rule(self.ctx, name, actor=self.actor)

    def diff_rules(self) -> RuleSetDiff:
        return RuleSetDiff(**store.diff_rules(self.ctx))

    def activate_rules(self) -> Activation:
        return Activation(**store.activate_rules(self.ctx, actor=self.actor))

    def list_policies(self) -> list[Policy]:
        return [Policy(**p) for p in store.list_policies(self.ctx)]

    def set_policy(self, request: PolicyRequest) -> Policy:
        r = request
        return Policy(**store.set_policy(self.ctx, r.policy, r.site, r.retry_seconds, r.default_profile, actor=self.actor))

    def events(self, limit: int = 100, machine: str | None = None) -> list[BootEventRecord]:
        self.parts.boot_engine.events.flush(5)  # what this process served so far is listed too
        return [BootEventRecord(**e) for e in store.list_events(self.ctx, limit, machine)]

    def explain(self, ident: str, arch: str | None = None, platform: str | None = None, address: str | None = None,
                base_url: str | None = None) -> BootExplanation:
        engine = self.parts.boot_engine
        out = engine.explain(ident, _base_url(base_url) or engine.default_base(), arch, platform, address)
        out["boot_path"] = self._boot_path(ident, out)
        return BootExplanation(**out)

    def _boot_path(self, ident: str, ex: dict) -> BootPath:
        """Last path: the machine's TFTP transfers in dnsmasq's log and its last boot script request;
        next: the same path (chosen by firmware + DHCP), with what it will boot."""
        engine = self.parts.boot_engine
        engine.events.flush(5)
        facts = ex.get("facts") or {}
        macs = [m for m in [facts.get("mac")] if m and m != "00:00:00:00:00:00"]
        if ex.get("machine") is not None:
            macs = list(dict.fromkeys(macs + list(inventory.show_machine(self.ctx, f"id:{ex['machine']}").get("macs") or [])))
        events = store.list_events(self.ctx, 50, f"id:{ex['machine']}") if ex.get("machine") is not None else \
            [e for e in store.list_events(self.ctx, 500) if e.get("mac") in macs]
        last_event = events[0] if events else None
        root = Path(self.parts.options.get("tftp_root") or (self.ctx.data_dir / "tftp"))
        sent = tftp.sent_files(self.ctx.data_dir / "dnsmasq" / "dnsmasq.log", root)
        ips = {e["remote"] for e in events[:5] if e.get("remote")}
        files = bootfiles.machine_files(sent, macs, facts.get("uuid"), ips)
        last = bootfiles.boot_path(files, last_event)
        nxt = {"path": last["path"], "label": last["label"], "file": None}
        mf = tftp.machine_file(root, last["path"], macs, facts.get("uuid"))
        if last["path"] in ("pxelinux", "grub"):
            nxt["file"] = mf["file"] if mf else None
            nxt["boots"] = ("menu" if mf and mf["file"].endswith("/default") else "local" if mf and mf["local"]
                            else mf["image"] if mf else "nothing: no file for this machine")
        else:
            ver = f"{ex['image']}@{ex['version']}" if ex.get("image") else ""
            nxt["boots"] = f"{ex['kind']} {ver}".strip()
        return BootPath(last=BootPathUsed(**last, last_script_at=last_event["at"] if last_event else None),
                        next=BootPathNext(**nxt))

    def pxelinux(self, base_url: str | None = None) -> dict[str, str]:
        engine = self.parts.boot_engine
        return engine.pxelinux_files(_base_url(base_url) or engine.default_base())

    def files(self) -> BootFiles:
        root = self.parts.options.get("tftp_root") or (self.ctx.data_dir / "tftp")
        return BootFiles(**tftp.listing(Path(root)))

    def site_loader(self, servers: str, attempts: int = 6) -> SiteLoader:
        if not servers.strip():
            raise UserError("servers: give at least one boot server URL (http[s]://HOST[:PORT])")
        urls = []
        for u in servers.split(","):
            url = _base_url(u.strip(), "servers")
            if url is None:
                raise UserError("servers: an empty entry (want http[s]://HOST[:PORT], comma-separated)")
            urls.append(url)
        if len(set(urls)) != len(urls):
            raise UserError("servers: a URL is listed twice")
        try:
            script = bootfiles.loader_script(None, attempts=attempts, servers=urls)
        except ipxe.UnsafeValue as exc:
            raise UserError(f"attempts: {exc} (want 1 to 50)") from None
        return SiteLoader(servers=urls, attempts=attempts, script=script)


def _base_url(value: str | None, label: str = "base_url") -> str | None:
    """A caller's base URL for scripts: refused in one line (400) when a script could not carry it."""
    if not value:
        return None
    try:
        return ipxe.base_url(value)
    except ipxe.UnsafeValue as exc:
        raise UserError(f"{label}: {exc} (want http[s]://HOST[:PORT] in plain characters)") from None


class HttpBoot(http_client(BootService)):
    """Over --server, scripts use the URL this client reached the server by, unless told otherwise
    (the server itself only knows its advertised addresses)."""

    def explain(self, ident: str, arch: str | None = None, platform: str | None = None, address: str | None = None,
                base_url: str | None = None) -> BootExplanation:
        return super().explain(ident, arch, platform, address, base_url or self.api.base_url)

    def pxelinux(self, base_url: str | None = None) -> dict[str, str]:
        return super().pxelinux(base_url or self.api.base_url)


HTTP_CLASS = "HttpBoot"
