"""A central site and a branch site on one host, for tests, benchmarks and the docs' runbook.

Two network namespaces (central, branch) joined by a veth pair, the "WAN", which `cut()` takes
down and `restore()` brings back. In central: a real PostgreSQL primary; in branch: a real hot
standby made with `pg_basebackup -R` on its own replication slot (`max_slot_wal_keep_size`),
streaming over the WAN. Every name (namespaces, links, directories) carries a random suffix; all
addresses live inside the two namespaces this lab makes.

`in_ns(ns, fn)` runs `fn` in a thread that joined the namespace (setns(2) is per thread for the
network namespace): sockets, database connections and HTTP clients it makes live there.
`NsWorker` keeps one such thread for a Context whose connection pool must stay in one namespace.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netslate.vmlab.net import _Namespace

CLONE_NEWNET = 0x40000000
CENTRAL_ADDR = "10.77.0.1"
BRANCH_ADDR = "10.77.0.2"
PG_PORT = 5432  # inside the lab's own namespaces: no clash with anything else
SLOT = "branch_b"


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin")) if Path("/usr/lib/postgresql").exists() else []
    if not found:
        raise RuntimeError("PostgreSQL server binaries missing: scripts/install-deps.sh installs postgresql")
    return found[-1]


def _run(argv: list[str], check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def _setns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class NsWorker:
    """One thread inside a namespace; `call(fn, *args)` runs there and returns the result."""

    def __init__(self, ns: str):
        self.ns = ns
        self._pool = concurrent.futures.ThreadPoolExecutor(1, initializer=_setns, initargs=(ns,))

    def call(self, fn, *args, timeout: float = 300, **kw):
        return self._pool.submit(fn, *args, **kw).result(timeout=timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def in_ns(ns: str, fn, *args, timeout: float = 300, **kw):
    w = NsWorker(ns)
    try:
        return w.call(fn, *args, timeout=timeout, **kw)
    finally:
        w.close()


class SitesLab:
    """central + branch namespaces, the WAN veth, a PostgreSQL primary and a streaming standby."""

    def __init__(self, base: Path | None = None, settings: dict | None = None):
        self.suffix = secrets.token_hex(3)
        self.central = f"nsc-{self.suffix}"
        self.branch = f"nsb-{self.suffix}"
        self.wan_c = f"wc{self.suffix}"
        self.wan_b = f"wb{self.suffix}"
        # outside pytest's 0700 tree: PostgreSQL runs as the postgres user
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix=f"netslate-sites-{self.suffix}-"))
        os.chmod(self.base, 0o777)
        self.primary_dir = self.base / "primary"
        self.standby_dir = self.base / "standby"
        self.settings = settings or {}
        self.bin = pg_bin()
        self.procs: list[subprocess.Popen] = []
        self.lans: list["BranchLan"] = []

    # ---- URLs (each valid inside the namespace named)
    @property
    def primary_url_central(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{PG_PORT}/postgres"

    @property
    def primary_url_branch(self) -> str:
        return f"postgresql+psycopg://postgres@{CENTRAL_ADDR}:{PG_PORT}/postgres"

    @property
    def standby_url_branch(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{PG_PORT}/postgres"

    def ns_cmd(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def pg(self, ns: str, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return _run(self.ns_cmd(ns, ["runuser", "-u", "postgres", "--", *argv]), check=check, timeout=timeout)

    def psql(self, ns: str, sql: str, host: str = "127.0.0.1") -> str:
        return self.pg(ns, str(self.bin / "psql"), "-h", host, "-p", str(PG_PORT), "-U", "postgres", "-At",
                       "-c", sql).stdout.strip()

    # ---- the network
    def _net(self) -> None:
        for ns in (self.central, self.branch):
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "link", "add", self.wan_c, "type", "veth", "peer", "name", self.wan_b])
        _run(["ip", "link", "set", self.wan_c, "netns", self.central])
        _run(["ip", "link", "set", self.wan_b, "netns", self.branch])
        _run(["ip", "-n", self.central, "addr", "add", f"{CENTRAL_ADDR}/30", "dev", self.wan_c])
        _run(["ip", "-n", self.branch, "addr", "add", f"{BRANCH_ADDR}/30", "dev", self.wan_b])
        _run(["ip", "-n", self.central, "link", "set", self.wan_c, "up"])
        _run(["ip", "-n", self.branch, "link", "set", self.wan_b, "up"])

    def cut(self) -> None:
        """The WAN goes dark: the central end of the link goes down, so the branch's packets vanish
        (a silent drop, not a refusal: every client's time-outs are what bounds the wait)."""
        _run(["ip", "-n", self.central, "link", "set", self.wan_c, "down"])

    def restore(self) -> None:
        _run(["ip", "-n", self.central, "link", "set", self.wan_c, "up"])
        for lan in self.lans:  # the kernel dropped the routes through the link when it went down
            self._route_lan(lan)

    def _route_lan(self, lan: "BranchLan") -> None:
        _run(["ip", "-n", self.central, "route", "replace", str(lan.network), "via", BRANCH_ADDR])

    # ---- PostgreSQL
    def _conf(self, datadir: Path, lines: dict) -> None:
        with open(datadir / "postgresql.auto.conf", "a") as f:
            for k, v in lines.items():
                f.write(f"{k} = '{v}'\n")

    def _start_pg(self, ns: str, datadir: Path, log: str) -> None:
        self.pg(ns, str(self.bin / "pg_ctl"), "-D", str(datadir), "-l", str(self.base / log), "-w", "-t", "60", "start")

    def _primary(self) -> None:
        self.pg(self.central, str(self.bin / "initdb"), "-D", str(self.primary_dir), "-A", "trust", "-U", "postgres")
        with open(self.primary_dir / "pg_hba.conf", "a") as f:
            f.write("host all all 10.77.0.0/30 trust\nhost replication all 10.77.0.0/30 trust\n")
        self._conf(self.primary_dir, {
            "listen_addresses": f"127.0.0.1,{CENTRAL_ADDR}", "port": PG_PORT, "unix_socket_directories": str(self.base),
            "wal_level": "replica", "max_wal_senders": 5, "max_replication_slots": 5,
            "max_slot_wal_keep_size": "1GB", "wal_sender_timeout": "5s", **self.settings.get("primary", {})})
        self._start_pg(self.central, self.primary_dir, "primary.log")
        self.psql(self.central, f"SELECT pg_create_physical_replication_slot('{SLOT}')")

    def _standby(self) -> None:
        self.standby_dir.mkdir(mode=0o700)
        shutil.chown(self.standby_dir, "postgres", "postgres")
        self.pg(self.branch, str(self.bin / "pg_basebackup"), "-h", CENTRAL_ADDR, "-p", str(PG_PORT), "-U", "postgres",
                "-D", str(self.standby_dir), "-R", "-S", SLOT, "-X", "stream", "-c", "fast")
        # -R wrote primary_conninfo; the same plus bounds, so a cut WAN is noticed within seconds
        conninfo = (f"host={CENTRAL_ADDR} port={PG_PORT} user=postgres application_name={SLOT} connect_timeout=2 "
                    "keepalives=1 keepalives_idle=5 keepalives_interval=2 keepalives_count=2")
        sock = self.base / "standby-sock"
        sock.mkdir(mode=0o700)
        shutil.chown(sock, "postgres", "postgres")
        self._conf(self.standby_dir, {
            "primary_conninfo": conninfo, "listen_addresses": "127.0.0.1", "port": PG_PORT,
            "unix_socket_directories": str(sock), "hot_standby": "on", "wal_receiver_timeout": "5s",
            "wal_retrieve_retry_interval": "1s", "wal_receiver_status_interval": "1s",
            "hot_standby_feedback": "on", **self.settings.get("standby", {})})
        self._start_pg(self.branch, self.standby_dir, "standby.log")

    def start(self) -> "SitesLab":
        try:
            self._net()
            self._primary()
            self._standby()
        except BaseException as exc:
            logs = " | ".join(f"{f.name}: {f.read_text()[-800:]}" for f in self.base.glob("*.log"))
            self.stop()
            raise RuntimeError(f"sites lab did not start: {exc}; {logs}") from None
        return self

    def replay_lsn(self) -> str:
        return self.psql(self.branch, "SELECT pg_last_wal_replay_lsn()")

    def wait_replayed(self, timeout: float = 30) -> float:
        """Wait until the standby replayed everything the primary has now; returns the seconds waited."""
        target = self.psql(self.central, "SELECT pg_current_wal_lsn()")
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.psql(self.branch, f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn") == "t":
                return time.monotonic() - t0
            time.sleep(0.05)
        raise TimeoutError(f"standby did not replay {target} within {timeout} s")

    def spawn(self, ns: str, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        out = open(log, "ab")
        p = subprocess.Popen(self.ns_cmd(ns, argv), stdout=out, stderr=subprocess.STDOUT,
                             env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs.append(p)
        return p

    def netslate(self, ns: str, *args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
        return self.spawn(ns, [sys.executable, "-m", "netslate", *args], log, env)

    # ---- a branch LAN for VMs (issue 15 §5): a bridge in the branch namespace, taps on it, routed
    def add_lan(self) -> "BranchLan":
        """A bridge in the branch namespace for VMs (`BranchLan`, which vmlab.VM takes as its lab),
        10.78.R.0/24 with the bridge at .1; the branch namespace forwards between the LAN and the
        WAN, and central routes the LAN via the branch's WAN address, so a machine on the LAN
        reaches central's servers over the WAN (and nothing else: no default route anywhere)."""
        lan = BranchLan(self.branch, f"10.78.{secrets.randbelow(256)}.0/24")
        _run(["ip", "-n", self.branch, "link", "add", lan.bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0"])
        _run(["ip", "-n", self.branch, "addr", "add", f"{lan.address}/24", "dev", lan.bridge])
        _run(["ip", "-n", self.branch, "link", "set", lan.bridge, "up"])
        _run(self.ns_cmd(self.branch, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))
        self._route_lan(lan)
        self.lans.append(lan)
        return lan

    def http(self, ns: str, url: str, method: str = "GET", body: str | None = None, token: str | None = None,
             timeout: float = 30) -> tuple[int, bytes]:
        """One HTTP request made from inside a namespace (curl; bounded)."""
        argv = ["curl", "-s", "-S", "--max-time", str(int(timeout)), "-X", method, "-o", "-", "-w", "\n%{http_code}"]
        if token:
            argv += ["-H", f"Authorization: Bearer {token}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", body]
        p = subprocess.run(self.ns_cmd(ns, argv + [url]), capture_output=True, timeout=timeout + 5)
        out, _, code = p.stdout.rpartition(b"\n")
        return int(code or b"0"), out

    def stop(self) -> None:
        for lan in self.lans:
            lan.close()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        for ns, d in ((self.branch, self.standby_dir), (self.central, self.primary_dir)):
            if (d / "postmaster.pid").exists():
                self.pg(ns, str(self.bin / "pg_ctl"), "-D", str(d), "-m", "immediate", "stop", check=False)
        for ns in (self.central, self.branch):
            _run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.base, ignore_errors=True)


class BranchLan(_Namespace):
    """A LAN in the branch namespace, shaped like vmlab's LabNetwork as far as `vmlab.VM` needs it
    (`add_tap`, `popen`, `stop`, `name`): QEMU runs in the branch namespace on a tap of this bridge."""

    def __init__(self, ns: str, subnet: str):
        super().__init__()
        self.name = ns
        self.network = ipaddress.ip_network(subnet)
        self.address = str(self.network.network_address + 1)
        self.prefixlen = self.network.prefixlen
        self.bridge = f"brs{secrets.token_hex(2)}"
        self._taps = 0

    def host_ip(self, index: int) -> str:
        return str(self.network.network_address + index)

    def add_tap(self) -> str:
        name = f"{self.bridge}t{self._taps}"
        self._taps += 1
        self.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"])
        self.run(["ip", "link", "set", name, "master", self.bridge])
        self.run(["ip", "link", "set", name, "up"])
        return name

    def close(self) -> None:
        self._stop_all()
