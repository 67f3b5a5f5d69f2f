"""Isolated test networks: one namespace with a bridge, taps for VMs, veth links to host namespaces.

Layout of a `LabNetwork`:

    namespace nslab-<pid>-<rand>            (the "switch"; no default route, forwarding off)
      br0  10.X.Y.1/24                      (processes in this namespace are "the server")
      tap0, tap1, ...  -> br0               (one per VM; QEMU runs in this namespace too)
      vethN  -> br0  <==>  namespace nslab-<pid>-<rand>-hN: eth0 10.X.Y.Z/24   (extra hosts)

Names carry the creating process id, so `cleanup_stale()` can remove what a killed run left
behind without touching anything else. Every namespace, link and process created here is
removed by `close()` (context manager), with an atexit hook as the last resort.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import secrets
import signal
import subprocess
import threading
import time

PREFIX = "nslab"
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-f]+(-h\d+)?$")

_live: set["LabNetwork"] = set()
_live_lock = threading.Lock()


def _ip(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _netns_list() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_pids(ns: str) -> None:
    """Kill the processes still inside a namespace we created (only ever our own namespaces)."""
    out = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in out:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def cleanup_stale() -> list[str]:
    """Remove namespaces left by earlier, killed runs (their creating pid is gone). Returns names removed."""
    removed = []
    for ns in _netns_list():
        m = _NAME_RE.match(ns)
        if not m or _pid_alive(int(m.group(1))):
            continue
        _kill_netns_pids(ns)
        _ip("netns", "del", ns, check=False)
        removed.append(ns)
    return removed


class _Namespace:
    """Shared helpers for running things inside a namespace; processes started here are tracked."""

    name: str

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run(self.argv(argv), timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} in {self.name} failed ({proc.returncode}): {(proc.stderr or '').strip()[-500:]}")
        return proc

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        """Start a process in the namespace, in its own process group so stop() ends all of it."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.argv(argv), **kw)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10) -> int | None:
        """SIGTERM the process group we started, SIGKILL after `timeout`."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def _stop_all(self) -> None:
        for proc in list(self._procs):
            self.stop(proc, timeout=5)


class HostNS(_Namespace):
    """Another machine on the lab network: its own namespace with eth0 linked to the bridge."""

    def __init__(self, name: str, address: str, prefixlen: int) -> None:
        super().__init__()
        self.name = name
        self.address = address
        self.prefixlen = prefixlen
        self.interface = "eth0"


class LabNetwork(_Namespace):
    def __init__(self, subnet: str | None = None) -> None:
        super().__init__()
        self.name = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        if subnet is None:
            # 10.(200..249).(0..255).0/24: private, picked at random; the namespace is isolated
            # anyway, the randomness only keeps parallel labs easy to tell apart in logs.
            subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24"
        self.network = ipaddress.ip_network(subnet)
        hosts = list(self.network.hosts())
        self.address = str(hosts[0])  # the bridge (the server side)
        self.prefixlen = self.network.prefixlen
        self.bridge = "br0"
        self.hosts: list[HostNS] = []
        self._taps = 0
        self._next_host_ip = 1
        self._created = False

    # -- lifecycle -------------------------------------------------------------------------
    def create(self) -> "LabNetwork":
        with _live_lock:
            _live.add(self)
        _ip("netns", "add", self.name)
        self._created = True
        try:
            self.run(["ip", "link", "set", "lo", "up"])
            self.run(["ip", "link", "add", self.bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0"])
            self.run(["ip", "addr", "add", f"{self.address}/{self.prefixlen}", "dev", self.bridge])
            self.run(["ip", "link", "set", self.bridge, "up"])
            # A fresh namespace has forwarding off and no default route; make that explicit.
            self.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
            self.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{self.bridge}.disable_ipv6=1"], check=False)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self._stop_all()
        for host in self.hosts:
            host._stop_all()
            _kill_netns_pids(host.name)
            _ip("netns", "del", host.name, check=False)
        self.hosts = []
        if self._created:
            _kill_netns_pids(self.name)
            _ip("netns", "del", self.name, check=False)
            self._created = False
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> "LabNetwork":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- devices ---------------------------------------------------------------------------
    def add_tap(self) -> str:
        """A tap device on the bridge for one VM (QEMU must run in this namespace to open it)."""
        name = f"tap{self._taps}"
        self._taps += 1
        self.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"])
        self.run(["ip", "link", "set", name, "master", self.bridge])
        self.run(["ip", "link", "set", name, "up"])
        return name

    def host_ip(self, index: int) -> str:
        """The index-th host address of the lab subnet (1 is the bridge)."""
        return str(self.network.network_address + index)

    def add_host(self, address: str | None = None) -> HostNS:
        """Another namespace ("machine") on the bridge through a veth pair."""
        idx = len(self.hosts)
        if address is None:
            self._next_host_ip += 1
            address = self.host_ip(self._next_host_ip)
        host = HostNS(f"{self.name}-h{idx}", address, self.prefixlen)
        _ip("netns", "add", host.name)
        self.hosts.append(host)
        veth, peer = f"veth{idx}", f"vp{idx}"
        self.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
        self.run(["ip", "link", "set", peer, "netns", host.name])
        self.run(["ip", "link", "set", veth, "master", self.bridge])
        self.run(["ip", "link", "set", veth, "up"])
        host.run(["ip", "link", "set", "lo", "up"])
        host.run(["ip", "link", "set", peer, "name", host.interface])
        host.run(["ip", "addr", "add", f"{address}/{self.prefixlen}", "dev", host.interface])
        host.run(["ip", "link", "set", host.interface, "up"])
        return host

    # -- helpers ---------------------------------------------------------------------------
    def http_get(self, url: str, timeout: float = 20) -> tuple[int, bytes]:
        """GET a URL from inside the namespace (curl), for checking servers bound to the bridge."""
        proc = self.run(
            ["curl", "-s", "-S", "--max-time", str(int(timeout)), "-o", "-", "-w", "\n%{http_code}", url],
            timeout=timeout + 5, check=False, text=False,
        )
        body, _, code = proc.stdout.rpartition(b"\n")
        return int(code or b"0"), body

    def wait_tcp(self, port: int, timeout: float = 30, address: str | None = None) -> None:
        """Wait until something listens on address:port inside the namespace."""
        address = address or self.address
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.run(["bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"], check=False, timeout=10)
            if proc.returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError(f"nothing listening on {address}:{port} in {self.name} after {timeout}s")


def _atexit_cleanup() -> None:
    with _live_lock:
        labs = list(_live)
    for lab in labs:
        try:
            lab.close()
        except Exception:
            pass


atexit.register(_atexit_cleanup)

