"""`make demo-sites` and tests/sites/test_sites_vm.py: a central site and a branch site with one real
QEMU VM at the branch (issue 15 §5-6). The same step functions serve both (as demo_fleet does):
each raises when its claim does not hold; the test asserts through them, the demo prints them.

The world (netslate.sites.lab.SitesLab plus a LAN): namespace central (PostgreSQL primary, a netslate
server holding the root key), namespace branch (a `pg_basebackup -R` standby on a slot, a netslate
server with `--site branch --db-read/--db-write --mirror-from central` and a site key the root
certified), the "WAN" veth between them, and in branch a bridge with the site's own DHCP/TFTP
(a plain dnsmasq, "the branch router", bound to that bridge only) and the VM's tap. The router hands
the VM's iPXE a loop-free script that tries the branch server first and central second
(bootfiles.loader_script(servers=...)); the LAN reaches central over the WAN (routes, forwarding in
branch). The image is built in the host namespace (mmdebstrap needs the Debian mirror) into central's
data directory, through the primary's unix socket (unix sockets ignore network namespaces).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from netslate.demo_fleet import build_fleet_image
from netslate.sites.lab import BRANCH_ADDR, CENTRAL_ADDR, PG_PORT, SitesLab
from netslate.vmlab import VM

MAC = "52:54:00:15:0b:01"
UUID = "6e657473-6c61-4465-8000-000000150b01"
NAME = "vm-branch"
PORT = 8080
CENTRAL_URL = f"http://{CENTRAL_ADDR}:{PORT}"
AGENT_RE = r"netslate-agent: config generation (\d+) from (\S+);"
ROOTFS_RE = r"netslate: rootfs fleet@(\d+): downloaded (\d+) of (\d+) bytes .* from (\S+) in"
READ_ONLY = "central site unreachable: this server is read-only since "
BRANCH_SERVER = "branch1"
FORGED_SERIAL = 7  # the forged site certificate's serial (the real one is 1)
# `python -c FORGED_LAUNCHER serve ...`: netslate serve whose keys loader skips the one check that the
# site certificate verifies under root.pub (SitesWorld.start_forged_branch: the rogue branch server)
FORGED_LAUNCHER = """
import json, runpy, sys
from netslate.crypto import keys
from netslate.crypto.envelope import parse_public_key

def _forged(d):
    return keys.SigningKey(keys._load_private(d / keys.SITE_KEY), cert=json.loads((d / keys.SITE_CERT).read_text()),
                           root=parse_public_key((d / keys.ROOT_PUB).read_text()))

