"""The boot path: who is this machine, which rule and profile apply, and which script to serve.

Hot path per request: one cheap fingerprint query + one indexed machine lookup. Rules, profiles,
pins, policies and image resolutions live in an in-memory `Snapshot` rebuilt only when the
fingerprint moves (boot_state.generation, or the image library's versions/tags). Boot events and
last-seen updates go to a background writer that commits them in batches, off the request path.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, insert, select, text, update

from netslate.boot import ipxe
from netslate.boot import store as bstore
from netslate.boot.models import BootEvent, BootPin, BootPolicy, BootProfile
from netslate.boot.rules import CompiledRules, Facts
from netslate.errors import NotFound, UserError
from netslate.store.models import Machine, MachineMac

log = logging.getLogger("netslate.boot")

M = Machine.__table__
MM = MachineMac.__table__
_MACHINE_COLS = (M.c.id, M.c.uuid, M.c.serial, M.c.manufacturer, M.c.product, M.c.labels, M.c.approved, M.c.tree_path, M.c.state)
Q_BY_MAC = select(*_MACHINE_COLS).select_from(MM.join(M, MM.c.machine_id == M.c.id)).where(MM.c.mac == bindparam("mac"))
Q_BY_UUID = select(*_MACHINE_COLS).where(M.c.uuid == bindparam("uuid"))
# Anything that can change a script moves one of these numbers.
Q_FINGERPRINT = text(
    "SELECT (SELECT generation FROM boot_state WHERE id = 1),"
    " (SELECT MAX(id) FROM image_tag_events),"
    " (SELECT MAX(id) FROM image_versions),"
    " (SELECT COUNT(*) FROM image_versions)"
)
MENU_MAX_VERSIONS = 20
DECISION_CACHE_MAX = 50_000
# The same reads in plain SQL for the SQLite fast path (no ORM/Core overhead on the hot path).
SQL_FINGERPRINT = str(Q_FINGERPRINT)
SQL_BY_MAC = ("SELECT m.id, m.uuid, m.serial, m.manufacturer, m.product, m.labels, m.approved, m.tree_path, m.state"
              " FROM machine_macs mm JOIN machines m ON m.id = mm.machine_id WHERE mm.mac = ?")
SQL_BY_UUID = "SELECT id, uuid, serial, manufacturer, product, labels, approved, tree_path, state FROM machines WHERE uuid = ?"
# assignment(): the machine row, its address (site hint) and its first MAC in sorted order, in one read.
Q_ASSIGN = select(
    *_MACHINE_COLS, M.c.ip_address,
    select(func.min(MM.c.mac)).where(MM.c.machine_id == M.c.id).scalar_subquery(),
).where(M.c.id == bindparam("id"))
SQL_ASSIGN = ("SELECT m.id, m.uuid, m.serial, m.manufacturer, m.product, m.labels, m.approved, m.tree_path, m.state,"
              " m.ip_address, (SELECT MIN(mm.mac) FROM machine_macs mm WHERE mm.machine_id = m.id)"
              " FROM machines m WHERE m.id = ?")
# decide() renders a script; assignment() only keeps the image and version, so any valid base will do.
ASSIGN_BASE = "http://netslate.invalid"
_MISS = object()


@dataclass
class MachineRow:
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
class Snapshot:
    fingerprint: tuple
    rules: CompiledRules
    profiles: dict[str, dict]
    pins: dict[int, tuple[str, int]]
    policies: dict[str, dict]
    targets: dict[tuple[str, str], Target] = field(default_factory=dict)
    menus: dict[str, list[dict]] = field(default_factory=dict)
    subnets: Any = None  # discovery's SubnetMap (client address → site), if discovery has subnets
    # Rendered decisions keyed on everything decide() reads: request facts + the raw machine row.
    decisions: dict[tuple, "Decision"] = field(default_factory=dict)
    # assignment() answers keyed on the raw machine row (+ first MAC, address): machine id → image pin or None.
    assignments: dict[tuple, dict | None] = field(default_factory=dict)


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


class EventWriter:
    """Commits boot events and last-seen times in batches from one background thread."""

    def __init__(self, ctx, interval: float = 0.2, max_batch: int = 5000):
        self.ctx, self.interval, self.max_batch = ctx, interval, max_batch
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def put(self, event: dict) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="boot-events", daemon=True)
                self._thread.start()
        self.q.put(event)

    def flush(self, timeout: float = 10) -> bool:
        """Wait until everything queued so far is committed (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()
                self._idle.wait(min(left, 0.5))
        return True

    def _run(self) -> None:
        # Wake up on a timer and drain, rather than per event: a per-event wake-up would fight the
        # request threads for the GIL on every boot.
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            batch = []
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                continue
            for attempt in range(3):
                try:
                    self._write(batch)
                    break
                except Exception as exc:  # the database is busy or gone: retry, then drop loudly
                    log.error("writing %d boot events failed (try %d): %s", len(batch), attempt + 1, exc)
                    time.sleep(0.5 * (attempt + 1))
            with self._lock:
                self._pending -= len(batch)
                self._idle.notify_all()

    def _write(self, batch: list[dict]) -> None:
        last_seen: dict[int, dt.datetime] = {}
        for e in batch:
            if e["machine_id"] is not None:
                last_seen[e["machine_id"]] = e["at"]
        with self.ctx.db.session() as s:
            s.execute(insert(BootEvent.__table__), batch)
            if last_seen:
                s.execute(
                    update(M).where(M.c.id == bindparam("b_id")).values(last_seen=bindparam("b_at")),
                    [{"b_id": k, "b_at": v} for k, v in last_seen.items()],
                )


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


def _request_facts(q: dict, m: MachineRow | None) -> Facts:
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


class BootEngine:
    def __init__(self, ctx, options: dict | None = None):
        self.ctx = ctx
        options = options or {}
        self.advertise = advertised_urls(options)
        self.retry = ipxe.Retry(
            attempts=int(options.get("boot_retry_attempts", 6)), delay=int(options.get("boot_retry_delay", 2))
        ).check()
        self.events = EventWriter(ctx)
        self._snap: Snapshot | None = None
        self._lock = threading.Lock()
        self._fp_sql, self._fp_query = SQL_FINGERPRINT, Q_FINGERPRINT
        try:
            from sqlalchemy import inspect

            if inspect(ctx.db.engine).has_table("discovery_subnets"):
                # Sites by client subnet come from the discovery part; its edits must move the fingerprint too.
                extra = ", (SELECT COUNT(*) FROM discovery_subnets), (SELECT MAX(id) FROM discovery_subnets)"
                self._fp_sql = SQL_FINGERPRINT + extra
                self._fp_query = text(self._fp_sql)
        except Exception as exc:  # no discovery: sites come from labels only
            log.warning("boot: no site subnets (%s)", exc)
        url = str(ctx.db.url)
        self._sqlite_path = url[len("sqlite:///"):] if url.startswith("sqlite:///") and len(url) > 10 else None
        self._local = threading.local()

    def _sqlite(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            # One autocommit read connection per thread: every SELECT sees the latest commit.
            c = sqlite3.connect(self._sqlite_path, timeout=30, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA busy_timeout=30000")
            c.execute("PRAGMA query_only=1")
            self._local.conn = c
        return c

    def read(self, mac: str | None, uuid: str | None) -> tuple[Snapshot, "MachineRow | None"]:
        """The hot path's only database work: the fingerprint and the machine row."""
        if self._sqlite_path:
            c = self._sqlite()
            fp = tuple(c.execute(self._fp_sql).fetchone())
            row = c.execute(SQL_BY_MAC, (mac,)).fetchone() if mac else None
            if row is None and uuid:
                row = c.execute(SQL_BY_UUID, (uuid,)).fetchone()
            if row is not None:
                labels = json.loads(row[5]) if isinstance(row[5], str) else (row[5] or {})
                row = MachineRow(row[0], row[1], row[2], row[3], row[4], labels, bool(row[6]), row[7], row[8], tuple(row))
            return self._snapshot_for(fp), row
        with self.ctx.db.engine.connect() as conn:
            fp = tuple(conn.execute(self._fp_query).one())
            return self._snapshot_for(fp), self.lookup(conn, mac, uuid)

    # ------------------------------------------------------------ cache

    def snapshot(self, conn=None) -> Snapshot:
        if conn is None:
            with self.ctx.db.engine.connect() as c:
                return self.snapshot(c)
        return self._snapshot_for(tuple(conn.execute(self._fp_query).one()))

    def _snapshot_for(self, fp: tuple) -> Snapshot:
        snap = self._snap
        if snap is not None and snap.fingerprint == fp:
            return snap
        with self._lock:
            if self._snap is None or self._snap.fingerprint != fp:
                self._snap = self._load(fp)
            return self._snap

    def _load(self, fp: tuple) -> Snapshot:
        with self.ctx.db.session() as s:
            st = bstore.boot_state(s)
            rules = CompiledRules(bstore.load_rules(s, "active"), st.active_version)
            profiles = {p.name: bstore.profile_dict(p) for p in s.scalars(select(BootProfile))}
            pins = {p.machine_id: (p.image, p.version) for p in s.scalars(select(BootPin))}
            policies = {p.site: bstore.policy_dict(p) for p in s.scalars(select(BootPolicy))}
        return Snapshot(fp, rules, profiles, pins, policies, subnets=self._load_subnets() if len(fp) > 4 else None)

    def _load_subnets(self):
        try:
            from netslate.discovery.core import SubnetMap

            with self.ctx.db.engine.connect() as conn:
                rows = conn.execute(text("SELECT n.cidr, s.name FROM discovery_subnets n JOIN discovery_sites s ON s.id = n.site_id")).all()
            return SubnetMap([(c, n) for c, n in rows]) if rows else None
        except Exception as exc:
            log.warning("boot: cannot load site subnets: %s", exc)
            return None

    def site_of_address(self, snap: Snapshot, remote: str | None) -> str | None:
        if snap.subnets is None or not remote:
            return None
        try:
            from netslate.discovery.core import parse_address

            return snap.subnets.site_for(parse_address(remote))
        except Exception:
            return None

    def _target(self, snap: Snapshot, name: str, ref: str) -> Target:
        key = (name, str(ref))
        t = snap.targets.get(key)
        if t is None:
            try:
                r = self.ctx.library.resolve(name, str(ref))
                arts = r.artifacts
                if "kernel" not in arts:
                    t = Target(name, r.version, r.manifest_digest, error=f"{name}@{r.version} has no kernel")
                else:
                    t = Target(name, r.version, r.manifest_digest, has_initrd="initrd" in arts)
            except NotFound as exc:
                t = Target(name, error=str(exc))
            snap.targets[key] = t
        return t

    def _versions(self, snap: Snapshot, name: str) -> list[dict]:
        v = snap.menus.get(name)
        if v is None:
            try:
                v = list(reversed(self.ctx.library.list_versions(name)))[:MENU_MAX_VERSIONS]
            except NotFound:
                v = []
            snap.menus[name] = v
        return v

    # ------------------------------------------------------------ lookups

    def lookup(self, conn, mac: str | None, uuid: str | None) -> MachineRow | None:
        row = conn.execute(Q_BY_MAC, {"mac": mac}).first() if mac else None
        if row is None and uuid:
            row = conn.execute(Q_BY_UUID, {"uuid": uuid}).first()
        return MachineRow(*row) if row is not None else None

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

    def servers(self, base: str) -> list[str]:
        return list(self.advertise) or [base]

    # ------------------------------------------------------------ serving

    def serve(self, q: dict, host: str | None, remote: str | None, scheme: str = "http", may_write: bool = True) -> Decision | None:
        """Answer one /boot/ipxe request (q already validated by request.parse_boot_query).

        With may_write=False (the event loop's fast path) it returns None when the request needs a
        database write first (a new machine, new facts); the caller then retries in a thread."""
        base = self.base_for(host, scheme)
        snap, m = self.read(q["mac"], q.get("uuid"))
        if m is None or (m.uuid is None and q.get("uuid")):
            if not may_write:
                return None
            if m is None:
                bstore.discover_machine(self.ctx, {k: v for k, v in q.items()}, remote)
            else:
                self._fill_facts(m.id, q)
            snap, m = self.read(q["mac"], q.get("uuid"))
        site_hint = self.site_of_address(snap, remote)
        if m is not None and m.key is not None:
            ck = (base, q["mac"], q.get("uuid"), q.get("serial"), q.get("manufacturer"), q.get("product"),
                  q.get("arch"), q.get("platform"), site_hint, m.key)
            d = snap.decisions.get(ck)
            if d is None:
                d = self.decide(snap, m, q, base, site_hint=site_hint)
                if len(snap.decisions) >= DECISION_CACHE_MAX:
                    snap.decisions.clear()
                snap.decisions[ck] = d
        else:
            d = self.decide(snap, m, q, base, site_hint=site_hint)
        self.events.put({
            "at": dt.datetime.utcnow(), "machine_id": m.id if m else None, "mac": q["mac"], "kind": d.kind,
            "rule": d.rule, "profile": d.profile, "image": d.image, "version": d.version, "pinned": d.pinned,
            "remote": (remote or "")[:64] or None, "detail": d.detail[:500],
        })
        return d

    def _fill_facts(self, machine_id: int, q: dict) -> None:
        """A known machine reports SMBIOS facts we lack (added by MAC only): keep them."""
        try:
            with self.ctx.db.session() as s:
                m = s.get(Machine, machine_id)
                for k in ("uuid", "serial", "manufacturer", "product"):
                    if getattr(m, k) is None and q.get(k):
                        setattr(m, k, q[k][:128])
        except Exception as exc:  # e.g. the UUID belongs to another machine: keep booting, say so
            log.warning("could not record facts for machine %s: %s", machine_id, exc)

    def decide(self, snap: Snapshot, m: MachineRow | None, q: dict, base: str, with_explain: bool = False,
               site_hint: str | None = None) -> Decision:
        """site: the machine's `site` label, else the site of its address (discovery subnets), else default."""
        facts = _request_facts(q, m)
        site = ((m.labels or {}).get("site") if m else None) or site_hint or bstore.DEFAULT_SITE
        policy = snap.policies.get(site) or snap.policies.get(bstore.DEFAULT_SITE) or {
            "site": bstore.DEFAULT_SITE, "policy": "boot-default", "retry_seconds": 30, "default_profile": None}
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
            t = self._target(snap, pin[0], str(pin[1]))
            base_profile = profile if profile and profile["kind"] == "image" else {"mode": "ram", "args": [], "console": None}
            return finish(self._image_decision(t, base_profile, base, facts, comments, rname, pname, snap, pinned=True))
        if profile is None:
            msg = [f"no boot rule matches this machine ({who}, mac {facts.mac})"]
            script = ipxe.wait_script(base, msg, int(policy["retry_seconds"]), comments)
            return finish(Decision("wait", script, rule=rname, detail="no rule matched"))
        if profile["kind"] == "local":
            return finish(Decision("local", ipxe.local_script(comments, facts.platform), rule=rname, profile=pname))
        if profile["kind"] == "menu":
            return finish(self._menu_decision(snap, profile, base, facts, comments, rname))
        t = self._target(snap, profile["image"], profile["ref"])
        return finish(self._image_decision(t, profile, base, facts, comments, rname, pname, snap))

    def _args(self, t: Target, profile: dict, base: str) -> tuple[str, ...]:
        args = [
            "netslate.server=" + ",".join(self.servers(base)),
            f"netslate.image={t.name}@{t.version}",
            f"netslate.manifest={t.digest}",
            f"netslate.mode={profile.get('mode') or 'ram'}",
            # The server key pinned at boot: the initramfs and the agent verify signed data against it.
            f"netslate.key={self.ctx.signing_key.public_b64}",
        ]
        if profile.get("console"):
            args.append(f"console={profile['console']}")
        return tuple(args + list(profile.get("args") or []))

    def _image_boot(self, t: Target, profile: dict, base: str) -> ipxe.ImageBoot:
        return ipxe.ImageBoot(
            kernel_url=f"{base}/images/{t.name}/{t.version}/kernel",
            initrd_url=f"{base}/images/{t.name}/{t.version}/initrd" if t.has_initrd else None,
            args=self._args(t, profile, base),
            title=f"{t.name}@{t.version}",
        )

    def _image_decision(self, t: Target, profile: dict, base: str, facts: Facts, comments: list[str],
                        rname: str | None, pname: str | None, snap: Snapshot, pinned: bool = False) -> Decision:
        if t.error:
            policy_retry = 30
            script = ipxe.wait_script(base, [f"cannot boot: {_safe_text(t.error)}"], policy_retry, comments)
            return Decision("wait", script, rule=rname, profile=pname, image=t.name, pinned=pinned, detail=t.error)
        comments = comments + [f"image {t.name}@{t.version}" + (" (pinned)" if pinned else "")]
        script = ipxe.boot_script(self._image_boot(t, profile, base), comments, self.retry, ipxe.jitter(facts.mac or ""),
                                  local_fallback=profile.get("mode") == "cache", platform=facts.platform)
        return Decision("image", script, rule=rname, profile=pname, image=t.name, version=t.version, pinned=pinned)

    def _menu_decision(self, snap: Snapshot, profile: dict, base: str, facts: Facts, comments: list[str], rname: str | None) -> Decision:
        name = profile["image"]
        entries = []
        for v in self._versions(snap, name):
            t = self._target(snap, name, str(v["version"]))
            if t.error:
                continue
            created = str(v.get("created_at") or "")[:10]
            entries.append(ipxe.MenuEntry(t.version, tuple(sorted(v.get("tags") or [])), created, self._image_boot(t, profile, base)))
        default = None
        tag = None
        if profile.get("ref"):
            t = self._target(snap, name, profile["ref"])
            if not t.error:
                default = t.version
                tag = None if str(profile["ref"]).isdigit() else profile["ref"]
        if default is None and entries:
            default = entries[0].version
        menu = ipxe.Menu(name, tuple(entries), default, tag, comments=tuple(comments))
        return Decision("menu", ipxe.menu_script(menu, self.retry, ipxe.jitter(facts.mac or "")), rule=rname,
                        profile=profile["name"], image=name, version=default)

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
        if self._sqlite_path:
            c = self._sqlite()
            fp = tuple(c.execute(self._fp_sql).fetchone())
            row = c.execute(SQL_ASSIGN, (int(machine_id),)).fetchone()
            key = row
        else:
            with self.ctx.db.engine.connect() as conn:
                fp = tuple(conn.execute(self._fp_query).one())
                row = conn.execute(Q_ASSIGN, {"id": int(machine_id)}).first()
            key = None if row is None else tuple(
                json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in row)
        snap = self._snapshot_for(fp)
        if row is None:
            return None
        hit = snap.assignments.get(key, _MISS)
        if hit is _MISS:
            hit = self._assign(snap, row)
            if len(snap.assignments) >= DECISION_CACHE_MAX:
                snap.assignments.clear()
            snap.assignments[key] = hit
        return dict(hit) if hit is not None else None

    def _assign(self, snap: Snapshot, row) -> dict | None:
        labels = json.loads(row[5]) if isinstance(row[5], str) else (row[5] or {})
        m = MachineRow(row[0], row[1], row[2], row[3], row[4], labels, bool(row[6]), row[7], row[8])
        q = {"mac": row[10], "uuid": None, "serial": None, "manufacturer": None, "product": None,
             "arch": None, "platform": None}  # uuid/serial/…: decide() takes them from the machine row
        d = self.decide(snap, m, q, ASSIGN_BASE, site_hint=self.site_of_address(snap, row[9]))
        if d.kind != "image" or d.image is None or d.version is None:
            return None
        t = self._target(snap, d.image, str(d.version))
        if t.error:
            return None
        source = "boot pin" if d.pinned else f"boot rule {d.rule}" if d.rule else "site default profile"
        return {"name": d.image, "version": int(d.version), "digest": t.digest, "source": source}

    # ------------------------------------------------------------ explain

    def explain(self, ident: str, base: str, arch: str | None = None, platform: str | None = None,
                address: str | None = None) -> dict:
        """Which rule matches the machine (by MAC or UUID, known or not), why, and the script it would get."""
        from netslate.boot.request import BadBootRequest, _check

        ident = ident.strip()
        try:
            mac = _check("mac", ident)
            uuid = None
        except BadBootRequest:
            mac = None
            try:
                uuid = _check("uuid", ident)
            except BadBootRequest:
                raise UserError(f"{ident[:80]!r} is neither a MAC nor a UUID") from None
        with self.ctx.db.engine.connect() as conn:
            snap = self.snapshot(conn)
            m = self.lookup(conn, mac, uuid)
        if m is not None and mac is None:
            with self.ctx.db.session() as s:
                macs = sorted(x.mac for x in s.get(Machine, m.id).macs)
            mac = macs[0] if macs else None
        q = {"mac": mac or "00:00:00:00:00:00", "uuid": uuid, "serial": None, "manufacturer": None, "product": None,
             "arch": _check("arch", arch) if arch else None, "platform": _check("platform", platform) if platform else None}
        d = self.decide(snap, m, q, ipxe.base_url(base), with_explain=True, site_hint=self.site_of_address(snap, address))
        out = dict(d.explain or {})
        out.update({"known": m is not None, "kind": d.kind, "rule": d.rule, "profile": d.profile, "image": d.image,
                    "version": d.version, "pinned": d.pinned, "script": d.script})
        return out


_engines: dict[str, BootEngine] = {}
_engines_lock = threading.Lock()


def engine_for(ctx) -> BootEngine:
    """One BootEngine per database URL for readers outside the boot endpoints (signed bundles).
    Building one has no side effect beyond a schema check: its event writer starts no thread and
    writes nothing until a boot request puts an event."""
    key = str(ctx.db.url)
    e = _engines.get(key)
    if e is None:
        with _engines_lock:
            e = _engines.get(key)
            if e is None:
                e = _engines[key] = BootEngine(ctx)
    return e


def _safe_text(s: str) -> str:
    return "".join(c if ipxe.TEXT_RE.match(c) else "_" for c in s)[:150]


def _pxe_entry(d: Decision, boot: ipxe.ImageBoot | None, label: str) -> "pxelinux.PxeEntry | None":
    from netslate.boot import pxelinux

    if d.kind == "local":
        return pxelinux.LOCAL
    if boot is None:
        return None
    return pxelinux.PxeEntry(label, boot.title, boot.kernel_url, boot.initrd_url, boot.args)


def pxelinux_files(engine: BootEngine, base: str) -> dict[str, str]:
    """{path under the TFTP root: contents} for every machine the rules send to an image or the local
    disk (by MAC and by UUID), plus `pxelinux.cfg/default`: a menu of every image profile + local disk.
    Held or unmatched machines get no file of their own, so they land on the default menu."""
    from netslate.boot import pxelinux

    base = ipxe.base_url(base)
    snap = engine.snapshot()
    files: dict[str, str] = {}
    with engine.ctx.db.session() as s:
        machines = [(m.id, m.uuid, m.serial, m.manufacturer, m.product, dict(m.labels or {}), m.approved, m.tree_path,
                     m.state, sorted(x.mac for x in m.macs)) for m in s.scalars(select(Machine))]
    for mid, uuid, serial, manu, prod, labels, approved, group, state, macs in machines:
        row = MachineRow(mid, uuid, serial, manu, prod, labels, approved, group, state)
        for mac in macs:
            q = {"mac": mac, "uuid": uuid, "arch": "i386", "platform": "pcbios"}
            d = engine.decide(snap, row, q, base)
            boot = None
            if d.kind == "image" and d.version is not None:
                t = engine._target(snap, d.image, str(d.version))
                prof = snap.profiles.get(d.profile or "") or {}
                boot = engine._image_boot(t, prof if prof.get("kind") == "image" else {"mode": "ram"}, base)
            entry = _pxe_entry(d, boot, "netslate")
            if entry is None:
                continue
            text_ = pxelinux.render_machine(entry)
            files[f"pxelinux.cfg/{pxelinux.mac_filename(mac)}"] = text_
            if uuid:
                files[f"pxelinux.cfg/{pxelinux.uuid_filename(uuid)}"] = text_
    entries = []
    for name in sorted(snap.profiles):
        p = snap.profiles[name]
        if p["kind"] != "image":
            continue
        t = engine._target(snap, p["image"], p["ref"])
        if t.error:
            continue
        b = engine._image_boot(t, p, base)
        entries.append(pxelinux.PxeEntry("p_" + "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:38],
                                         f"{name}: {b.title}", b.kernel_url, b.initrd_url, b.args))
    files["pxelinux.cfg/default"] = pxelinux.render_menu(entries, default="local")
    return files
