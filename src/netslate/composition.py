"""The composition root: every part built once, every background service in one visible order.

The server builds one `Parts` for its lifetime (`netslate.server.app`); the local CLI builds one
per command and never starts background services. Services receive it and never build parts.

Start order (stop is the reverse), and why:
1. boot events writer — boot requests may arrive as soon as the socket listens;
2. config notifier — wakes long-polling agents when a generation is published;
2b. the nginx static front (`serve --static nginx`): the public port, proxying to uvicorn;
3. dnsmasq supervisor (+ TFTP root) — needs the boot engine for pxelinux files;
4. discovery — registers this server (heartbeats) and answers DNS SRV;
5. desktops reconcile loop — may add DHCP reservations, which dnsmasq picks up;
6. the noVNC console relay;
7. the SPICE proxy (HTTP CONNECT to desktops' SPICE ports, only with a live ticket).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

from netslate.context import Context

log = logging.getLogger("netslate.server")


@dataclass
class Background:
    """One background service: how to start it, stop it, and report its health."""

    name: str
    start: Callable[[], None]
    stop: Callable[[], None]
    health: Callable[[], dict] | None = None


class Parts:
    def __init__(self, ctx: Context, options: dict | None = None):
        self.ctx = ctx
        self.options = options or {}

    @cached_property
    def library(self):
        return self.ctx.library

    @cached_property
    def boot_engine(self):
        """The one boot engine (and its cache) of this process: boot scripts, bundles' image pins."""
        from netslate.boot.engine import BootEngine

        return BootEngine(self.ctx, self.options)

    @cached_property
    def outbox_replayer(self):
        """A branch server (a standby as read URL): probes the central primary, replays the outbox."""
        if not self.ctx.db.has_replica:
            return None
        from netslate.store.outbox import Replayer

        from netslate.discovery.runtime import default_server_name

        return Replayer(self.ctx, name=self.options.get("server_name") or default_server_name())

    @cached_property
    def mirror(self):
        """A branch server's verified pull-through chunk mirror (`serve --mirror-from`, issue 15 §2);
        outside `serve`, the one the server's data dir records (for `netslate mirror`); else None."""
        from netslate.images.mirror import Mirror, assigned_versions, read_config

        upstream = self.options.get("mirror_from") or ("listen" not in self.options and read_config(self.ctx).get("upstream"))
        if not upstream:
            return None
        site = self.options.get("site") if "mirror_from" in self.options else read_config(self.ctx).get("site")
        return Mirror(self.ctx, upstream, site, lambda: assigned_versions(self.ctx, self.boot_engine, site),
                      interval=float(self.options.get("mirror_interval") or 60.0), serving="mirror_from" in self.options)

    @cached_property
    def config_notifier(self):
        from netslate.config.notify import Notifier

        return Notifier(self.ctx)

    # ---------- background services (server only) ----------

    @cached_property
    def dnsmasq(self):
        """The dnsmasq supervisor, when `serve --boot-interface` asked for DHCP/TFTP; else None."""
        if not self.options.get("boot_interface"):
            return None
        from netslate.boot.dnsmasq_supervisor import DnsmasqSupervisor
        from netslate.boot.reservations import reservations_from_db
        from netslate.boot.serve_options import settings_from_options

        settings, prefixlen = settings_from_options(self.ctx, self.options)
        return DnsmasqSupervisor(settings, self.ctx.data_dir / "dnsmasq", prefixlen,
                                 reservations=lambda: reservations_from_db(self.ctx), on_tick=self._refresh_pxelinux)

    _pxelinux_fingerprint = None

    def _refresh_pxelinux(self) -> None:
        # Only when the boot engine's fingerprint (rules, machines, images, tags) moved.
        from netslate.boot import tftp
        from netslate.boot.engine import pxelinux_files

        settings = self.dnsmasq.settings
        fp = self.boot_engine.snapshot().fingerprint
        if fp != self._pxelinux_fingerprint:
            base_url = settings.boot_url.rsplit("/", 1)[0]
            tftp.write_pxelinux(Path(settings.tftp_root), pxelinux_files(self.boot_engine, base_url))
            self._refresh_grub(Path(settings.tftp_root), base_url)
            self._pxelinux_fingerprint = fp

    def _refresh_grub(self, root: Path, base_url: str) -> None:
        # The Secure Boot path (shim -> GRUB): per-machine GRUB files + the kernels/initrds they load.
        from netslate.boot import secureboot

        try:
            secureboot.stage(root, self.boot_engine, base_url)
        except Exception as exc:  # iPXE and pxelinux must keep working even so
            log.error("GRUB files for the Secure Boot path not written: %s", exc)

    def _start_dnsmasq(self) -> None:
        from netslate.boot import tftp

        tftp.install_binaries(Path(self.dnsmasq.settings.tftp_root), self.dnsmasq.settings.boot_url)
        try:
            self._refresh_pxelinux()
        except Exception as exc:  # TFTP of the iPXE binaries must work even so
            log.error("pxelinux.cfg not written: %s", exc)
        self.dnsmasq.start()

    def dhcp_changed(self) -> str | None:
        """After a DHCP-relevant change (reservations): "restarted", "reloaded", "unchanged", or None."""
        return self.dnsmasq.reload() if self.dnsmasq is not None else None

    @cached_property
    def static_front(self):
        """The nginx front (`serve --static nginx`): chunks and stored files with sendfile; else None."""
        opts = self.options.get("static_front")
        if not opts:
            return None
        from netslate.images.frontend import FrontSettings, NginxFront

        return NginxFront(FrontSettings(
            listen_host=opts["listen"][0], listen_port=int(opts["listen"][1]), upstream_port=int(opts["upstream_port"]),
            chunks_dir=str(self.ctx.chunks.root), files_dir=str(self.ctx.data_dir / "serve"),
            state_dir=str(self.ctx.data_dir / "nginx" / str(opts["listen"][1])), workers=int(opts.get("workers") or 2),
            body_limits=tuple(tuple(x) for x in opts.get("body_limits") or ()), default_body_limit=int(opts.get("default_body_limit") or 0),
            credential_required=tuple(opts.get("credential_required") or ())),
            binary=opts.get("binary"))

    @cached_property
    def discovery(self):
        """Server registration + heartbeats and the DNS SRV responder, when `serve` asked for them."""
        if not (self.options.get("discovery_register") or self.options.get("dns_listen")):
            return None
        from netslate.discovery.runtime import DiscoveryRuntime

        return DiscoveryRuntime(self.ctx, self.options)

    @cached_property
    def desktops_loop(self):
        """The desktops reconcile loop: on by default inside `serve`, or when a test asks for it."""
        from netslate.desktops.background import ReconcileLoop

        wanted = self.options.get("desktops_reconcile")
        if wanted is None:
            wanted = "listen" in self.options and os.environ.get("NETSLATE_DESKTOPS_RECONCILE", "1") != "0"
        if not wanted:
            return None
        interval = float(self.options.get("desktops_reconcile_interval") or os.environ.get("NETSLATE_DESKTOPS_RECONCILE_INTERVAL", "10"))
        return ReconcileLoop(self.ctx, interval)

    @cached_property
    def console_port(self) -> int | None:
        port = self.options.get("desktops_console_port") or os.environ.get("NETSLATE_CONSOLE_PORT")
        return int(port) if port else None

    def _console_relay(self) -> Background:
        from netslate.desktops.relay import start_relay

        listen = self.options.get("desktops_console_listen") or os.environ.get("NETSLATE_CONSOLE_LISTEN", "0.0.0.0")
        proc = {}

        def start():
            proc["p"] = start_relay(self.ctx.data_dir, listen, self.console_port)

        def stop():
            p = proc.get("p")
            if p is None:
                return
            p.terminate()
            try:
                p.wait(10)
            except Exception:
                p.kill()

        return Background("console-relay", start, stop)

    @cached_property
    def spice_proxy(self):
        """The SPICE CONNECT proxy when asked for (`NETSLATE_SPICE_PROXY_PORT`, 0: any free port); else None."""
        port = self.options.get("desktops_spice_proxy_port")
        if port is None:
            port = os.environ.get("NETSLATE_SPICE_PROXY_PORT") or None
        if port is None:
            return None
        from netslate.desktops.spiceproxy import SpiceProxy

        listen = self.options.get("desktops_spice_proxy_listen") or os.environ.get("NETSLATE_SPICE_PROXY_LISTEN", "0.0.0.0")
        return SpiceProxy(self.ctx.data_dir, listen, int(port))

    def health_checks(self) -> dict[str, Callable[[], dict]]:
        """/healthz probes of the background services that are running."""
        return {b.name: b.health for b in self.running if b.health is not None}

    running: list[Background] = []

    def start_background(self) -> None:
        self.running = []
        for b in self.background():
            b.start()
            self.running.append(b)
            log.info("started %s", b.name)

    def stop_background(self) -> None:
        while self.running:
            b = self.running.pop()
            try:
                b.stop()
            except Exception as exc:  # stop the others all the same
                log.error("stopping %s: %s", b.name, exc)

    def background(self) -> list[Background]:
        """What `netslate serve` runs besides HTTP, in start order."""
        out = [Background("boot-events", lambda: None, lambda: self.boot_engine.events.flush(5)),
               Background("config-notifier", lambda: None, lambda: None)]
        if self.outbox_replayer is not None:
            r = self.outbox_replayer
            out.insert(0, Background("central", r.start, r.stop, r.health))
        if self.options.get("mirror_from") and self.mirror is not None:
            m = self.mirror
            out.append(Background("chunk-mirror", m.start, m.stop, m.health))
        if self.static_front is not None:
            out.append(Background("static-front", self.static_front.start, self.static_front.stop, self.static_front.health))
        if self.dnsmasq is not None:
            out.append(Background("dnsmasq", self._start_dnsmasq, self.dnsmasq.stop, self.dnsmasq.health))
        if self.discovery is not None:
            d = self.discovery
            out.append(Background("discovery-service", d.start, d.stop))
            if self.options.get("dns_listen"):
                out.append(Background("dns", lambda: None, lambda: None, d.health_dns))
            if self.options.get("discovery_register"):
                out.append(Background("discovery", lambda: None, lambda: None, d.health_registration))
        if self.desktops_loop is not None:
            loop = self.desktops_loop
            out.append(Background("desktops", loop.start, loop.stop, loop.health))
        if self.console_port:
            out.append(self._console_relay())
        if self.spice_proxy is not None:
            sp = self.spice_proxy
            out.append(Background("spice-proxy", sp.start, sp.stop, sp.health))
        return out