keys._load_site = _forged
sys.argv[0] = "netslate"
runpy.run_module("netslate", run_name="__main__")
"""


def _utcnow() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


class SitesWorld:
    """Everything of the scenario; `close()` stops all of it (VM, servers, router, PostgreSQL, namespaces)."""

    def __init__(self, workdir: Path):
        self.work = Path(workdir)
        self.lab = SitesLab()
        self.central_data = self.lab.base / "central-data"
        self.branch_data = self.lab.base / "branch-data"
        self.lan = None
        self.vm: VM | None = None
        self.central_proc = self.branch_proc = self.router = None
        self.results: dict = {}
        self.ids: dict = {}

    # ------------------------------------------------------------ plumbing
    @property
    def socket_url(self) -> str:
        """The primary through its unix socket: usable from the host namespace (the image build)."""
        return f"postgresql+psycopg://postgres@/postgres?host={self.lab.base}&port={PG_PORT}"

    @property
    def branch_url(self) -> str:
        return f"http://{self.lan.address}:{PORT}"

    def ctx(self):
        from netslate.context import Context

        return Context(self.central_data, self.socket_url)

    def cli(self, *args: str, json_out: bool = True, timeout: float = 900):
        """The real CLI on central's data directory and database (host namespace)."""
        env = dict(os.environ, NETSLATE_DATA_DIR=str(self.central_data), NETSLATE_DATABASE_URL=self.socket_url)
        env.pop("NETSLATE_SERVER", None)
        env.pop("NETSLATE_TOKEN", None)
        p = subprocess.run([sys.executable, "-m", "netslate", *args] + (["--json"] if json_out else []), env=env,
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"`netslate {' '.join(args)}` exited {p.returncode}: {p.stderr.strip()[-800:]}")
        return json.loads(p.stdout) if json_out else p.stdout

    def get(self, ns: str, url: str, **kw) -> tuple[int, bytes]:
        return self.lab.http(ns, url, **kw)

    def branch_json(self, path: str, ok: tuple[int, ...] = (200,), **kw):
        code, body = self.get(self.lab.branch, self.branch_url + path, **kw)
        if code not in ok:
            raise RuntimeError(f"branch GET {path} answered {code}: {body[-300:]!r}")
        return json.loads(body)

    def central_fleet(self) -> dict:
        code, body = self.get(self.lab.central, CENTRAL_URL + "/api/v1/fleet", timeout=10)
        if code != 200:
            raise RuntimeError(f"central GET /api/v1/fleet answered {code}")
        return {m["name"]: m for m in json.loads(body)["machines"]}

    def wait(self, what: str, probe, timeout: float, poll: float = 1.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = probe()
                if last:
                    return last
            except (OSError, RuntimeError, ValueError) as exc:
                last = exc
            if self.vm is not None and self.vm.proc is not None and self.vm.proc.poll() not in (None, 0):
                raise RuntimeError(f"{self.vm.name} exited {self.vm.proc.returncode} while waiting for {what}")
            time.sleep(poll)
        raise TimeoutError(f"{what}: not within {timeout:.0f} s (last: {str(last)[:600]})")

    @staticmethod
    def _serve_env(data: Path, name: str) -> dict:
        # NETSLATE_SERVER_NAME: the origin the branch's applied telemetry carries at central (sites_outbox_applied)
        return {"NETSLATE_DATA_DIR": str(data), "NETSLATE_CENTRAL_CONNECT_TIMEOUT": "2",
                "NETSLATE_CENTRAL_STATEMENT_TIMEOUT": "10", "NETSLATE_SERVER_NAME": name}

    def _serve(self, ns: str, data: Path, args: list[str], log: str) -> subprocess.Popen:
        name = args[args.index("--server-name") + 1]
        return self.lab.netslate(ns, "serve", *args, log=self.work / log, env=self._serve_env(data, name))

    def _up(self, ns: str, url: str, proc, log: str, timeout: float = 120) -> None:
        def ok():
            if proc.poll() is not None:
                raise AssertionError(f"netslate serve exited {proc.returncode}: "
                                     f"{(self.work / log).read_text(errors='replace')[-2000:]}")
            return self.get(ns, url + "/healthz", timeout=5)[0] == 200
        try:
            self.wait(f"{url} answers /healthz", ok, timeout, poll=0.5)
        except TimeoutError:
            raise RuntimeError(f"{url} did not start: {(self.work / log).read_text(errors='replace')[-2000:]}") from None

    def start_central(self) -> None:
        self.central_proc = self._serve(self.lab.central, self.central_data, [
            "--listen", f"{CENTRAL_ADDR}:{PORT}", "--database-url", self.lab.primary_url_central,
            "--advertise", CENTRAL_ADDR, "--server-name", "central1"], "central-serve.log")
        self._up(self.lab.central, CENTRAL_URL, self.central_proc, "central-serve.log")

    def _branch_args(self) -> list[str]:
        return ["--listen", f"{self.lan.address}:{PORT}", "--db-read", self.lab.standby_url_branch,
                "--db-write", self.lab.primary_url_branch, "--site", "branch", "--advertise", self.lan.address,
                "--server-name", BRANCH_SERVER, "--mirror-from", CENTRAL_URL]

    def start_branch(self) -> None:
        self.branch_proc = self._serve(self.lab.branch, self.branch_data, self._branch_args(), "branch-serve.log")
        self._up(self.lab.branch, self.branch_url, self.branch_proc, "branch-serve.log")

    def start_forged_branch(self, cert: dict, pem: bytes, root_public: bytes) -> None:
        """A rogue branch server (the attack of issue 15 §3): a site key certified by ANOTHER root, while
        it pins the REAL root in everything it serves (boot script `netslate.key=`, `/api/v1/keys`): the
        root public key is public. netslate's own loader refuses such a keys directory (the certificate
        must verify under root.pub), so the rogue server is netslate serve with that one check removed
        in its process (an attacker's modified server); everything else is the real server."""
        from netslate.crypto.keys import write_site_files

        write_site_files(self.branch_data / "keys", cert, pem, root_public)
        self.branch_proc = self.lab.spawn(self.lab.branch, [sys.executable, "-c", FORGED_LAUNCHER, "serve", *self._branch_args()],
                                          self.work / "branch-forged-serve.log", self._serve_env(self.branch_data, BRANCH_SERVER))
        self._up(self.lab.branch, self.branch_url, self.branch_proc, "branch-forged-serve.log")

    def kill_branch(self) -> None:
        """The branch server dies (SIGKILL, no goodbye)."""
        p = self.branch_proc
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        self.branch_proc = None

    def start_router(self) -> None:
        """The branch's own DHCP + TFTP (not netslate's): addresses, a gateway, and to iPXE the loader
        script that tries the branch server, then central."""
        from netslate.boot.bootfiles import loader_script

        tftp = self.work / "router-tftp"
        tftp.mkdir(exist_ok=True)
        (tftp / "sites.ipxe").write_text(loader_script(None, servers=[self.branch_url, CENTRAL_URL]))
        os.chmod(tftp, 0o755)
        lan = self.lan
        self.router = lan.popen([
            "dnsmasq", "--keep-in-foreground", "--port=0", f"--interface={lan.bridge}", "--bind-interfaces",
            "--except-interface=lo", f"--dhcp-range={lan.host_ip(100)},{lan.host_ip(150)},255.255.255.0,1h",
            f"--dhcp-option=option:router,{lan.address}", "--dhcp-userclass=set:ipxe,iPXE",
            f"--dhcp-boot=tag:ipxe,sites.ipxe,router,{lan.address}", "--enable-tftp", f"--tftp-root={tftp}",
            f"--dhcp-leasefile={self.work}/router.leases", "--user=root", "--no-resolv", "--no-hosts",
            "--conf-file=/dev/null", f"--log-facility={self.work}/router.log", "--log-dhcp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def boot_vm(self) -> VM:
        if self.vm is None:
            vmdir = Path(self.lab.base) / "vm"  # short: QEMU's serial socket path must stay under 108 bytes
            self.vm = VM(self.lan, vmdir, NAME, MAC, memory_mb=1536, accel="tcg", extra=["-uuid", UUID])
            return self.vm.start()
        return self.vm.restart()

    def outbox_events(self) -> list[tuple[str, str, dict]]:
        """(id, kind, payload) of the events waiting in the branch server's outbox (its SQLite file)."""
        con = sqlite3.connect(f"file:{self.branch_data / 'outbox.db'}?mode=ro", uri=True, timeout=10)
        try:
            return [(i, k, json.loads(p)) for i, k, p in con.execute("SELECT id, kind, payload FROM events ORDER BY seq")]
        finally:
            con.close()

    def close(self) -> None:
        if self.vm is not None:
            self.vm.stop()
            if self.vm.serial_path.exists():  # the VM's directory goes with the lab: keep its console
                shutil.copyfile(self.vm.serial_path, self.work / self.vm.serial_path.name)
        if self.router is not None and self.lan is not None:
            self.lan.stop(self.router)
        self.lab.stop()


# ------------------------------------------------------------------ central-side counts (host namespace)
def central_counts(ctx, machine_id: int, mac: str, event_ids: list[str]) -> dict:
    from sqlalchemy import func, select

    from netslate.boot.models import BootEvent
    from netslate.store.models import AuditEntry
    from netslate.store.outbox import OutboxApplied

    with ctx.db.session() as s:
        boots = s.scalar(select(func.count()).select_from(BootEvent).where(BootEvent.mac == mac)) or 0
        reports = [a.detail for a in s.scalars(select(AuditEntry).where(
            AuditEntry.action == "fleet.report", AuditEntry.target == f"machine:{machine_id}"))]
        applied = {r.event_id: r.outcome for r in s.scalars(select(OutboxApplied).where(OutboxApplied.event_id.in_(event_ids)))} \
            if event_ids else {}
    return {"boot_events": boots, "reports": reports, "applied": applied}


def applied_from(ctx, origin: str, after: str) -> list[tuple[str, str]]:
    """(kind, applied_at) of the telemetry events a branch server (`origin`) applied at central after
    `after` (UTC, ISO): a branch server writes each machine report or boot event it takes through its
    outbox, with a row in sites_outbox_applied; central's own server writes none."""
    import datetime as dt

    from sqlalchemy import select

    from netslate.store.outbox import OutboxApplied

    t = dt.datetime.fromisoformat(after)
    with ctx.db.session() as s:
        return [(r.kind, r.applied_at.isoformat()) for r in s.scalars(select(OutboxApplied).where(
            OutboxApplied.origin == origin, OutboxApplied.applied_at > t).order_by(OutboxApplied.applied_at))]


def sites_steps(w: SitesWorld, say, boot_timeout: float = 420) -> list[tuple[str, object]]:
    r = w.results
    lab = w.lab

    def build():
        t = time.monotonic()
        lab.start()
        w.lan = lab.add_lan()
        w.central_data.mkdir()
        w.branch_data.mkdir()
        ctx = w.ctx().init()  # migrations on the primary (through its socket)
        from netslate import inventory
        from netslate.boot import store as bstore
        from netslate.crypto import records
        from netslate.crypto.keys import write_site_files
        from netslate.discovery import store as discovery

        discovery.add_site(ctx, "branch")
        discovery.add_subnet(ctx, "branch", str(w.lan.network))
        saved = os.environ.get("NETSLATE_DATABASE_URL")
        os.environ["NETSLATE_DATABASE_URL"] = w.socket_url  # demo_fleet's CLI runs inherit it: central's catalog
        try:
            b = build_fleet_image(w.central_data, w.work, "sites")
        finally:
            if saved is None:
                os.environ.pop("NETSLATE_DATABASE_URL", None)
            else:
                os.environ["NETSLATE_DATABASE_URL"] = saved
        r["version"] = b["image"]["version"]
        bstore.add_profile(ctx, "sites-ram", image="fleet", ref="stable", mode="ram", console="ttyS0", args=["panic=-1"])
        m = inventory.add_machine(ctx, [MAC], uuid=UUID, name=NAME, labels={"site": "branch"})
        w.ids["machine"] = m["id"]
        bstore.add_rule(ctx, "r-branch", {"mac": MAC}, "sites-ram")
        bstore.activate_rules(ctx)
        w.cli("config", "set", "/branch", "files", '[{path: /etc/netslate-sites, content: "one\\n"}]', json_out=False)
        w.cli("config", "place", NAME, "/branch", json_out=False)
        r["gen1"] = w.cli("config", "publish", "-m", "sites: first")["generation"]
        root = ctx.signing_key
        cert, pem = root.issue_site_cert("branch", 1, 30)
        with ctx.db.session() as s:
            records.add_site_cert(s, cert)
        write_site_files(w.branch_data / "keys", cert, pem, root.public_bytes)
        r["root"] = root.public_b64
        lab.wait_replayed(60)
        w.start_central()
        w.start_branch()
        w.start_router()
        st = w.wait("the branch mirror holds fleet@stable", lambda: (lambda s: s if s["versions"] and all(
            v["complete"] for v in s["versions"]) else None)(w.branch_json("/api/v1/mirror")), 300, poll=2)
        mb = sum(v["bytes_present"] for v in st["versions"]) / 2**20
        r["setup_seconds"] = round(time.monotonic() - t, 1)
        say(f"central ({CENTRAL_ADDR}): PostgreSQL primary, netslate server with the root key; branch ({BRANCH_ADDR} "
            f"on the WAN, {w.lan.address} on its LAN): standby on slot branch_b, netslate --site branch "
            f"--db-read standby --db-write primary --mirror-from central, site key serial 1 certified by the root")
        say(f"fleet@{r['version']} built at central (mmdebstrap + initramfs); the branch mirror prefetched "
            f"{len(st['versions'])} version(s), {mb:.0f} MiB, verified; config generation {r['gen1']} "
            f"({r['setup_seconds']} s)")
        say(f"branch router: dnsmasq DHCP/TFTP on {w.lan.bridge}; iPXE gets sites.ipxe: {w.branch_url}, then {CENTRAL_URL}")

    def boot_during_cut():
        mirror0 = w.branch_json("/healthz", ok=(200, 503))["checks"]["chunk-mirror"]
        lab.cut()
        r["cut_at"] = time.time()
        say("WAN cut: the central end of the veth is down (a silent drop)")
        t0 = time.monotonic()
        vm = w.boot_vm()
        m = vm.wait_for(AGENT_RE, boot_timeout)
        r["cut_boot_seconds"] = round(time.monotonic() - t0, 1)
        if (int(m.group(1)), m.group(2)) != (r["gen1"], "server"):
            raise RuntimeError(f"the agent applied {m.group(0)!r}, expected generation {r['gen1']} from the server")
        con = vm.console.text()
        got = re.search(ROOTFS_RE, con)
        if not got or got.group(4) != w.branch_url or int(got.group(1)) != r["version"]:
            raise RuntimeError(f"the rootfs did not come from the branch: {got.group(0) if got else con[-1500:]}")
        if f"trying boot server {w.branch_url}" not in con:
            raise RuntimeError("the router's loader script did not run")
        mirror1 = w.branch_json("/healthz", ok=(200, 503))["checks"]["chunk-mirror"]
        r["mirror_bytes_fetched_during_boot"] = mirror1["bytes_fetched"] - mirror0["bytes_fetched"]
        if r["mirror_bytes_fetched_during_boot"] != 0:
            raise RuntimeError(f"the mirror fetched {r['mirror_bytes_fetched_during_boot']} bytes upstream during the cut")
        say(f"{NAME} PXE-booted at the branch (router DHCP → sites.ipxe → {w.branch_url}/boot.ipxe), "
            f"fleet@{got.group(1)}: {int(got.group(2)) / 2**20:.0f} MiB from {got.group(4)}; the mirror fetched "
            f"{r['mirror_bytes_fetched_during_boot']} bytes upstream; agent: config generation {m.group(1)} "
            f"from the server → configured ({r['cut_boot_seconds']} s from power-on)")
        # a publish at central: not seen at the branch
        w.cli("config", "set", "/branch", "files", '[{path: /etc/netslate-sites, content: "two\\n"}]', json_out=False)
        r["gen2"] = w.cli("config", "publish", "-m", "sites: during the cut")["generation"]
        time.sleep(2)
        seen = w.branch_json(f"/api/v1/machines/{w.ids['machine']}/bundle")["payload"]["generation"]
        if seen != r["gen1"]:
            raise RuntimeError(f"the branch serves generation {seen} during the cut")
        say(f"published generation {r['gen2']} at central; the branch still serves generation {seen}")
        # an admin write at the branch: refused with the one line (twice: the second knows at once)
        token = (w.branch_data / "admin.token").read_text().strip()
        r["admin_write_seconds"] = []
        for _ in range(2):
            t = time.monotonic()
            code, body = w.get(lab.branch, w.branch_url + "/api/v1/sites", method="POST", body='{"name": "during-cut"}',
                               token=token)
            r["admin_write_seconds"].append(round(time.monotonic() - t, 2))
            detail = json.loads(body).get("detail", "") if body.startswith(b"{") else body.decode(errors="replace")
            if code != 503 or not detail.startswith(READ_ONLY):
                raise RuntimeError(f"an admin write at the branch answered {code}: {detail[:300]}")
        say(f"admin write at the branch: 503 \"{detail}\" ({r['admin_write_seconds'][0]} s, then "
            f"{r['admin_write_seconds'][1]} s)")
        events = w.wait("the VM's boot event and reports in the branch outbox", lambda: (lambda ev: ev if any(
            k == "fleet.report" and p.get("body", {}).get("phase") == "configured" for _i, k, p in ev) else None)(
            w.outbox_events()), 60)
        r["queued"] = events
        kinds: dict[str, int] = {}
        for _i, k, _p in events:
            kinds[k] = kinds.get(k, 0) + 1
        say(f"the branch outbox holds {len(events)} events: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))

    def restore():
        # the last events queued before the link returns (the agent keeps reporting)
        before = w.outbox_events()
        lab.restore()
        r["restored_at"] = time.monotonic()
        say("WAN restored")
        gen = w.wait("the publish replicated to the branch", lambda: (lambda g: g if g == r["gen2"] else None)(
            w.branch_json(f"/api/v1/machines/{w.ids['machine']}/bundle")["payload"]["generation"]), 120)
        r["replicated_seconds"] = round(time.monotonic() - r["restored_at"], 1)
        # the running agent's long-poll (agent.wait_seconds, 60 s by default) brings the new bundle; it
        # applies it and reports configured at the new generation (no reboot: one kernel start on the console)
        f = w.wait(f"{NAME} applied generation {r['gen2']} live", lambda: (lambda f: f if f.get(NAME, {}).get(
            "state") == "configured" and f[NAME].get("generation") == r["gen2"] else None)(w.central_fleet()), 240, poll=2)
        r["live_apply_seconds"] = round(time.monotonic() - r["restored_at"], 1)
        r["kernel_starts"] = w.vm.console.text().count("Linux version")
        if r["kernel_starts"] != 1:
            raise RuntimeError(f"the VM rebooted ({r['kernel_starts']} kernel starts) instead of applying live")
        say(f"generation {gen} at the branch {r['replicated_seconds']} s after the restore; {NAME} applied it live "
            f"(reported configured at generation {f[NAME]['generation']} through the branch, "
            f"{r['live_apply_seconds']} s after the restore, no reboot)")
        w.wait("the branch outbox drained", lambda: (lambda h: h if not h["read_only"] and
                                                     h["checks"]["central"]["outbox"]["pending"] == 0 else None)(
            w.branch_json("/healthz")), 120)
        time.sleep(1)
        ids = [i for i, _k, _p in before]
        c = central_counts(w.ctx(), w.ids["machine"], MAC, ids)
        boot_queued = sum(sum(1 for e in p.get("events", []) if e.get("mac") == MAC) for _i, k, p in before if k == "boot.events")
        rep_queued = [p["body"] for _i, k, p in before if k == "fleet.report" and p["body"].get("phase") != "heartbeat"]
        # the reports of the cut by (phase, generation): the same multiset at central (the agent's later
        # report, configured at generation 2, is another pair)
        pairs = Counter((b.get("phase"), b.get("generation")) for b in rep_queued)
        central_pairs = Counter((d.get("phase"), d.get("generation")) for d in c["reports"])
        at_central = {k: central_pairs.get(k, 0) for k in pairs}
        r["exactly_once"] = {"queued": len(ids), "applied": len(c["applied"]), "boot_events_queued": boot_queued,
                             "boot_events_central": c["boot_events"], "reports_queued": dict(pairs),
                             "reports_central": at_central}
        if set(c["applied"]) != set(ids) or any(o != "applied" for o in c["applied"].values()):
            raise RuntimeError(f"queued events not applied at central exactly once: {c['applied']} vs {ids}")
        if c["boot_events"] != boot_queued or boot_queued < 1:
            raise RuntimeError(f"boot events at central {c['boot_events']}, queued during the cut {boot_queued}")
        if at_central != dict(pairs) or not rep_queued:
            raise RuntimeError(f"reports at central by (phase, generation): {at_central}, queued during the cut {dict(pairs)}")
        f = w.wait("central's fleet view: configured at the new generation", lambda: (lambda f: f if f.get(NAME, {}).get(
            "state") == "configured" and f[NAME].get("generation") == r["gen2"] else None)(w.central_fleet()), 120)
        say(f"outbox drained: {len(ids)} events queued during the cut, each applied once at central "
            f"({boot_queued} boot event(s); reports by (phase, generation) queued {dict(pairs)}, audit rows at "
            f"central {at_central}); central's fleet view: {NAME} {f[NAME]['state']} at generation {f[NAME]['generation']}")

    def branch_dies():
        w.kill_branch()
        since = _utcnow()
        t0 = time.monotonic()
        w.boot_vm()
        f = w.wait(f"{NAME} configured through central", lambda: (lambda f: f if f.get(NAME, {}).get("state") == "configured"
                                                                   and (f[NAME].get("last_report") or "") > since else None)(
            w.central_fleet()), boot_timeout, poll=2)
        r["failover_boot_seconds"] = round(time.monotonic() - t0, 1)
        con = w.vm.console.text()
        got = re.search(ROOTFS_RE, con)
        if f"boot server {w.branch_url} did not answer" not in con or f"trying boot server {CENTRAL_URL}" not in con:
            raise RuntimeError(f"the loader did not fall back from the branch to central: {con[:3000]}")
        if not got or got.group(4) != CENTRAL_URL:
            raise RuntimeError(f"the rootfs did not come from central: {got.group(0) if got else con[-1500:]}")
        say(f"branch server killed; {NAME} rebooted: the loader found {w.branch_url} dead, chained central's "
            f"boot.ipxe, fleet@{got.group(1)} from {got.group(4)}, configured at generation {f[NAME]['generation']} "
            f"through central ({r['failover_boot_seconds']} s from power-on)")

    def branch_returns():
        w.start_branch()
        # the branch server registers at central again (its status every 5 s): central's locate answer
        # for the branch LAN lists it first again; the router's sites.ipxe tries it first anyway
        since = _utcnow()
        t0 = time.monotonic()
        vm = w.boot_vm()
        m = vm.wait_for(AGENT_RE, boot_timeout)
        r["return_boot_seconds"] = round(time.monotonic() - t0, 1)
        con = vm.console.text()
        got = re.search(ROOTFS_RE, con)
        if f"trying boot server {w.branch_url}" not in con or f"boot server {w.branch_url} did not answer" in con:
            raise RuntimeError(f"the loader did not take the branch's boot script: {con[:3000]}")
        if not got or got.group(4) != w.branch_url:
            raise RuntimeError(f"the rootfs did not come from the branch: {got.group(0) if got else con[-1500:]}")
        if (int(m.group(1)), m.group(2)) != (r["gen2"], "server"):
            raise RuntimeError(f"the agent applied {m.group(0)!r}, expected generation {r['gen2']} from the server")
        f = w.wait(f"{NAME} configured (central's fleet view)", lambda: (lambda f: f if f.get(NAME, {}).get(
            "state") == "configured" and (f[NAME].get("last_report") or "") > since else None)(w.central_fleet()), 120, poll=2)
        # the branch's own record: the VM's reports went through the branch server (it applied them at
        # central through its outbox path, origin branch1); central's own server leaves no such rows
        applied = w.wait("the VM's reports applied through the branch server", lambda: (lambda a: a if any(
            k == "fleet.report" for k, _t in a) else None)(applied_from(w.ctx(), BRANCH_SERVER, since)), 60)
        r["returned_through_branch"] = dict(Counter(k for k, _t in applied))
        say(f"branch server started again; {NAME} rebooted: the loader's first server, {w.branch_url}, answered; "
            f"fleet@{got.group(1)} from {got.group(4)}; agent: config generation {m.group(1)} from the server; "
            f"central's fleet view: {f[NAME]['state']} at generation {f[NAME]['generation']}; telemetry applied at "
            f"central by {BRANCH_SERVER} since the restart: {r['returned_through_branch']} "
            f"({r['return_boot_seconds']} s from power-on)")

    def revoked_key_refused():
        if w.branch_proc is None:
            w.start_branch()
        pub = w.cli("key", "revoke", "branch")  # at the root (central)
        w.wait("the revocation list reaches the branch", lambda: "revocations" in w.branch_json(
            f"/api/v1/machines/{w.ids['machine']}/bundle"), 60)
        t0 = time.monotonic()
        vm = w.boot_vm()
        m = vm.wait_for(r"locate answer refused: site key 1 for site branch is revoked[^\n]*", boot_timeout)
        r["revoked_seconds"] = round(time.monotonic() - t0, 1)
        con = vm.console.text()
        if re.search(AGENT_RE, con):
            raise RuntimeError("the agent applied a config from a revoked site key")
        say(f"revocation list {pub['number']} (site key 1 of branch) signed by the root, replicated to the branch; "
            f"{NAME} booted from the branch and its agent refused: {m.group(0).strip()!r} ({r['revoked_seconds']} s)")

    def forged_key_refused():
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from netslate.crypto.keys import SigningKey

        w.kill_branch()
        rogue = SigningKey(Ed25519PrivateKey.generate())  # another root
        cert, pem = rogue.issue_site_cert("branch", FORGED_SERIAL, 30)
        real = w.ctx().signing_key.public_bytes  # the real root: public, so a rogue server pins it too
        w.start_forged_branch(cert, pem, real)
        env = w.branch_json("/api/v1/locate?signed=true")
        if env.get("chain", [{}])[0].get("payload", {}).get("serial") != FORGED_SERIAL:
            raise RuntimeError(f"the forged branch's locate answer does not carry its certificate: {str(env)[:400]}")
        since = _utcnow()
        t0 = time.monotonic()
        vm = w.boot_vm()
        m = vm.wait_for(r"locate answer refused: site certificate not signed by the pinned root[^\n]*", boot_timeout)
        r["forged_seconds"] = round(time.monotonic() - t0, 1)
        time.sleep(5)  # the agent's report (if it sent one) would have reached the branch by now
        con = vm.console.text()
        cmdline = re.search(r"Command line: ([^\n]*)", con)
        if not cmdline or f"netslate.server={w.branch_url} " not in cmdline.group(1) + " " \
                or f"netslate.key={r['root']} " not in cmdline.group(1) + " ":
            raise RuntimeError(f"the forged branch's boot script does not pin the real root: {cmdline and cmdline.group(0)}")
        got = re.search(ROOTFS_RE, con)
        if not got or got.group(4) != w.branch_url:
            raise RuntimeError(f"the VM did not boot the (root-signed) image from the forged branch: {con[-1500:]}")
        if re.search(AGENT_RE, con):
            raise RuntimeError("the agent applied a config from a site key certified by another root")
        applied = applied_from(w.ctx(), BRANCH_SERVER, since)
        if any(k == "fleet.report" for k, _t in applied):
            raise RuntimeError(f"the VM reported through the forged branch: {applied}")
        r["forged_branch_applied"] = dict(Counter(k for k, _t in applied))
        say(f"a branch server pinning the real root (boot script netslate.key= the real root) but signing with a site "
            f"key (serial {FORGED_SERIAL}) certified by another root: {NAME} booted the root-signed fleet@{got.group(1)} "
            f"from it and its agent refused: {m.group(0).strip()[:160]!r}; no configuration applied, no report through "
            f"the branch ({r['forged_seconds']} s)")

    return [
        ("central + branch: PostgreSQL primary and standby, two netslate servers, the branch mirror, "
         "the branch router, the fleet image", build),
        ("WAN cut: a VM at the branch PXE-boots from the branch and configures; a publish at central is not "
         "seen; an admin write at the branch fails with the read-only line", boot_during_cut),
        ("WAN back: the publish reaches the branch and the VM applies it live; every event of the cut "
         "reaches central exactly once", restore),
        ("branch server killed: the VM reboots and boots and configures from central", branch_dies),
        ("branch server back: the VM's next boot and its agent's reports go to the branch again", branch_returns),
        ("a revoked site key at the branch: the booting VM's agent refuses it", revoked_key_refused),
        ("a branch server pinning the real root but signing with a site key certified by another root: the "
         "booting VM's agent refuses its certificate", forged_key_refused),
    ]


def main() -> int:
    import tempfile

    if os.geteuid() != 0:
        print("make demo-sites needs root (network namespaces, PostgreSQL, QEMU taps)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="netslate-demo-sites-"))
    w = SitesWorld(work)
    t0 = time.monotonic()
    try:
        steps = sites_steps(w, lambda s: print("   " + s, flush=True))
        for i, (title, fn) in enumerate(steps, 1):
            print(f"== {i}. {title}", flush=True)
            fn()
        print(f"demo-sites done in {time.monotonic() - t0:.0f} s (logs in {work})")
        return 0
    except Exception as exc:  # one line, then where the logs are
        print(f"demo-sites failed: {exc}\n(logs in {work})", file=sys.stderr)
        return 1
    finally:
        w.close()


if __name__ == "__main__":
    raise SystemExit(main())
