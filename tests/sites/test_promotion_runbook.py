"""Issue 15 §4: docs/sites.md's runbook "promote a branch when the central site is lost", steps 1-7,
and the libpq multi-host write URL (`target_session_attrs=read-write`), with real parts, no VMs.

Three namespaces: central A (the primary), branch B (a streaming standby, the lab's) and a second
branch C (a standby of A made here), with links A-B (the lab's WAN), A-C and B-C. A real `netslate
serve` at B (standby B, writes to A) and at C (standby C, writes through the multi-host URL
"A,B?target_session_attrs=read-write"). Before the disaster, B is cut off while central still writes:
C replays WAL that B never gets, so after B's promotion C is past B's promotion point and needs
`pg_rewind` (shown by the LSNs and by the standby's own refusal to follow B without it); a third
branch's standby D (beside C, down since before the cut) only needs re-pointing. The old central is
rebuilt as a standby of B with `pg_rewind` and is never a second primary.

The same world, before the disaster, also checks issue 15 §1 paths that had no test: desktop
session events queued at B during a cut (exactly once at central after it), and the web console's
read-only banner and replica column in the shared headless Chromium."""

import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from netslate.context import Context
from netslate.sites.lab import BRANCH_ADDR, CENTRAL_ADDR, PG_PORT, NsWorker, SitesLab, _run


PORT = 8080  # inside each lab namespace
# the second branch's links: to central (10.77.1.0/30) and to branch B (10.77.2.0/30)
A_ON_AC, C_ON_AC = "10.77.1.1", "10.77.1.2"
B_ON_BC, C_ON_BC = "10.77.2.1", "10.77.2.2"
SLOT_C = "branch_c"
SLOT_D, PORT_D = "branch_d", 5433  # a third branch's standby, in C's namespace on its own port
CLIENT_AT_C = "10.77.3.10"  # a machine in site c's subnet
MAC1 = "52:54:00:15:05:01"
BOUNDS = "connect_timeout=2 keepalives=1 keepalives_idle=5 keepalives_interval=2 keepalives_count=2"
ENV = {"NETSLATE_CENTRAL_CONNECT_TIMEOUT": "2", "NETSLATE_CENTRAL_STATEMENT_TIMEOUT": "10",
       "NETSLATE_CENTRAL_RETRY_AFTER": "2"}


