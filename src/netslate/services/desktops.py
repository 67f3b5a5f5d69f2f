"""Desktops: list, show, release, session events, console tickets, snapshots, and golden images.

Golden images live here (`netslate desktop image ...`, /api/v1/golden-images): one noun for what a
desktop runs. A remote `image import` uploads the files first (`HttpDesktops`), then imports them
by upload id with the same operation a local caller could use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from netslate.desktops import consoles, golden, relay, snapshots
from netslate.desktops import allocation as part
from netslate.desktops.consoles import vv_file  # noqa: F401  (the CLI writes .vv files with it)
from netslate.desktops.actuator import Actuator
from netslate.desktops.records import get_desktop
from netslate.errors import Conflict, UserError
from netslate.services.framework import Forbidden, Service, http_client, op, requires


def nudge(parts) -> None:
    """Wake the server's reconcile loop (a spare to refill, a reset to do); nothing in the local CLI."""
    loop = getattr(parts, "desktops_loop", None)
    if loop is not None:
        loop.nudge()


def spice_proxy_url(parts, server_host: str | None) -> str:
    """`http://SERVER:PORT` of the SPICE proxy, SERVER being the public address setting
    (`NETSLATE_SPICE_PROXY_ADDRESS`) or else the host name the caller reached us by."""
    host = (parts.options.get("desktops_spice_proxy_address") or os.environ.get("NETSLATE_SPICE_PROXY_ADDRESS")
            or server_host or "127.0.0.1")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{parts.spice_proxy.port}"


class DesktopRecord(BaseModel):
    id: int
    name: str
    pool: str | None  # None once its pool is gone (it is being destroyed)
    host: str
    state: str
    user: str | None
    ip: str | None
    mac: str
    golden_version: int
    disk: str
    reason: str
    failures: int
    prior_state: str | None
    console_host: str | None
    started_at: str | None
    assigned_at: str | None
    logged_off_at: str | None
    created_at: str | None


class SessionEvent(BaseModel):
    event: str  # logon | logoff
    user: str | None = None
    source: Literal["agent", "cli"] = "agent"  # the in-guest agent, or by hand


class TicketRequest(BaseModel):
    type: str | None = None  # spice | vnc; default: the pool's display
    ttl: int = consoles.DEFAULT_TTL


class Ticket(BaseModel):
    desktop: str
    type: str
    host: str
    port: int
    tls_port: int | None
    password: str
    expires_at: str
    ttl: int
    title: str
    usb_redirect: int
    smartcard: bool


class BrowserConsole(BaseModel):
    url: str
    relay_port: int
    token: str
    password: str
    expires_at: str


class SnapshotRequest(BaseModel):
    name: str
    note: str = ""


class Snapshot(BaseModel):
    name: str
    file: str
    note: str
    scheduled: bool
    created_at: str


class SnapshotRevert(BaseModel):
    desktop: str
    reverted_to: str
    disk: str


class GoldenImageRecord(BaseModel):
    name: str
    version: int
    path: str
    virtual_size: int
    actual_size: int
    source: str
    kernel: str | None
    initrd: str | None
    cmdline: str | None
    created_at: str


class GoldenUpload(BaseModel):
    """Files uploaded to POST /api/v1/golden-image-uploads, by their upload ids."""

    disk: str
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    source: str | None = None  # where the file came from, for the record


class GoldenFromImage(BaseModel):
    image: str  # IMAGE@VERSION (or a tag)


