"""The agent's one boot pass and its follow loop: the I/O edge that strings the steps together."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from netslate.agent import AGENT_VERSION, apply, bootinfo, bundle, facts as facts_mod, health, http, lkg, locate, reports
from netslate.agent import enroll
from netslate.agent.problems import Problems
from netslate.agent.util import read_json, under, write_json

log = logging.getLogger("netslate.agent")

DEFAULT_WAIT = 60
# A machine that fell back to a later server (its branch's was down) looks again this often, so it
# returns to the preferred one when that is back (issue 15 §4). Config: agent.relocate_seconds.
DEFAULT_RELOCATE = 300
HEARTBEAT = 60.0


@dataclass
class Options:
    root: Path = Path("/")
    sysroot: Path = Path("/")
    state_dir: str = bootinfo.STATE_DIR
    lkg_dir: str | None = None
    servers: list[str] = field(default_factory=list)
    key: str | None = None
    machine: str | None = None
    domain: str | None = None
    nameserver: str | None = None  # HOST:PORT for SRV lookups instead of resolv.conf
    timeout: float = 5.0
    live: bool | None = None  # default: root is "/"


@dataclass
class Outcome:
    report: dict
    payload: dict | None
    url: str | None


class Agent:
    def __init__(self, opts: Options):
        self.o = opts
        self.root = Path(opts.root)
        self.boot = bootinfo.load(self.root)
        if opts.servers:
            self.boot.servers = [u for u in (bootinfo.normalize_server(s) for s in opts.servers) if u] + self.boot.servers
        if opts.key:
            k = bootinfo._key(opts.key, self.boot.problems, "--key")
            self.boot.key = k or self.boot.key
        self.boot.machine = opts.machine or self.boot.machine
        self.boot.domain = opts.domain or self.boot.domain
        self.live = (str(self.root) == "/") if opts.live is None else opts.live
        lkg_dir = opts.lkg_dir or self.boot.lkg_dir or bootinfo.RAM_LKG_DIR
        self.lkg_dir = under(self.root, lkg_dir)
        # With a persistent lkg dir (cache mode) the locate cache and the report queue live there
        # too, so they survive a reboot; otherwise in the agent's state dir.
        self.store_dir = self.lkg_dir if (opts.lkg_dir or self.boot.lkg_dir) else under(self.root, opts.state_dir)
        self.queue_dir = self.store_dir / "queue"
        self.locate_cache = self.store_dir / "locate.json"
        self.identity_file = self.store_dir / "identity.json"
        # The server certificate's pin for https URLs: the boot's netslate.pin=, else the one kept
        # with the locate cache (a cache-mode boot from the local disk carries no pin of its own).
        self.pin = self.boot.pin or locate.cached_pin(self.locate_cache)
        http.set_pin(self.pin)
        self.url: str | None = None
        self.fell_back = False  # self.url was found after an earlier candidate failed
        self.located_at = 0.0
        self.machine_id: int | None = None
        self.etag: str | None = None
        self.doc: dict = {}
        self.generation: int | None = None
        self.config_source: str | None = None
        self.facts: dict = {}
        self.modules: dict = {}
        self.health: dict = {"ok": True, "checks": []}
        self.reboot_required: list[str] = []
        self.problems = Problems(self.boot.problems)  # one slot per source, rebuilt when it runs
        self.last_report = 0.0
        self.enroller = enroll.Enroller(self.root, self.lkg_dir, self.o.timeout)  # TPM (or token) → credential
        # Site-scoped signing (issue 15 §3): the newest root-signed revocation list seen (kept with the
        # lkg in cache mode, where the initramfs reads it too) and the site of the last verified bundle.
        self.revocations_file = self.store_dir / bundle.REVOCATIONS_FILE
        self.revocations = bundle.load_revocations(self.revocations_file, self.boot.key)
        known = lkg.load(self.lkg_dir, self.boot.key, None, self.revocations)[1]
        self.site: str | None = (known or {}).get("site")

    # ------------------------------------------------------------ pieces

    def credential(self) -> str | None:
        for p in (self.lkg_dir / "credential", under(self.root, "/etc/netslate/credential")):
            try:
                t = p.read_text().strip()
            except OSError:
                continue
            if t:
                return t
        return None

    def _auth(self) -> dict:
        c = self.credential()
        return {"Authorization": f"Bearer {c}"} if c else {}

    def locate(self, exclude=None) -> str | None:
        exclude = set(exclude or ())
        if not exclude:  # a fresh search (a retry with exclusions adds to this round's lines)
            self.problems.start("locate")
        cached = locate.load_cache(self.locate_cache)
        cands = [c for c in locate.candidates(self.boot.servers, cached, []) if c[0] not in exclude]
        found = locate.find(cands, self.o.timeout, self.boot.key, self.site, self.revocations)
        if found.url is None:  # DNS only when nothing we already knew answers
            srv = locate.dns_servers(self.root, self.boot.domain, min(self.o.timeout, 3.0), self.o.nameserver)
            more = [(u, s) for u, s in locate.candidates([], [], srv) if u not in {c[0] for c in cands} and u not in exclude]
            again = locate.find(more, self.o.timeout, self.boot.key, self.site, self.revocations)
            found.tried += again.tried
            found.url, found.answer = again.url, again.answer
        if found.url is None:
            if exclude:
                return None  # every server that answered gave an unusable bundle; already reported
            tried = ", ".join(f"{t['url']}: {t['error']}" for t in found.tried) or "no candidates (no netslate.server=, no cache, no SRV answer)"
            self.problems.add("locate", f"no server answered ({tried})")
            return None
        url = self._secure(found, exclude)
        if url is None:
            return None
        self.fell_back = bool(exclude) or any(t["error"] for t in found.tried)
        self.located_at = time.monotonic()
        try:
            locate.save_cache(self.locate_cache, found.answer, url, self.pin)
        except OSError as exc:
            self.problems.add("locate", f"could not cache the locate answer: {exc}")
        return url

    def _secure(self, found: locate.Located, exclude: set) -> str | None:
        """The URL to use for a located server: its https URL when its answer says it has TLS. A
        signed answer's pin is adopted when this machine has none (the answer is as trusted as the
        bundles: same key). Once this machine pins, its credential never goes to the plain URL of a
        server with TLS: when the https URL does not answer, the next server is tried."""
        url = found.url
        secure, pin = locate.tls_of(found.answer, url)
        if secure is None:
            return url  # https already, or a server without TLS: as before
        if secure in exclude:  # its https URL gave nothing usable this round: so would its plain one
            return self.locate(exclude=exclude | {url})
        if self.pin is None and self.boot.key is not None:
            self.pin = pin
            http.set_pin(pin)
        try:
            found.answer = locate.probe(secure, self.o.timeout, self.boot.key, self.site, self.revocations)
            return secure
        except http.HttpError as exc:
            if not self.pin:
                return url  # nothing pinned (no signing key either): plain HTTP as before
            self.problems.add("locate", f"{secure} (the TLS listener of {url}) did not answer: {exc}; "
                                        "this machine's credential does not go over plain HTTP")
            return self.locate(exclude=exclude | {url, secure})

    def identify(self, url: str) -> int | None:
        """This machine's id: the boot's netslate.machine= (resolved), else MAC/UUID lookup."""
        params = []
        if self.boot.machine:
            params.append(("ident", self.boot.machine))
        for m in facts_mod.macs(self.facts):
            params.append(("mac", m))
        uuid = (self.facts.get("dmi") or {}).get("product_uuid")
        if uuid:
            params.append(("uuid", uuid))
        import urllib.parse

        self.problems.start("identify")
        try:
            r = http.get_json(f"{url}/api/v1/fleet/identify?" + urllib.parse.urlencode(params), timeout=self.o.timeout)
            mid = int(r["id"])
        except (http.HttpError, KeyError, TypeError, ValueError) as exc:
            cached = read_json(self.identity_file) or {}
            if isinstance(cached.get("id"), int):
                return cached["id"]
            self.problems.add("identify", f"server does not know this machine: {exc}")
            return None
        try:
            write_json(self.identity_file, {"id": mid, "name": r.get("name")})
        except OSError:
            pass
        return mid

    def fetch(self, url: str, wait: int = 0) -> tuple[int, dict | None, str | None]:
        """(HTTP status, envelope or None, etag). 304 means unchanged."""
        headers = self._auth()
        if self.etag and wait:
            headers["If-None-Match"] = self.etag
        q = f"?wait={wait}" if wait else ""
        r = http.request("GET", f"{url}/api/v1/machines/{self.machine_id}/bundle{q}", headers=headers,
                         timeout=self.o.timeout + wait + 5)
        if r.status == 304:
            return 304, None, self.etag
        if r.status != 200:
            raise http.HttpError(f"bundle: HTTP {r.status} {r.body[:160]!r}")
        return 200, r.json(), r.headers.get("etag")

    def _opened(self, payload: dict) -> dict:
        """A verified payload with its secrets opened with this machine's credential (issue 13)."""
        payload, problem = bundle.open_secrets(payload, self.credential())
        self.problems.set("secrets", problem)
        return payload

    def verify(self, envelope) -> dict:
        """bundle.verify with this machine's site and revocation list; a newer list it carries is kept."""
        payload = bundle.verify(envelope, self.boot.key, self.machine_id, self.floor(), site=self.site, revocations=self.revocations)
        self.revocations = bundle.remember_revocations(self.revocations_file, envelope, self.boot.key, self.revocations)
        self.site = payload.get("site", self.site)
        return payload

    def floor(self) -> int | None:
        g = lkg.last_generation(self.lkg_dir)
        return max(x for x in (g, self.generation) if x is not None) if (g is not None or self.generation is not None) else None

    def _apply(self, payload: dict, previous: dict, only: list[str] | None = None) -> dict:
        c = apply.Ctx(self.root, self.live, previous, self.boot.kernel_args)
        results, changes = apply.apply_all(payload["document"], c, only)
        self.reboot_required += c.reboot_required
        return {"modules": results, "changes": changes, "actions": c.actions}

    def _save_lkg(self, envelope: dict, payload: dict) -> None:
        try:
            lkg.save(self.lkg_dir, envelope, payload)
            self.modules["last_known_good"] = "ok"
        except OSError as exc:  # full or damaged disk: keep running, say so
            self.modules["last_known_good"] = f"error: saving to {self.lkg_dir}: {exc.strerror or exc}"

    def report(self, phase: str, timings: dict | None = None, changes: dict | None = None) -> bool:
        body = reports.build(
            phase=phase, boot=self.boot, generation=self.generation, config_source=self.config_source,
            modules=self.modules, changes=changes or {}, health=self.health, facts=self.facts,
            timings=timings or {}, reboot_required=self.reboot_required, problems=self.problems.lines()[-20:],
            agent_version=AGENT_VERSION, uptime=_uptime(Path(self.o.sysroot)))
        self.last_report = time.monotonic()
        if self.url and self.machine_id is not None:
            try:
                reports.flush(self.queue_dir, self.url, self.machine_id, self.credential(), self.o.timeout)
                reports.send(self.url, self.machine_id, body, self.credential(), self.o.timeout)
                self.problems.start("report")
                return True
            except reports.Refused as exc:
                self.problems.set("report", f"report not accepted: {exc}")
                return False  # queueing it would only block the queue
            except (http.HttpError, OSError) as exc:
                self.problems.set("report", f"report not delivered: {exc}")
        if phase == "booting":
            return False  # a booting report only matters live; the final one is queued
        try:
            reports.enqueue(self.queue_dir, body)
        except OSError as exc:
            self.problems.add("report", f"could not queue the report: {exc}")
        return False

    # ------------------------------------------------------------ the boot pass

    def run_once(self) -> Outcome:
        t = {"start": time.monotonic()}
        timings: dict = {}
        uptime = _uptime(Path(self.o.sysroot))
        if uptime is not None:
            timings["agent_start_after_boot_s"] = uptime
        self.facts = facts_mod.gather(Path(self.o.sysroot))
        timings["facts_ms"] = _ms(t, "start")
        t["located"] = time.monotonic()
        payload = envelope = None
        bad: dict[str, None] = {}  # ordered: servers that answered but gave nothing usable
        t["fetch"] = time.monotonic()
        self.problems.start("bundle")
        # Try servers in locate order until one gives a bundle that verifies (bounded: each URL once).
        while payload is None:
            self.url = self.locate(exclude=bad)
            if "locate_ms" not in timings:
                timings["locate_ms"] = _ms(t, "located")
            if self.url is None:
                break
            self._enroll()
            mid = self.identify(self.url)
            if mid is None:
                bad[self.url] = None
                continue
            self.machine_id = mid
            self.report("booting")  # facts first, so the server renders templates for this machine
            try:
                _, envelope, etag = self.fetch(self.url)
                payload = self._opened(self.verify(envelope))
                self.etag = etag
                self.config_source = "server"
            except (http.HttpError, bundle.BundleRejected) as exc:
                self.problems.add("bundle", f"bundle from {self.url} not used: {exc}")
                payload = envelope = None
                bad[self.url] = None
        if payload is None and bad:
            self.url = next(iter(bad))  # still worth reporting to: it answered
        timings["fetch_ms"] = _ms(t, "fetch")
        if payload is None:
            mid = self.machine_id if self.machine_id is not None else (read_json(self.identity_file) or {}).get("id")
            envelope, payload, why = lkg.load(self.lkg_dir, self.boot.key, mid if isinstance(mid, int) else None, self.revocations)
            if payload is not None:
                payload = self._opened(payload)
                self.config_source = "cache"
                if self.machine_id is None:
                    self.machine_id = payload.get("machine_id")
            else:
                self.config_source = "none"
                self.problems.add("bundle", f"no verified configuration ({why}): running with the image's defaults")
        t["apply"] = time.monotonic()
        changes: dict = {}
        if payload is not None:
            previous = lkg.load(self.lkg_dir, self.boot.key, None, self.revocations)[1] if self.config_source == "server" else None
            res = self._apply(payload, (previous or {}).get("document") or {})
            self.modules = dict(res["modules"])
            changes = res["changes"]
            self.doc = payload["document"]
            self.generation = payload["generation"]
            if self.config_source == "server":
                self._save_lkg(envelope, payload)
        timings["apply_ms"] = _ms(t, "apply")
        t["health"] = time.monotonic()
        self.health = health.run_all(self.doc.get("health_checks") or [])
        timings["health_ms"] = _ms(t, "health")
        timings["total_ms"] = _ms(t, "start")
        rep_phase = "configured"
        self.report(rep_phase, timings, changes)
        return Outcome(self._last_body(timings, changes), payload, self.url)

    def _enroll(self) -> None:
        """Obtain or renew the machine credential when due (agent/enroll.py); a problem goes into the report."""
        if self.url and self.enroller.due():
            # one enrollment line at a time: a machine approved since no longer reports it waits
            self.problems.set("enroll", self.enroller.step(self.url, self.facts))

    def _last_body(self, timings, changes) -> dict:
        return {"config_source": self.config_source, "generation": self.generation, "modules": self.modules,
                "health": self.health, "problems": self.problems.lines(), "changes": changes, "timings": timings,
                "machine_id": self.machine_id, "server": self.url, "reboot_required": sorted(set(self.reboot_required))}

    # ------------------------------------------------------------ follow changes

    def follow_step(self, wait: int | None = None) -> str:
        """One long-poll round. Returns 'unchanged', 'applied', 'refused' or 'offline'."""
        wait = wait if wait is not None else int((self.doc.get("agent") or {}).get("wait_seconds") or DEFAULT_WAIT)
        if self.url is not None and self.fell_back and time.monotonic() - self.located_at >= self._relocate_seconds():
            self.url = self.locate() or self.url  # the first server that answers now: the preferred one if back
        if self.url is None or self.machine_id is None:
            self.url = self.locate()
            if self.url is None:
                return "offline"
            if self.machine_id is None:
                self.machine_id = self.identify(self.url)
                if self.machine_id is None:
                    return "offline"
        self._enroll()
        try:
            status, envelope, etag = self.fetch(self.url, wait)
        except http.HttpError as exc:
            self.problems.set("bundle", f"follow: {exc}")
            self.url = None
            return "offline"
        self.problems.start("bundle")  # the server answered
        if status == 304:
            if time.monotonic() - self.last_report > HEARTBEAT or self.config_source != "server":
                self.report("heartbeat")
            return "unchanged"
        try:
            payload = self._opened(self.verify(envelope))
        except bundle.BundleRejected as exc:
            self.problems.add("bundle", f"new bundle refused: {exc}")
            self.etag = etag  # do not spin on the same bad bundle
            self.report("heartbeat")
            return "refused"
        self.etag = etag
        new_doc = payload["document"]
        changed = apply.changed_modules(self.doc, new_doc) if self.config_source != "none" else list(apply.MODULES)
        live = [m for m in changed if m in apply.LIVE_SAFE]
        later = [m for m in changed if m not in apply.LIVE_SAFE]
        res = self._apply(payload, self.doc, only=live) if live else {"modules": {}, "changes": {}}
        self.modules.update(res["modules"])
        self.reboot_required = sorted(set(self.reboot_required) | set(later))
        self.doc, self.generation, self.config_source = new_doc, payload["generation"], "server"
        self._save_lkg(envelope, payload)
        self.health = health.run_all(self.doc.get("health_checks") or [])
        self.report("configured", {}, res["changes"])
        return "applied"

    def _relocate_seconds(self) -> float:
        try:
            return max(1.0, float((self.doc.get("agent") or {}).get("relocate_seconds") or DEFAULT_RELOCATE))
        except (TypeError, ValueError):
            return float(DEFAULT_RELOCATE)

    def follow(self, max_rounds: int | None = None, stop=None, wait: int | None = None) -> None:
        backoff = 1.0
        rounds = 0
        while (max_rounds is None or rounds < max_rounds) and not (stop and stop.is_set()):
            rounds += 1
            r = self.follow_step(wait)
            if r == "offline":
                time.sleep(backoff + random.random())
                backoff = min(backoff * 2, 60.0)
            else:
                backoff = 1.0


def _ms(t: dict, key: str) -> float:
    return round((time.monotonic() - t[key]) * 1000, 1)


def _uptime(sysroot: Path) -> float | None:
    try:
        return float((sysroot / "proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