def _wait(what: str, probe, timeout: float = 90, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (httpx.HTTPError, RuntimeError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


class ThreeSites(SitesLab):
    """The sites lab plus a second branch namespace C linked to central and to branch B."""

    def __init__(self):
        # wal_log_hints: pg_rewind needs it (or data checksums) on the server it rewinds; wal_keep_size:
        # it also reads the target's WAL back to the last checkpoint before the fork, which a standby's
        # restartpoint had already removed without it (seen here: "could not find previous WAL record")
        super().__init__(settings={"primary": {"listen_addresses": "*", "wal_log_hints": "on", "wal_keep_size": "256MB"},
                                   "standby": {"listen_addresses": "*"}})
        self.third = f"nsd-{self.suffix}"
        self.c_dir = self.base / "standby-c"
        self.d_dir = self.base / "standby-d"
        self.links = [(f"xa{self.suffix}", f"xc{self.suffix}"), (f"yb{self.suffix}", f"yc{self.suffix}")]

    def _net(self) -> None:
        super()._net()
        _run(["ip", "netns", "add", self.third])
        _run(["ip", "-n", self.third, "link", "set", "lo", "up"])
        for (near, far), ns, near_addr, far_addr in ((self.links[0], self.central, A_ON_AC, C_ON_AC),
                                                     (self.links[1], self.branch, B_ON_BC, C_ON_BC)):
            _run(["ip", "link", "add", near, "type", "veth", "peer", "name", far])
            _run(["ip", "link", "set", near, "netns", ns])
            _run(["ip", "link", "set", far, "netns", self.third])
            _run(["ip", "-n", ns, "addr", "add", f"{near_addr}/30", "dev", near])
            _run(["ip", "-n", self.third, "addr", "add", f"{far_addr}/30", "dev", far])
            _run(["ip", "-n", ns, "link", "set", near, "up"])
            _run(["ip", "-n", self.third, "link", "set", far, "up"])

    def _primary(self) -> None:
        super()._primary()
        with open(self.primary_dir / "pg_hba.conf", "a") as f:  # copied to every standby by pg_basebackup
            f.write("host all all 10.77.0.0/16 trust\nhost replication all 10.77.0.0/16 trust\n")
        self.psql(self.central, "SELECT pg_reload_conf()")

    def node_conf(self, datadir: Path, sock: str, listen: str, primary: str, slot: str, port: int = PG_PORT) -> None:
        """What is this node's own (pg_basebackup and pg_rewind copy the source's postgresql.auto.conf)."""
        self._conf(datadir, {
            "listen_addresses": listen, "port": port, "unix_socket_directories": sock,
            "primary_conninfo": f"host={primary} port={PG_PORT} user=postgres application_name={slot} {BOUNDS}",
            "primary_slot_name": slot, "hot_standby": "on", "wal_receiver_timeout": "5s",
            "wal_retrieve_retry_interval": "1s", "wal_receiver_status_interval": "1s", "hot_standby_feedback": "on"})

    def start_standby(self, datadir: Path, slot: str, port: int) -> None:
        """A standby in the third namespace: pg_basebackup from central over the A-C link, its own slot."""
        self.psql(self.central, f"SELECT pg_create_physical_replication_slot('{slot}')")
        datadir.mkdir(mode=0o700)
        sock = self.base / f"{datadir.name}-sock"
        sock.mkdir(mode=0o700)
        for d in (datadir, sock):
            _run(["chown", "postgres:postgres", str(d)])
        self.pg(self.third, str(self.bin / "pg_basebackup"), "-h", A_ON_AC, "-p", str(PG_PORT), "-U", "postgres",
                "-D", str(datadir), "-R", "-S", slot, "-X", "stream", "-c", "fast")
        self.node_conf(datadir, str(sock), "127.0.0.1", A_ON_AC, slot, port)
        self._start_pg(self.third, datadir, f"{datadir.name}.log")

    def start_c(self) -> None:
        self.start_standby(self.c_dir, SLOT_C, PG_PORT)  # branch C's standby (its netslate server reads it)
        self.start_standby(self.d_dir, SLOT_D, PORT_D)  # a third branch's standby, down when central is lost

    def start_pg(self, ns: str, datadir: Path, log: str) -> None:
        try:
            self._start_pg(ns, datadir, log)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}: {(self.base / log).read_text()[-2000:]}") from None

    def stop(self) -> None:
        for p in self.procs:  # the servers first (they hold connections)
            if p.poll() is None:
                p.terminate()
        for d in (self.c_dir, self.d_dir):
            if (d / "postmaster.pid").exists():
                self.pg(self.third, str(self.bin / "pg_ctl"), "-D", str(d), "-m", "immediate", "stop", check=False)
        _run(["ip", "netns", "del", self.third], check=False)
        super().stop()


class World:
    def __init__(self, lab: ThreeSites, tmp: Path):
        self.lab, self.tmp = lab, tmp
        self.workers = {ns: NsWorker(ns) for ns in (lab.central, lab.branch, lab.third)}
        self.procs: dict[str, subprocess.Popen] = {}
        self.data = {"b": tmp / "b", "c": tmp / "c"}
        for d in self.data.values():
            d.mkdir()

    def ns(self, site: str) -> str:
        return {"a": self.lab.central, "b": self.lab.branch, "c": self.lab.third, "d": self.lab.third}[site]

    def sql(self, site: str, q: str) -> str:
        if site == "d":
            return self.lab.pg(self.lab.third, str(self.lab.bin / "psql"), "-h", "127.0.0.1", "-p", str(PORT_D),
                               "-U", "postgres", "-At", "-c", q).stdout.strip()
        return self.lab.psql(self.ns(site), q)

    def http(self, site: str, method: str, path: str, auth: bool = False, **kw) -> httpx.Response:
        token = (self.data[site] / "admin.token").read_text().strip() if auth else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}

        def go():
            with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=30) as c:
                return c.request(method, path, headers=headers, **kw)
        return self.workers[self.ns(site)].call(go)

    def serve(self, site: str, *db_args: str, advertise: str, name: str, site_name: str) -> None:
        log = self.tmp / f"serve-{site}.log"
        self.procs[site] = self.lab.netslate(
            self.ns(site), "serve", "--listen", f"0.0.0.0:{PORT}", "--data-dir", str(self.data[site]), *db_args,
            "--site", site_name, "--advertise", advertise, "--server-name", name, log=log, env=ENV)

    def wait_up(self, site: str) -> None:
        try:
            _wait(f"server at {site} answers /healthz", lambda: self.http(site, "GET", "/healthz").status_code == 200,
                  timeout=120)
        except AssertionError:
            raise AssertionError((self.tmp / f"serve-{site}.log").read_text()[-3000:]) from None

    def restart(self, site: str, *db_args: str, **kw) -> None:
        p = self.procs[site]
        p.terminate()
        p.wait(30)
        self.serve(site, *db_args, **kw)
        self.wait_up(site)

    def has_site(self, site: str, name: str) -> bool:
        return self.sql(site, f"SELECT count(*) FROM discovery_sites WHERE name = '{name}'") == "1"

    def replayed(self, site: str, lsn: str) -> bool:
        return self.sql(site, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t"

    def add_site(self, site: str, name: str) -> httpx.Response:
        return self.http(site, "POST", "/api/v1/sites", auth=True, json={"name": name})


def _setup_central(ctx: Context) -> int:
    import uuid

    from netslate import inventory
    from netslate.desktops.models import Desktop
    from netslate.discovery import store as sites

    ctx.init()
    sites.add_site(ctx, "branch", actor="local:test")
    sites.add_subnet(ctx, "branch", "10.77.4.0/24", actor="local:test")
    sites.add_site(ctx, "c", actor="local:test")
    sites.add_subnet(ctx, "c", "10.77.3.0/24", actor="local:test")
    inventory.add_machine(ctx, [MAC1], name="pc1", actor="local:test")
    with ctx.db.session() as s:  # a desktop as the pool actuator leaves it (no VM needed for its sessions)
        d = Desktop(name="ns-lab-1", pool_name="lab", number=1, host="local", uuid=str(uuid.uuid4()),
                    mac="52:54:00:15:05:11", state="ready", golden_version=1, disk="/nonexistent")
        s.add(d)
        s.flush()
        return d.id


def _desktop_at_central(ctx: Context, desktop_id: int) -> tuple[str, str | None, int, int]:
    from sqlalchemy import func, select

    from netslate.desktops.models import Desktop
    from netslate.store.models import AuditEntry

    with ctx.db.session() as s:
        d = s.get(Desktop, desktop_id)
        n = {a: s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == a, AuditEntry.target == d.name)) for a in ("desktop.logon", "desktop.logoff")}
        return d.state, d.user, n["desktop.logon"], n["desktop.logoff"]


