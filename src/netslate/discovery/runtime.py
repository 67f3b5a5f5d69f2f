"""Discovery at run time inside `netslate serve`: register + heartbeat this server, run the DNS responder.

The composition root (`netslate.composition.Parts.discovery`) builds one `DiscoveryRuntime` and
starts it with the other background services, only when `netslate serve` asked for it through the
options (`serve_options` validates them):
  site, advertise, server_name, srv_priority, srv_weight  → registration and heartbeat
  dns_listen, dns_domain                                  → the DNS responder
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time

from netslate.discovery import core, store
from netslate.errors import Unavailable, UserError

log = logging.getLogger("netslate.discovery")


def serve_options(ctx, site: str | None, advertise: list[str] | None, server_name: str | None,
                  dns_listen: str | None, dns_domain: str | None,
                  srv_priority: int = 0, srv_weight: int = 100) -> dict:
    """Validate `netslate serve`'s discovery options into app options (UserError on bad input)."""
    from netslate.discovery.dns import parse_hostport

    opts: dict = {}
    try:
        for a in advertise or []:
            core.parse_address(a)
        if server_name is not None:
            core.check_label(server_name)
        if dns_listen:
            opts["dns_listen"] = parse_hostport(dns_listen)
            if not dns_domain:
                raise UserError("--dns-listen needs --dns-domain DOMAIN (the zone whose _netslate._tcp SRV it answers)")
            _probe(*opts["dns_listen"])
        if dns_domain:
            opts["dns_domain"] = core.check_domain(dns_domain)
    except core.DiscoveryInputError as exc:
        raise UserError(str(exc)) from None
    if not 0 <= srv_priority <= core.MAX_SERVER_PRIORITY:
        raise UserError(f"--srv-priority must be 0..{core.MAX_SERVER_PRIORITY}")
    if not 0 <= srv_weight <= 65535:
        raise UserError("--srv-weight must be 0..65535")
    if site is not None and not store.site_exists(ctx, site):
        raise UserError(f"no such site {site!r}; add it first with `netslate site add {site}`")
    if site or advertise or dns_listen:
        opts["discovery_register"] = True
    opts.update(site=site, advertise=list(advertise or []), server_name=server_name,
                srv_priority=srv_priority, srv_weight=srv_weight)
    return opts


def _probe(host: str, port: int) -> None:
    """Fail `netslate serve` with one line before uvicorn starts when the DNS port is taken."""
    from netslate.discovery.dns import _socket

    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        try:
            _socket(host, port, kind).close()
        except OSError as exc:
            proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
            raise UserError(f"--dns-listen {host}:{port} ({proto}): {exc.strerror or exc}") from None


def default_server_name() -> str:
    name = socket.gethostname().split(".")[0].lower()
    try:
        return core.check_label(name)
    except core.DiscoveryInputError:
        return "netslate"


class DiscoveryRuntime:
    def __init__(self, ctx, options: dict):
        self.ctx = ctx
        self.options = options
        self.name: str | None = None
        self.dns = None
        self.view = None
        self.last_heartbeat_ok: float | None = None
        self.heartbeat_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        o = self.options
        if o.get("discovery_register"):
            try:
                self.register()
            except Unavailable as exc:  # a branch server started while the central site is away (issue 15)
                self.name = o.get("server_name") or default_server_name()
                self.heartbeat_error = str(exc)
                log.warning("not registered in discovery yet: %s", exc)
            self._thread = threading.Thread(target=self._heartbeats, name="netslate-heartbeat", daemon=True)
            self._thread.start()
        if o.get("dns_listen"):
            from netslate.discovery.dns import CachedView, DnsServer, Responder

            host, port = o["dns_listen"]
            self.view = CachedView(lambda: store.load_view(self.ctx))
            # `netslate serve --workers N` runs N copies of the app (each started from
            # NETSLATE_SERVE_SETTINGS): they share the DNS port with SO_REUSEPORT.
            shared = "NETSLATE_SERVE_SETTINGS" in os.environ
            try:
                self.dns = DnsServer(Responder(self.view, o["dns_domain"]), host, port, reuse_port=shared).start()
            except OSError as exc:
                self.view.stop()
                raise UserError(f"DNS responder cannot listen on {host}:{port}: {exc.strerror or exc}") from None
            log.warning("DNS responder for %s on %s:%d (udp+tcp)", o["dns_domain"], host, self.dns.port)

    def register(self) -> None:
        o = self.options
        listen_host, listen_port = o.get("listen", ("0.0.0.0", 8080))
        self.name = o.get("server_name") or default_server_name()
        addresses = o.get("advertise") or store.default_addresses(listen_host)
        tls = o.get("tls") or {}
        row = store.register_server(self.ctx, self.name, o.get("site"), addresses, listen_port,
                                    o.get("srv_priority", 0), o.get("srv_weight", 100),
                                    tls_port=tls["listen"][1] if tls else None, tls_pin=tls.get("pin"))
        if not row["addresses"]:
            log.warning("server %s has no publishable address (link-local ones are never published); "
                        "use --advertise ADDR", self.name)
        self.last_heartbeat_ok = time.time()

    def _heartbeats(self) -> None:
        while not self._stop.wait(store.HEARTBEAT_INTERVAL):
            try:
                if not store.heartbeat(self.ctx, self.name):
                    self.register()  # an operator removed our row while we run: we are still here
                self.last_heartbeat_ok = time.time()
                self.heartbeat_error = None
            except Exception as exc:  # the store may be briefly away; keep trying, health shows it
                self.heartbeat_error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.dns is not None:
            self.dns.stop()
        if self.view is not None:
            self.view.stop()
        if self.name is not None:
            with contextlib.suppress(Exception):
                store.mark_stopped(self.ctx, self.name)

    def health_dns(self) -> dict:
        d = self.dns
        ok = bool(d and d.running()) and self.view.error is None
        out = {"ok": ok, "listen": f"{d.host}:{d.port}" if d else None, "domain": self.options.get("dns_domain")}
        if d:
            out["stats"] = dict(d.responder.stats)
        if self.view is not None and self.view.error:
            out["error"] = self.view.error
        return out

    def health_registration(self) -> dict:
        age = None if self.last_heartbeat_ok is None else round(time.time() - self.last_heartbeat_ok, 1)
        ok = age is not None and age <= store.STALE_AFTER
        out = {"ok": ok, "server": self.name, "site": self.options.get("site"), "heartbeat_age_s": age}
        if self.heartbeat_error:
            out["error"] = self.heartbeat_error
        return out
