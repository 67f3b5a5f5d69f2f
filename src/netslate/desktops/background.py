"""The reconcile loop of `netslate serve` (a background thread) and libvirt console events.

Console events: when a viewer authenticates on a desktop's SPICE/VNC display, that is a logon
(source=console); when it disconnects and the session came from the console (no agent reported
it), that is a logoff. The in-guest agent's logon/logoff (API) takes precedence.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

log = logging.getLogger("netslate.desktops")

_event_impl_lock = threading.Lock()
_event_impl_started = False


def _start_event_impl() -> bool:
    """libvirt delivers domain events only with an event loop registered before connections open."""
    global _event_impl_started
    with _event_impl_lock:
        if _event_impl_started:
            return True
        try:
            import libvirt

            libvirt.virEventRegisterDefaultImpl()
        except Exception as exc:  # pragma: no cover - libvirt missing
            log.warning("libvirt events unavailable: %s", exc)
            return False

        def run():
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:  # keep the loop alive whatever one callback did
                    pass

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_impl_started = True
        return True


class ReconcileLoop:
    def __init__(self, ctx, interval: float = 10.0):
        self.ctx = ctx
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._registered: dict[str, object] = {}  # uri -> connection with our graphics callback
        self.last_result: dict | None = None
        self.last_error: str = ""

    def start(self) -> None:
        events = _start_event_impl()
        self._events = events
        if events:
            from netslate.desktops import hosts as hostmod

            hostmod.close_all()  # connections opened before the event loop existed get no events
        self._thread = threading.Thread(target=self._run, name="desktops-reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)

    def nudge(self) -> None:
        self._wake.set()

    def health(self) -> dict:
        return {"ok": not self.last_error, "last_error": self.last_error,
                "last_actions": len((self.last_result or {}).get("actions", []))}

    def _run(self) -> None:
        from netslate.desktops.actuator import Actuator

        actuator = None
        while not self._stop.is_set():
            try:
                from sqlalchemy import select

                from netslate.desktops.models import DesktopHost

                with self.ctx.db.session() as s:
                    any_host = s.scalar(select(DesktopHost.id).limit(1)) is not None
                if any_host:
                    actuator = actuator or Actuator(self.ctx)
                    self.last_result = actuator.reconcile(timeout=max(self.interval, 30))
                    if self._events:
                        self._register_events()
                self.last_error = ""
            except Exception as exc:
                self.last_error = str(exc)
                log.warning("desktop reconcile pass failed: %s", exc)
            self._wake.wait(self.interval)
            self._wake.clear()

    def _register_events(self) -> None:
        import libvirt
        from sqlalchemy import select

        from netslate.desktops import hosts as hostmod
        from netslate.desktops.models import DesktopHost

        with self.ctx.db.session() as s:
            uris = [h.uri for h in s.scalars(select(DesktopHost)) if h.reachable]
        for uri in uris:
            try:
                conn = hostmod.connect(uri)
            except Exception:
                continue
            if self._registered.get(uri) is conn:
                continue
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_GRAPHICS, self._on_graphics, None)
                self._registered[uri] = conn

    def _on_graphics(self, _conn, dom, phase, _local, remote, _auth, _subject, _opaque) -> None:
        import libvirt

        from netslate.desktops.allocation import session_event, show_desktop

        try:
            name = dom.name()
            d = show_desktop(self.ctx, name)
        except Exception:
            return  # not one of ours
        try:
            if phase == libvirt.VIR_DOMAIN_EVENT_GRAPHICS_INITIALIZE and d["state"] in ("assigned", "logged_off"):
                session_event(self.ctx, d["id"], "logon", None, "libvirt:graphics", source="console")
            elif phase == libvirt.VIR_DOMAIN_EVENT_GRAPHICS_DISCONNECT and d["state"] == "in_use":
                from netslate.desktops.models import Desktop

                with self.ctx.db.session() as s:
                    src = (s.get(Desktop, d["id"]).session or {}).get("source")
                if src == "console":
                    session_event(self.ctx, d["id"], "logoff", None, "libvirt:graphics", source="console")
                    self.nudge()
        except Exception as exc:
            log.info("console event for %s ignored: %s", dom.name(), exc)
