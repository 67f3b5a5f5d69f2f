"""The boot engine: one per process. It keeps the decision inputs in memory and wires the reads,
the decision and the event writer together for every caller (boot scripts, explain, pxelinux files,
the signed bundles' image pins).

Hot path per request: one cheap fingerprint query + one indexed machine lookup (queries.py). Rules,
profiles, pins, policies and image resolutions live in an in-memory `BootSnapshot` rebuilt only when the
fingerprint moves. Boot events and last-seen updates go to a background writer (events.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from netslate import inventory
from netslate import inventory
from netslate.boot import ipxe
from netslate.boot.decide import Decision, ScriptSettings, BootSnapshot, Target, assignment, decide, pxelinux_entry, pxelinux_menu
from netslate.boot.discovery_limits import DiscoveryLimiter, discovery_limits
from netslate.boot.events import EventWriter
from netslate.boot.pxelinux import mac_filename, render_machine, uuid_filename
from netslate.boot.queries import BootReader, machine_row
from netslate.boot.request import check_field, parse_ident
from netslate.discovery.core import parse_address
from netslate.errors import NotFound, UserError
from netslate.store import outbox

log = logging.getLogger("netslate.boot")

DECISION_CACHE_MAX = 50_000
# A server URL for scripts rendered outside a request (local `explain`/`pxelinux` without --base-url).
DEFAULT_BASE_URL = "http://localhost:8080"
_MISS = object()


def advertised_urls(options: dict) -> list[str]:
    """Base URLs for netslate.server=: `advertise` entries are URLs or bare addresses (as discovery takes
    them, served on the listen port). Unusable entries are logged and skipped, never put in a script."""
    port = (options.get("listen") or (None, 8080))[1]
    out = []
    for a in options.get("advertise") or []:
        a = str(a).strip()
        candidate = a if a.startswith(("http://", "https://")) else f"http://{'[' + a + ']' if ':' in a else a}:{port}"
        try:
            url = ipxe.base_url(candidate)
        except ipxe.UnsafeValue:
            log.warning("ignoring advertised address %r for boot scripts", a[:80])
            continue
        if url not in out:
            out.append(url)
    return out


class BootEngine:
    def __init__(self, ctx, options: dict | None = None):
        self.ctx = ctx
        options = options or {}
        self.advertise = advertised_urls(options)
        self.retry = ipxe.Retry(
            attempts=int(options.get("boot_retry_attempts", 6)), delay=int(options.get("boot_retry_delay", 2))
        ).check()
        tls = options.get("tls") or {}
        self.settings = ScriptSettings(tuple(self.advertise), self.retry, ctx.signing_key.public_b64,
                                       tls_port=(tls.get("listen") or [None, None])[1], tls_pin=tls.get("pin"))
        self.reader = BootReader(ctx)
        self.events = EventWriter(ctx)
        self.discovery = DiscoveryLimiter(lambda: inventory.count_pending(ctx), discovery_limits(options))
        self._snap: BootSnapshot | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ cache

    def snapshot(self) -> BootSnapshot:
        return self._snapshot_for(self.reader.fingerprint())

    def _snapshot_for(self, fp: tuple) -> BootSnapshot:
        snap = self._snap
        if snap is not None and snap.fingerprint == fp:
            return snap
        with self._lock:
            if self._snap is None or self._snap.fingerprint != fp:
                rules, profiles, pins, policies = self.reader.boot_tables()
                self._snap = BootSnapshot(fp, rules, profiles, pins, policies, self._resolve, self._list_versions,
                                      subnets=self.reader.subnets())
            return self._snap

    def _resolve(self, name: str, ref: str) -> Target:
        try:
            r = self.ctx.library.resolve(name, ref)
        except NotFound as exc:
            return Target(name, error=str(exc))
        if "kernel" not in r.artifacts:
            return Target(name, r.version, r.manifest_digest, error=f"{name}@{r.version} has no kernel")
        return Target(name, r.version, r.manifest_digest, has_initrd="initrd" in r.artifacts)

    def _list_versions(self, name: str) -> list[dict]:
        try:
            return list(reversed(self.ctx.library.list_versions(name)))
        except NotFound:
            return []

    def site_of_address(self, snap: BootSnapshot, remote: str | None) -> str | None:
        if snap.subnets is None or not remote:
            return None
        try:
            return snap.subnets.site_for(parse_address(remote))
        except Exception:
            return None

    # ------------------------------------------------------------ URLs

    def base_for(self, host: str | None, scheme: str = "http") -> str:
        """The base URL the machine reached us by (Host header), else the first advertised one."""
        if host:
            try:
                return ipxe.base_url(f"{scheme}://{host}")
            except ipxe.UnsafeValue:
                pass
        if self.advertise:
            return self.advertise[0]
        raise UserError("no usable Host header and no advertised server address")

    def default_base(self) -> str:
        """The server URL for scripts rendered outside a boot request: the first advertised one."""
        return self.advertise[0] if self.advertise else DEFAULT_BASE_URL

    def servers(self, base: str) -> list[str]:
        return self.settings.servers(base)

    # ------------------------------------------------------------ serving

    def serve(self, q: dict, host: str | None, remote: str | None, scheme: str = "http", may_write: bool = True) -> Decision | None:
        """Answer one /boot/ipxe request (q already validated by request.parse_boot_query).

        With may_write=False (the event loop's fast path) it returns None when the request needs a
        database write first (a new machine, new facts); the caller then retries in a thread."""
        base = self.base_for(host, scheme)
        fp, m = self.reader.fingerprint_and_machine(q["mac"], q.get("uuid"))
        if m is None or (m.uuid is None and q.get("uuid")):
            if not may_write:
                return None
            if m is None:
                if self.discovery.allow(remote):  # per-source rate and pending cap (issue 11 #11)
                    outbox.submit(self.ctx, "inventory.discover", {"facts": dict(q), "remote": remote})
            else:
                self._fill_facts(m.id, q)
            fp, m = self.reader.fingerprint_and_machine(q["mac"], q.get("uuid"))
        snap = self._snapshot_for(fp)
        site_hint = self.site_of_address(snap, remote)
        if m is not None and m.key is not None:
            ck = (base, q["mac"], q.get("uuid"), q.get("serial"), q.get("manufacturer"), q.get("product"),
                  q.get("arch"), q.get("platform"), site_hint, m.key)
            d = snap.decisions.get(ck)
            if d is None:
                d = decide(self.settings, snap, m, q, base, site_hint=site_hint)
                if len(snap.decisions) >= DECISION_CACHE_MAX:
                    snap.decisions.clear()
                snap.decisions[ck] = d
        else:
            d = decide(self.settings, snap, m, q, base, site_hint=site_hint)
        self.events.put({
            "at": dt.datetime.utcnow(), "machine_id": m.id if m else None, "mac": q["mac"], "kind": d.kind,
            "rule": d.rule, "profile": d.profile, "image": d.image, "version": d.version, "pinned": d.pinned,
            "remote": (remote or "")[:64] or None, "detail": d.detail[:500],
        })
        return d

    def _fill_facts(self, machine_id: int, q: dict) -> None:
        """A known machine reports SMBIOS facts we lack (added by MAC only): keep them."""
        try:
            outbox.submit(self.ctx, "inventory.facts", {"machine_id": machine_id, "facts": dict(q)})
        except Exception as exc:  # e.g. the UUID belongs to another machine: keep booting, say so
            log.warning("could not record facts for machine %s: %s", machine_id, exc)

    # ------------------------------------------------------------ assignment (signed bundles)

    def assignment(self, machine_id: int) -> dict | None:
        """The image version the boot side assigns this known machine now, as the signed config bundle
        carries it (`image_pin`): {"name", "version", "digest", "source"}, source being "boot pin",
        "boot rule NAME" or "site default profile". None for an unknown machine or a decision that is
        not one image version (local disk, menu, wait, hold).

        The same decide() as a boot request from the machine's first MAC (sorted), with its inventory
        facts, no arch/platform, and its last known address as the site hint. A tag in a profile's ref
        is resolved to its version now. Answers are cached on the snapshot, keyed on the raw machine
        row, so they last until a rule, profile, pin, policy, tag or version changes (or the machine)."""
        fp, row = self.reader.assignment_row(machine_id)
        snap = self._snapshot_for(fp)
        if row is None:
            return None
        hit = snap.assignments.get(row, _MISS)
        if hit is _MISS:
            hit = assignment(self.settings, snap, machine_row(row), row[10], self.site_of_address(snap, row[9]))
            if len(snap.assignments) >= DECISION_CACHE_MAX:
                snap.assignments.clear()
            snap.assignments[row] = hit
        return dict(hit) if hit is not None else None

    # ------------------------------------------------------------ explain

    def explain(self, ident: str, base: str, arch: str | None = None, platform: str | None = None,
                address: str | None = None) -> dict:
        """Which rule matches the machine (by MAC or UUID, known or not), why, and the script it would get."""
        mac, uuid = parse_ident(ident)
        q = {"mac": mac, "uuid": uuid, "serial": None, "manufacturer": None, "product": None,
             "arch": check_field("arch", arch) if arch else None,
             "platform": check_field("platform", platform) if platform else None}
        snap = self.snapshot()
        m = self.reader.machine(mac, uuid)
        if m is not None and mac is None:
            q["mac"] = self.reader.first_mac(m.id)
        q["mac"] = q["mac"] or "00:00:00:00:00:00"
        d = decide(self.settings, snap, m, q, ipxe.base_url(base), with_explain=True,
                   site_hint=self.site_of_address(snap, address))
        out = dict(d.explain or {})
        out.update({"known": m is not None, "kind": d.kind, "rule": d.rule, "profile": d.profile, "image": d.image,
                    "version": d.version, "pinned": d.pinned, "script": d.script})
        return out

    # ------------------------------------------------------------ pxelinux (legacy clients)

    def pxelinux_files(self, base: str) -> dict[str, str]:
        """{path under the TFTP root: contents} for every machine the rules send to an image or the local
        disk (by MAC and by UUID), plus `pxelinux.cfg/default`: a menu of every image profile + local disk.
        Held or unmatched machines get no file of their own, so they land on the default menu."""
        base = ipxe.base_url(base)
        snap = self.snapshot()
        files: dict[str, str] = {}
        for m, macs in self.reader.machines_with_macs():
            for mac in macs:
                q = {"mac": mac, "uuid": m.uuid, "arch": "i386", "platform": "pcbios"}
                entry = pxelinux_entry(self.settings, snap, decide(self.settings, snap, m, q, base), base)
                if entry is None:
                    continue
                text = render_machine(entry)
                files[f"pxelinux.cfg/{mac_filename(mac)}"] = text
                if m.uuid:
                    files[f"pxelinux.cfg/{uuid_filename(m.uuid)}"] = text
        files["pxelinux.cfg/default"] = pxelinux_menu(self.settings, snap, base)
        return files


def pxelinux_files(engine: BootEngine, base: str) -> dict[str, str]:
    """The TFTP root's pxelinux.cfg files (see BootEngine.pxelinux_files)."""
    return engine.pxelinux_files(base)