def _add_site(ctx: Context, name: str) -> None:
    from netslate.discovery import store as sites

    sites.add_site(ctx, name, actor="local:test")


# C writes through libpq's multi-host form: central first, then branch B; read-write picks the primary
MULTI_HOST = f"postgresql+psycopg://postgres@{A_ON_AC},{B_ON_BC}/postgres?target_session_attrs=read-write"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    lab = ThreeSites().start()
    w = World(lab, tmp_path_factory.mktemp("promotion"))
    try:
        lab.start_c()
        w.cctx = Context(w.tmp / "central", lab.primary_url_central)
        w.desktop = w.workers[lab.central].call(_setup_central, w.cctx)
        lab.wait_replayed()
        _wait("C replayed the schema", lambda: w.replayed("c", w.sql("a", "SELECT pg_current_wal_lsn()")))
        w.serve("b", "--db-read", lab.standby_url_branch, "--db-write", lab.primary_url_branch,
                advertise=BRANCH_ADDR, name="branch1", site_name="branch")
        w.serve("c", "--db-read", f"postgresql+psycopg://postgres@127.0.0.1:{PG_PORT}/postgres",
                "--db-write", MULTI_HOST, advertise=C_ON_BC, name="branchc1", site_name="c")
        w.wait_up("b")
        w.wait_up("c")
        yield w
    finally:
        for wk in w.workers.values():
            wk.close()
        lab.stop()