class DesktopsService(Service):
    noun = "desktops"

    @op("GET", "/api/v1/desktops")
    def list(self, pool: str | None = None, user: str | None = None) -> list[DesktopRecord]:
        """List desktops."""
        raise NotImplementedError

    @op("GET", "/api/v1/desktops/{ref}")
    def show(self, ref: str) -> DesktopRecord:
        """One desktop, by id or name."""
        raise NotImplementedError

    @op("POST", "/api/v1/desktops/{ref}/release", role="operator")
    def release(self, ref: str) -> DesktopRecord:
        """The user is done: the desktop is reset now (a reconcile pass of its pool), then shown."""
        raise NotImplementedError

    @op("POST", "/api/v1/my/desktops/{ref}/reset")
    def reset_mine(self, ref: str) -> DesktopRecord:
        """The caller's own desktop back to its golden image (changes since logon are lost), still theirs;
        only where the pool allows it (`allow_reset`)."""
        raise NotImplementedError

    @op("POST", "/api/v1/my/desktops/{ref}/release")
    def release_mine(self, ref: str) -> DesktopRecord:
        """Give the caller's own desktop back (it is reset for the next user); where the pool allows it."""
        raise NotImplementedError

    @op("POST", "/api/v1/desktops/{ref}/session", role="operator")
    def session(self, ref: str, event: SessionEvent) -> DesktopRecord:
        """logon/logoff from the netslate agent inside the desktop (or by hand)."""
        raise NotImplementedError

    @op("POST", "/api/v1/desktops/{ref}/ticket")
    def ticket(self, ref: str, request: TicketRequest) -> Ticket:
        """A console password with an expiry; only the desktop's user or an admin."""
        raise NotImplementedError

    # ---------- snapshots (persistent pools) ----------

    @op("GET", "/api/v1/desktops/{ref}/snapshots")
    def snapshots(self, ref: str) -> list[Snapshot]:
        """A desktop's snapshots."""
        raise NotImplementedError

    @op("POST", "/api/v1/desktops/{ref}/snapshots", role="operator", status=201)
    def snapshot_create(self, ref: str, request: SnapshotRequest) -> Snapshot:
        """Freeze the desktop's disk as a snapshot (live when it runs)."""
        raise NotImplementedError

    @op("POST", "/api/v1/desktops/{ref}/snapshots/{name}/revert", role="operator")
    def snapshot_revert(self, ref: str, name: str) -> SnapshotRevert:
        """Restore one desktop to a snapshot; it restarts."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/desktops/{ref}/snapshots/{name}", role="operator", status=204)
    def snapshot_remove(self, ref: str, name: str) -> None:
        """Delete a snapshot (its data is merged into the layers above it)."""
        raise NotImplementedError

    # ---------- golden images ----------

    @op("GET", "/api/v1/golden-images")
    def images(self, name: str | None = None) -> list[GoldenImageRecord]:
        """Golden images and their versions."""
        raise NotImplementedError

    @op("POST", "/api/v1/golden-images/{name}", role="operator", status=201)
    def image_import_uploaded(self, name: str, request: GoldenUpload) -> GoldenImageRecord:
        """The next version of golden NAME from uploaded files."""
        raise NotImplementedError

    def image_import(self, name: str, file: Path, kernel: Path | None = None, initrd: Path | None = None,
                     cmdline: str | None = None) -> GoldenImageRecord:
        """The next version of golden NAME from a qcow2 or raw FILE of the caller's."""
        raise NotImplementedError

    @op("POST", "/api/v1/golden-images/{name}/from-image", role="operator", status=201)
    def image_from_image(self, name: str, request: GoldenFromImage) -> GoldenImageRecord:
        """A golden disk from a netslate image version (rootfs as the disk, its kernel booted directly)."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/golden-images/{name}/{version}", role="operator", status=204)
    def image_remove(self, name: str, version: int) -> None:
        """Remove a golden version no pool or desktop uses."""
        raise NotImplementedError


class LocalDesktops(DesktopsService):
    @property
    def ctx(self):
        return self.parts.ctx

    def list(self, pool: str | None = None, user: str | None = None) -> list[DesktopRecord]:
        return [DesktopRecord(**d) for d in part.list_desktops(self.ctx, pool, user)]

    def show(self, ref: str) -> DesktopRecord:
        return DesktopRecord(**part.show_desktop(self.ctx, ref))

    def release(self, ref: str) -> DesktopRecord:
        data = part.release_desktop(self.ctx, ref, self.actor)
        if data["pool"]:
            Actuator(self.ctx).reconcile(data["pool"])  # the reset, now: the same work locally and on a server
        nudge(self.parts)
        return DesktopRecord(**part.show_desktop(self.ctx, data["id"]))

    def _person(self) -> str:
        """The logged-in person's name (self-service is for people, not tokens or machines)."""
        if self.caller.kind != "user":
            raise Forbidden("log in as a user for self-service", authenticated=self.caller.kind != "anonymous")
        return self.caller.name

    def reset_mine(self, ref: str) -> DesktopRecord:
        d = part.own_desktop(self.ctx, ref, self._person(), "reset")
        part.release_desktop(self.ctx, d["id"], self.actor)
        Actuator(self.ctx).reconcile(d["pool"])  # the reset, now
        data = part.request_desktop(self.ctx, d["pool"], self.caller.name)  # a fresh desktop, still theirs
        nudge(self.parts)
        return DesktopRecord(**data)

    def release_mine(self, ref: str) -> DesktopRecord:
        d = part.own_desktop(self.ctx, ref, self._person(), "release")
        part.release_desktop(self.ctx, d["id"], self.actor)
        Actuator(self.ctx).reconcile(d["pool"])  # reset for the next user now, as `desktop release` does
        nudge(self.parts)
        return DesktopRecord(**part.show_desktop(self.ctx, d["id"]))

    def session(self, ref: str, event: SessionEvent) -> DesktopRecord:
        data = part.report_session_event(self.ctx, ref, event.event, event.user, self.actor, source=event.source)
        nudge(self.parts)
        return DesktopRecord(**data)

    def _console_allowed(self, ref: str) -> int:
        """The desktop's id when the caller may open its console (its user or an admin)."""
        c = self.caller
        if c.role is None and c.kind != "user":  # a logged-in end user has no role, only pools
            raise Forbidden("a bearer token or a login is required", authenticated=False)
        with self.ctx.db.session() as s:
            d = get_desktop(s, ref)
            did, user = d.id, d.user
        if not consoles.may_open_console(c.name, c.has("admin"), user):
            raise Forbidden(f"only the desktop's user ({user or 'nobody'}) or an admin may open its console", authenticated=True)
        return did

    def ticket(self, ref: str, request: TicketRequest) -> Ticket:
        did = self._console_allowed(ref)
        return Ticket(**consoles.issue_ticket(self.ctx, did, request.type, self.actor, ttl=request.ttl,
                                              admin=self.caller.has("admin")))

    @requires(None)  # the desktop's own user or an admin: checked inside
    def browser_console(self, ref: str, ttl: int, host: str | None, relay_port: int | None) -> BrowserConsole:
        """A noVNC page URL whose websocket relay holds a single-use token for this desktop's VNC ticket
        (not an operation of its own: the route knows the relay's port and the host the caller used)."""
        did = self._console_allowed(ref)  # who asks comes first: a caller who may not open it learns nothing else
        if not relay_port:
            raise Conflict("browser consoles are off: start the server with NETSLATE_CONSOLE_PORT set")
        # the browser console is every user's console (the portal's Connect), SPICE desktops included:
        # their VNC display is the same screen, reached only through the single-use relay token
        t = Ticket(**consoles.issue_ticket(self.ctx, did, "vnc", self.actor, ttl=ttl, admin=True))
        token = relay.issue_relay_token(self.ctx.data_dir, t.host, t.port, ttl)
        return BrowserConsole(url=relay.browser_url(host or t.host, relay_port, token, t.password, t.title),
                              relay_port=relay_port, token=token, password=t.password, expires_at=t.expires_at)

    @requires(None)  # the desktop's own user or an admin: checked inside
    def remote_viewer_file(self, ref: str, kind: str | None, ttl: int, server_host: str | None) -> tuple[str, str]:
        """(desktop name, `.vv` text) for the desktop's user or an admin (not an operation of its own:
        the route knows the host name the caller used). A SPICE file goes through the SPICE proxy and
        holds no hypervisor address; without the proxy it is refused. The out-of-band VNC file
        (remote-viewer's VNC has no proxy) is for admins, who know the hosts anyway; an end user of a
        VNC pool uses the browser console."""
        self._console_allowed(ref)
        kind = consoles.console_kind(self.ctx, ref, kind)
        if kind == "spice":
            proxy = getattr(self.parts, "spice_proxy", None)
            if proxy is None or proxy.port is None:
                raise Conflict("remote-viewer files go through netslate's SPICE proxy, which is off: "
                               "start the server with NETSLATE_SPICE_PROXY_PORT set")
            t = self.ticket(ref, TicketRequest(type=kind, ttl=ttl))
            return t.desktop, consoles.proxied_vv(self.ctx, t.model_dump(), spice_proxy_url(self.parts, server_host))
        if not self.caller.has("admin"):
            raise UserError("a remote-viewer VNC file is for admins (remote-viewer cannot use the proxy for VNC); "
                            "a VNC desktop opens in the browser console")
        t = self.ticket(ref, TicketRequest(type=kind, ttl=ttl))
        return t.desktop, vv_file(t.model_dump())

    def snapshots(self, ref: str) -> list[Snapshot]:
        return [Snapshot(**x) for x in snapshots.list_snapshots(self.ctx, ref)]

    def snapshot_create(self, ref: str, request: SnapshotRequest) -> Snapshot:
        return Snapshot(**snapshots.create(self.ctx, ref, request.name, self.actor, request.note))

    def snapshot_revert(self, ref: str, name: str) -> SnapshotRevert:
        return SnapshotRevert(**snapshots.revert(self.ctx, ref, name, self.actor))

    def snapshot_remove(self, ref: str, name: str) -> None:
        snapshots.remove(self.ctx, ref, name, self.actor)

    def images(self, name: str | None = None) -> list[GoldenImageRecord]:
        return [GoldenImageRecord(**g) for g in golden.list_goldens(self.ctx, name)]

    def image_import_uploaded(self, name: str, request: GoldenUpload) -> GoldenImageRecord:
        r = request
        return GoldenImageRecord(**golden.import_uploads(self.ctx, name, r.disk, self.actor, kernel=r.kernel, initrd=r.initrd,
                                                   cmdline=r.cmdline, source=r.source))

    def image_import(self, name, file, kernel=None, initrd=None, cmdline=None) -> GoldenImageRecord:
        return GoldenImageRecord(**golden.import_disk(self.ctx, name, Path(file), self.actor, kernel=kernel, initrd=initrd,
                                                cmdline=cmdline))

    def image_from_image(self, name: str, request: GoldenFromImage) -> GoldenImageRecord:
        return GoldenImageRecord(**golden.from_image(self.ctx, name, request.image, self.actor))

    def image_remove(self, name: str, version: int) -> None:
        golden.remove_golden(self.ctx, name, version, self.actor)


class HttpDesktops(http_client(DesktopsService)):
    def image_import(self, name, file, kernel=None, initrd=None, cmdline=None) -> GoldenImageRecord:
        """Upload the disk (and kernel/initrd), then import the uploads on the server."""
        files = {"disk": Path(file), "kernel": kernel and Path(kernel), "initrd": initrd and Path(initrd)}
        for what, p in files.items():
            if p is not None and not p.is_file():
                raise UserError(f"{p if what == 'disk' else f'--{what} {p}'}: no such file")
        ids = {what: self._upload(p) for what, p in files.items() if p is not None}
        return self.image_import_uploaded(name, GoldenUpload(cmdline=cmdline, source=str(files["disk"].resolve()), **ids))

    def _upload(self, path: Path) -> str:
        def chunks():
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    yield block

        r = self.api.request("POST", "/api/v1/golden-image-uploads", content=chunks(),
                             headers={"Content-Type": "application/octet-stream"})
        return r.json()["upload"]


HTTP_CLASS = "HttpDesktops"
