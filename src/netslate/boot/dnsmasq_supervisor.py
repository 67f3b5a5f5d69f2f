"""Runs one dnsmasq in the foreground for `netslate serve --boot-interface`: writes its files from
dnsmasq_config.py (atomically, only when they change), restarts it with backoff when it dies, restarts
it on a main-config change and sends SIGHUP on a reservations change (dnsmasq re-reads its
dhcp-hostsfile then, so DHCP never stops for a reservation)."""

from __future__ import annotations

import hashlib
import logging
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

from netslate.boot.dnsmasq_config import (SECURE_BOOT_BINARY, DhcpConfigError, DhcpSettings, Paths, render_config,
                                         render_hosts)
from netslate.fsutil import atomic_write

log = logging.getLogger("netslate.dnsmasq")


class DnsmasqSupervisor:
    """Runs one dnsmasq in the foreground, restarts it when it dies (backoff), reloads on change."""

    def __init__(self, settings: DhcpSettings, state_dir: Path, prefixlen: int = 24,
                 reservations=None, binary: str = "dnsmasq", watch_interval: float = 2.0, on_tick=None,
                 command_prefix: list[str] | tuple[str, ...] = ()):
        self.settings = settings.checked()
        self.dir = Path(state_dir)
        self.prefixlen = prefixlen
        self.reservations_source = reservations or (lambda: [])  # callable → list[Reservation]
        self.binary = binary
        self.command_prefix = list(command_prefix)  # e.g. ["ip", "netns", "exec", NS] in tests (it execs)
        self.watch_interval = watch_interval
        self.on_tick = on_tick  # called from the watcher thread too (e.g. refresh pxelinux.cfg)
        self.paths = Paths(
            conf=str(self.dir / "dnsmasq.conf"), hosts=str(self.dir / "reservations"),
            leases=str(self.dir / "dnsmasq.leases"), pid=str(self.dir / "dnsmasq.pid"),
        )
        self.log_path = self.dir / "dnsmasq.log"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.last_error: str | None = None
        self.started_at: float | None = None
        self._conf_hash = ""
        self._hosts_hash = ""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None

    # -- files ------------------------------------------------------------------------------
    def _needs_root(self) -> bool:
        """dnsmasq drops to `nobody` and then reads the reservations file and the TFTP root: if a parent
        directory is not world-traversable (a 0700 data directory), keep it as root instead, loudly."""
        for d in (self.dir, Path(self.settings.tftp_root)):
            for p in [d, *d.parents]:
                try:
                    if not p.stat().st_mode & 0o001:
                        return True
                except FileNotFoundError:
                    continue
        return False

    def write_files(self) -> tuple[bool, bool]:
        """Render and atomically write config + reservations. Returns (config changed, hosts changed)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._needs_root() != self.settings.run_as_root:
            self.settings = replace(self.settings, run_as_root=not self.settings.run_as_root)
            if self.settings.run_as_root:
                log.warning("dnsmasq keeps root privileges: %s or %s is not world-traversable", self.dir, self.settings.tftp_root)
        conf = render_config(self.settings, self.paths, self.prefixlen)
        try:
            hosts = render_hosts(list(self.reservations_source()))
            self.last_error = None
        except DhcpConfigError as exc:  # keep the last good reservations file
            log.error("DHCP reservations not updated: %s", exc)
            self.last_error = str(exc)
            hosts = None
        self.dir.mkdir(parents=True, exist_ok=True)
        ch = hashlib.sha256(conf.encode()).hexdigest()
        conf_changed = ch != self._conf_hash
        if conf_changed:
            atomic_write(Path(self.paths.conf), conf.encode())
            self._conf_hash = ch
        hosts_changed = False
        if hosts is not None:
            hh = hashlib.sha256(hosts.encode()).hexdigest()
            if hh != self._hosts_hash:
                atomic_write(Path(self.paths.hosts), hosts.encode())
                self._hosts_hash = hh
                hosts_changed = True
        elif not Path(self.paths.hosts).exists():
            atomic_write(Path(self.paths.hosts), b"")
        return conf_changed, hosts_changed

    def command(self) -> list[str]:
        return [*self.command_prefix, self.binary, "--keep-in-foreground", f"--conf-file={self.paths.conf}"]

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "DnsmasqSupervisor":
        self.write_files()
        if self.settings.mode == "proxy" and self.settings.efi_binary == SECURE_BOOT_BINARY:
            log.warning("proxy mode with %s: Debian's GRUB reads its files from the site DHCP server's "
                        "next-server, not from this proxy; set next-server to this server there (docs/secure-boot.md)",
                        SECURE_BOOT_BINARY)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dnsmasq-supervisor", daemon=True)
        self._thread.start()
        if self.watch_interval:
            self._watcher = threading.Thread(target=self._watch, name="dnsmasq-watch", daemon=True)
            self._watcher.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        self._terminate(timeout)
        for t in (self._thread, self._watcher):
            if t is not None:
                t.join(timeout=timeout)

    def _terminate(self, timeout: float = 10) -> None:
        with self._lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def _spawn(self) -> subprocess.Popen:
        logf = open(self.log_path, "ab")
        try:
            proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            logf.close()
        return proc

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                with self._lock:
                    self.proc = self._spawn()
                    self.started_at = time.monotonic()
                proc = self.proc
                log.info("dnsmasq started (pid %s, mode %s, interface %s)", proc.pid, self.settings.mode, self.settings.interface)
                code = proc.wait()
            except OSError as exc:
                code = -1
                self.last_error = f"cannot start dnsmasq: {exc}"
            ran = time.monotonic() - (self.started_at or time.monotonic())
            with self._lock:
                self.last_exit = code
            if self._stop.is_set():
                break
            if self._wake.is_set():  # a deliberate restart (config changed): at once, no backoff
                self._wake.clear()
                continue
            self.restarts += 1
            tail = self.log_tail(3)
            self.last_error = f"dnsmasq exited with {code}: {tail[-1] if tail else ''}"
            log.error("%s; restarting in %.0f s", self.last_error, backoff)
            if ran > 30:
                backoff = 1.0
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, 30.0)

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_interval):
            try:
                self.reload()
                if self.on_tick is not None:
                    self.on_tick()
            except Exception as exc:  # keep watching; health shows the error
                self.last_error = f"reload failed: {exc}"
                log.error("dnsmasq reload failed: %s", exc)

    def reload(self, settings: DhcpSettings | None = None) -> str:
        """Re-render; restart on a main-config change, SIGHUP on a reservations change.
        Returns "restarted", "reloaded" or "unchanged". Call it after anything DHCP-relevant changes."""
        with self._lock:
            if settings is not None:
                self.settings = settings.checked()
            conf_changed, hosts_changed = self.write_files()
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return "unchanged"
            if conf_changed:
                self._wake.set()
                proc.terminate()
                return "restarted"
            if hosts_changed:
                proc.send_signal(signal.SIGHUP)  # dnsmasq re-reads dhcp-hostsfile
                return "reloaded"
        return "unchanged"

    def with_settings(self, **changes) -> DhcpSettings:
        return replace(self.settings, **changes)

    # -- reporting --------------------------------------------------------------------------
    def log_tail(self, n: int = 20) -> list[str]:
        try:
            data = self.log_path.read_bytes()[-8192:].decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        return [line for line in data.splitlines() if line.strip()][-n:]

    def health(self) -> dict:
        with self._lock:
            proc = self.proc
            running = proc is not None and proc.poll() is None
        out = {
            "ok": running,
            "mode": self.settings.mode,
            "interface": self.settings.interface,
            "server": self.settings.server_ip,
            "pid": proc.pid if running else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "config": self.paths.conf,
        }
        if self.last_error:
            out["error"] = self.last_error
        return out