def test_multi_host_write_url_writes_to_the_primary(world):
    """Before any failover: C's writes go to central A (B, listed second, is a standby)."""
    w = world
    assert w.sql("b", "SELECT pg_is_in_recovery()") == "t"
    r = w.add_site("c", "via-c-before")
    assert r.status_code == 201, r.text
    assert w.has_site("a", "via-c-before")  # committed on A, the only primary
    h = w.http("c", "GET", "/healthz").json()
    assert h["read_only"] is False and h["checks"]["central"]["standby"] is True


def test_desktop_session_events_queued_during_a_cut(world):
    """Issue 15 §1: desktop logon/logoff (what the agent in the desktop posts) at branch B during a
    WAN cut are answered, queued in B's outbox and applied at central exactly once, in order."""
    w, lab = world, world.lab
    at_central = lambda: w.workers[lab.central].call(_desktop_at_central, w.cctx, w.desktop)  # noqa: E731
    assert at_central() == ("ready", None, 0, 0)
    lab.cut()
    try:
        for event in ("logon", "logoff", "logon"):
            r = w.http("b", "POST", f"/api/v1/desktops/{w.desktop}/session", auth=True,
                       json={"event": event, "user": "alice"})
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "ready"  # queued: the desktop as the standby has it
        h = w.http("b", "GET", "/healthz").json()
        assert h["read_only"] is True and h["checks"]["central"]["outbox"]["pending"] == 3
        assert at_central() == ("ready", None, 0, 0)
    finally:
        lab.restore()
    _wait("B's outbox drained", lambda: (lambda h: not h["read_only"] and h["checks"]["central"]["outbox"]["pending"] == 0)(
        w.http("b", "GET", "/healthz").json()))
    assert at_central() == ("in_use", "alice", 2, 1)
    time.sleep(2)  # a second replay would have landed by now
    assert at_central() == ("in_use", "alice", 2, 1)
    lab.wait_replayed()
    r = w.http("b", "GET", f"/api/v1/desktops/{w.desktop}", auth=True)
    assert r.status_code == 200 and r.json()["state"] == "in_use" and r.json()["user"] == "alice"


class Forward:
    """127.0.0.1:<port> here (the root namespace, where the shared browser lives) → 127.0.0.1:8080
    inside a lab namespace: each connection's far socket is made by a thread inside that namespace."""

    def __init__(self, ns: str):
        self.worker = NsWorker(ns)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                near, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                far = self.worker.call(socket.create_connection, ("127.0.0.1", PORT), 10, timeout=15)
            except OSError:
                near.close()
                continue
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        a.settimeout(120)
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.worker.close()


PAGES = ["/", "/machines", "/images", "/config", "/sites", "/pools", "/audit"]


def test_web_console_shows_read_only_banner_and_lag(world, page):
    """Issue 15 §1 in the web console (the shared headless Chromium): branch B's pages carry the
    banner "read-only since HH:MM — central site unreachable" during a cut, none otherwise; the
    servers table on /sites shows each branch server's replica state (lag, READ-ONLY)."""
    from selenium.webdriver.common.by import By

    from webworld import wait_for

    w, lab = world, world.lab
    fwd = Forward(lab.branch)
    url = f"http://127.0.0.1:{fwd.port}"
    token = (w.data["b"] / "admin.token").read_text().strip()
    page.execute_cdp_cmd("Network.enable", {})
    page.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {token}"}})

    def replica(name: str) -> str:
        return page.find_element(By.CSS_SELECTOR, f"#servers tr[data-server='{name}'] td.replica").text

    try:
        page.get(url + "/sites")
        wait_for(page, "#servers")
        assert not page.find_elements(By.ID, "read-only")
        assert re.fullmatch(r"lag [0-9.]+ s", replica("branch1")), replica("branch1")  # its own, live
        _wait("C's status reached central", lambda: w.http("b", "GET", "/api/v1/servers", auth=True).json())
        page.get(url + "/sites")
        assert re.match(r"(lag [0-9.]+ s|standby)", replica("branchc1")), replica("branchc1")  # as C reported it
        lab.cut()
        try:
            _wait("B knows it is read-only", lambda: w.http("b", "GET", "/healthz").json()["read_only"], timeout=60)
            for path in PAGES:
                page.get(url + path)
                banner = wait_for(page, "#read-only")
                assert re.fullmatch(r"read-only since \d\d:\d\d — central site unreachable", banner.text), (path, banner.text)
                assert page.find_element(By.ID, "main")  # the page itself still renders (reads from the standby)
            page.get(url + "/sites")
            assert replica("branch1").startswith("READ-ONLY"), replica("branch1")
        finally:
            lab.restore()
        _wait("B writable again", lambda: not w.http("b", "GET", "/healthz").json()["read_only"], timeout=60)
        page.get(url + "/")
        wait_for(page, "#main")
        assert not page.find_elements(By.ID, "read-only")
    finally:
        page.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
        fwd.close()


def _switchpoint(w: World, timeline: int) -> str:
    """Where B's new timeline forked off the old one (its timeline history file)."""
    hist = w.sql("b", f"SELECT pg_read_file('pg_wal/{timeline:08X}.history')")
    return hist.strip().splitlines()[-1].split()[1]


def _lsn_gt(w: World, a: str, b: str) -> bool:
    return w.sql("b", f"SELECT '{a}'::pg_lsn > '{b}'::pg_lsn") == "t"


def _rewind(w: World, site: str, datadir: Path, source: str) -> str:
    """Stop the server at `site` (cleanly) and pg_rewind it from B; -R writes standby.signal.
    Returns the postgresql.auto.conf it left."""
    lab = w.lab
    if (datadir / "postmaster.pid").exists():
        lab.pg(w.ns(site), str(lab.bin / "pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "stop")
    out = lab.pg(w.ns(site), str(lab.bin / "pg_rewind"), "-D", str(datadir), "-R",
                 f"--source-server=host={source} port={PG_PORT} user=postgres dbname=postgres", timeout=300)
    assert "Done!" in out.stderr + out.stdout, out.stderr  # not "no rewind required"
    assert (datadir / "standby.signal").exists()  # -R
    return (datadir / "postgresql.auto.conf").read_text()


def test_runbook_promote_branch_b_and_rebuild_the_others(world):
    """docs/sites.md, "Runbook: promote a branch when the central site is lost", steps 1-7."""
    w, lab = world, world.lab

    # -- the disaster: B is cut off, central keeps writing (C gets it, B never will), then central is lost
    r = w.add_site("b", "before-cut")
    assert r.status_code == 201, r.text
    lab.wait_replayed()
    # D's standby goes down now (a branch whose standby was off or behind when central was lost)
    _wait("D replayed the same", lambda: w.replayed("d", w.sql("a", "SELECT pg_current_wal_lsn()")))
    assert w.has_site("d", "before-cut")
    lab.pg(lab.third, str(lab.bin / "pg_ctl"), "-D", str(lab.d_dir), "-m", "fast", "-w", "stop")
    lab.cut()
    w.workers[lab.central].call(_add_site, Context(w.tmp / "central", lab.primary_url_central), "lost-at-central")
    lost_lsn = w.sql("a", "SELECT pg_current_wal_lsn()")
    _wait("C replayed central's last write", lambda: w.replayed("c", lost_lsn))
    assert w.has_site("c", "lost-at-central") and not w.has_site("b", "lost-at-central")

    # 1. fence the old primary (here: it stops; its data directory stays for step 7), and the site
    # goes silent towards C (its end of the A-C link down: C's packets to it vanish, as in a real loss,
    # so C's multi-host URL waits out the connect time-out on A before it tries B)
    lab.pg(lab.central, str(lab.bin / "pg_ctl"), "-D", str(lab.primary_dir), "-m", "fast", "-w", "stop")
    _run(["ip", "-n", lab.central, "link", "set", lab.links[0][0], "down"])
    a_checkpoint = re.search(r"Latest checkpoint location:\s+(\S+)",
                             lab.pg(lab.central, str(lab.bin / "pg_controldata"), str(lab.primary_dir)).stdout).group(1)
    lab.restore()  # the WAN is back, central's PostgreSQL stays down
    # no primary anywhere now: C's server (multi-host URL) is read-only, with the one line
    r = w.add_site("c", "no-primary")
    assert r.status_code == 503 and "central site unreachable" in r.json()["detail"], r.text

    # 2. promote B's standby
    assert w.sql("b", "SELECT pg_promote(wait => true)") == "t"
    assert w.sql("b", "SELECT pg_is_in_recovery()") == "f"
    timeline = int(w.sql("b", "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), 16)
    assert timeline == 2
    fork = _switchpoint(w, timeline)

    # 3. B's server restarts as a central server (one URL, no --db-read)
    w.restart("b", "--database-url", lab.standby_url_branch, advertise=BRANCH_ADDR, name="branch1", site_name="branch")
    # 4. check: writable, a test write read back
    h = w.http("b", "GET", "/healthz").json()
    assert h["read_only"] is False and "central" not in h["checks"]
    assert w.add_site("b", "promote-check").status_code == 201
    assert w.http("b", "GET", "/api/v1/sites/promote-check", auth=True).status_code == 200

    # 5. the other branch C. Its write URL lists B too: writes reach B with no restart (multi-host).
    r = _wait("a write through C lands on B", lambda: (lambda r: r if r.status_code == 201 else None)(w.add_site("c", "via-c-after")),
              timeout=60, interval=1)
    assert w.has_site("b", "via-c-after")
    # a slot for C on B, reserving WAL from now
    w.sql("b", f"SELECT pg_create_physical_replication_slot('{SLOT_C}', true)")
    # does C need pg_rewind? It replayed past B's fork point on the old timeline: yes.
    c_replayed = w.sql("c", "SELECT pg_last_wal_replay_lsn()")
    assert _lsn_gt(w, c_replayed, fork), (c_replayed, fork)
    # re-pointing alone is refused by C itself (its history has WAL that B's timeline has not)
    w.sql("c", f"ALTER SYSTEM SET primary_conninfo = 'host={B_ON_BC} port={PG_PORT} user=postgres "
               f"application_name={SLOT_C} {BOUNDS}'")
    w.sql("c", f"ALTER SYSTEM SET primary_slot_name = '{SLOT_C}'")
    w.sql("c", "SELECT pg_reload_conf()")
    c_log = lab.base / "standby-c.log"
    _wait("C refuses to follow B without a rewind",
          lambda: re.search(r"forked off current database system timeline 1 before current recovery point"
                            r"|is not in this server's history", c_log.read_text()),
          timeout=60, interval=0.5)
    assert not w.has_site("c", "promote-check")
    # so: pg_rewind C from B. First a CHECKPOINT on B: until the promotion's own (spread) checkpoint
    # ends, B's control file still says timeline 1 and pg_rewind answers "no rewind required" (seen
    # here: C then refused to start, "requested timeline 2 is not a child of this server's history").
    w.sql("b", "CHECKPOINT")
    conf = _rewind(w, "c", lab.c_dir, B_ON_BC)
    assert "primary_slot_name = 'branch_b'" in conf  # B's file came along: C's own values must be set again
    lab.node_conf(lab.c_dir, str(lab.base / "standby-c-sock"), "127.0.0.1", B_ON_BC, SLOT_C)
    lab.start_pg(lab.third, lab.c_dir, "standby-c.log")
    assert w.sql("c", "SELECT pg_is_in_recovery()") == "t"
    b_now = w.sql("b", "SELECT pg_current_wal_lsn()")
    _wait("C follows B", lambda: w.replayed("c", b_now), timeout=60)
    assert w.has_site("c", "promote-check") and w.has_site("c", "via-c-after")
    assert not w.has_site("c", "lost-at-central")  # rewound away with the lost central
    assert w.sql("b", f"SELECT active FROM pg_replication_slots WHERE slot_name = '{SLOT_C}'") == "t"
    # C's server reads from its standby again and writes to B
    r = _wait("C's server writable", lambda: (lambda r: r if r.status_code == 201 else None)(w.add_site("c", "via-c-rewound")),
              timeout=60, interval=1)
    assert w.http("c", "GET", "/api/v1/sites/via-c-rewound", auth=True).status_code == 200  # read-your-writes

    # 5 again, for D: it comes back (still pointing at the lost central) and is not past the fork
    # point, so re-pointing it is all it needs: it follows B's new timeline by itself
    lab.start_pg(lab.third, lab.d_dir, "standby-d.log")
    d_replayed = w.sql("d", "SELECT pg_last_wal_replay_lsn()")
    assert not _lsn_gt(w, d_replayed, fork), (d_replayed, fork)
    w.sql("b", f"SELECT pg_create_physical_replication_slot('{SLOT_D}', true)")
    w.sql("d", f"ALTER SYSTEM SET primary_conninfo = 'host={B_ON_BC} port={PG_PORT} user=postgres "
               f"application_name={SLOT_D} {BOUNDS}'")
    w.sql("d", f"ALTER SYSTEM SET primary_slot_name = '{SLOT_D}'")
    w.sql("d", "SELECT pg_reload_conf()")
    b_now = w.sql("b", "SELECT pg_current_wal_lsn()")
    _wait("D follows B after a re-point (no rewind)", lambda: w.replayed("d", b_now), timeout=60)
    assert w.has_site("d", "via-c-rewound") and not w.has_site("d", "lost-at-central")
    assert w.sql("d", "SELECT pg_is_in_recovery()") == "t"
    assert w.sql("b", f"SELECT active FROM pg_replication_slots WHERE slot_name = '{SLOT_D}'") == "t"

    # 6. machines at C locate B's server as the central (writable) site: C's own first, B second
    def order():
        ans = w.http("c", "GET", "/api/v1/locate", params={"address": CLIENT_AT_C}).json()
        got = [(s["name"], s["priority"]) for s in ans["servers"]]
        names = [n for n, _ in got]
        if names[:2] == ["branchc1", "branch1"] and 10 <= got[1][1] <= 19:
            return ans
        return None
    ans = _wait("locate at C lists C, then B as central", order, timeout=60, interval=1)
    assert ans["site"] == "c" and 0 <= ans["servers"][0]["priority"] <= 9

    # 7. the old central returns: never as a primary. It is past the fork too; rebuilt as B's standby.
    assert _lsn_gt(w, a_checkpoint, fork), (a_checkpoint, fork)
    w.sql("b", "SELECT pg_create_physical_replication_slot('central', true)")
    conf = _rewind(w, "a", lab.primary_dir, BRANCH_ADDR)
    assert "primary_slot_name = 'branch_b'" in conf and "standby-sock" in conf  # B's, not the old central's
    # pg_rewind may bring the source's postgresql.auto.conf (here: B's socket directory and its old
    # slot name branch_b): set the node's own values again before it starts
    lab.node_conf(lab.primary_dir, str(lab.base), f"127.0.0.1,{CENTRAL_ADDR},{A_ON_AC}", BRANCH_ADDR, "central")
    lab.start_pg(lab.central, lab.primary_dir, "primary.log")
    assert w.sql("a", "SELECT pg_is_in_recovery()") == "t"
    b_now = w.sql("b", "SELECT pg_current_wal_lsn()")
    _wait("the old central follows B", lambda: w.replayed("a", b_now), timeout=60)
    for name in ("promote-check", "via-c-after", "via-c-rewound"):
        assert w.has_site("a", name), name
    assert not w.has_site("a", "lost-at-central")
    refused = lab.pg(lab.central, str(lab.bin / "psql"), "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres",
                     "-At", "-c", "INSERT INTO discovery_sites (name, description) VALUES ('second-primary', '')",
                     check=False)
    assert refused.returncode != 0 and "read-only transaction" in refused.stderr
    # and C's multi-host URL, which still lists A first, keeps writing to B
    assert w.add_site("c", "after-rebuild").status_code == 201
    assert w.has_site("b", "after-rebuild")


def test_multi_host_url_with_ports_is_one_clear_error():
    """SQLAlchemy's URL reads one port: "a:5432,b:5432" in the host part is refused with one line
    that shows the form that works (the URL's password is not repeated)."""
    from netslate.errors import UserError
    from netslate.store.db import Database

    with pytest.raises(UserError, match=r"invalid database URL .*host=a:5432&host=b:5432") as err:
        Database("postgresql+psycopg://u:s3cret@a:5432,b:5432/db", "postgresql+psycopg://u@127.0.0.1/db")
    assert "s3cret" not in str(err.value)
    # the working forms build an engine (no connection is made here)
    Database("postgresql+psycopg://u@/db?host=a:5432&host=b:5433&target_session_attrs=read-write",
             "postgresql+psycopg://u@127.0.0.1/db")
    Database(MULTI_HOST, "postgresql+psycopg://u@127.0.0.1/db")
