"""Hypervisor hosts: registration, libvirt connections and capacity (the libvirt edge)."""

from __future__ import annotations

import atexit
import fnmatch
import shutil
import threading
import xml.etree.ElementTree as ET
from typing import Any

from sqlalchemy import select

from netslate import audit, kvmcheck
from netslate.errors import Conflict, UserError
from netslate.names import check_name
from netslate.store.db import utcnow

from netslate.desktops.models import Desktop, DesktopHost
from netslate.desktops.records import get_host

ACCELS = ("auto", "kvm", "tcg")
_URI_SCHEMES = ("qemu:", "qemu+ssh:", "qemu+tcp:", "qemu+tls:", "qemu+unix:", "qemu+libssh:", "qemu+libssh2:", "test:")


class HostUnreachable(Exception):
    pass


def _libvirt():
    import libvirt

    # libvirt prints every error to stderr by default; we report them ourselves
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


_conns: dict[str, Any] = {}
_conns_lock = threading.Lock()


def connect(uri: str, fresh: bool = False):
    """A cached libvirt connection; a dead cached one is replaced. Raises HostUnreachable."""
    libvirt = _libvirt()
    with _conns_lock:
        conn = _conns.get(uri)
        if conn is not None and not fresh:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HostUnreachable(f"cannot connect to {uri}: {exc.get_error_message()}") from None
        try:
            conn.setKeepAlive(5, 3)
        except libvirt.libvirtError:
            pass  # not every driver supports keepalive (local qemu:///system does not need it)
        _conns[uri] = conn
        return conn


def close_all() -> None:
    with _conns_lock:
        conns = list(_conns.values())
        _conns.clear()
    for c in conns:
        try:
            c.close()
        except Exception:
            pass


atexit.register(close_all)  # close before interpreter teardown (libvirt's __del__ fails late)


def drop_connection(uri: str) -> None:
    with _conns_lock:
        conn = _conns.pop(uri, None)
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass


def libvirt_offers_kvm(conn) -> bool:
    caps = ET.fromstring(conn.getCapabilities())
    for guest in caps.findall("guest"):
        if guest.find("arch").get("name") == "x86_64":
            if any(d.get("type") == "kvm" for d in guest.findall("arch/domain")):
                return True
    return False


def choose_accel(accel: str, offered: bool, local: bool, probe: tuple[bool, str] | None) -> tuple[str, str | None]:
    """(domain type, warning line or None) for a host. Pure: libvirt's word (`offered`) is not
    enough for `auto`; only a test guest that booted under KVM (`probe`) is (issue 11 #10)."""
    if accel == "kvm":
        return "kvm", None
    if accel == "tcg" or not offered:
        return "qemu", None
    if not local:
        return "kvm", "KVM is not proven on a remote host (libvirt offers it); if desktops fail to start, re-add the host with --accel tcg"
    if probe is not None and probe[0]:
        return "kvm", None
    detail = probe[1] if probe is not None else "not probed"
    return "qemu", f"KVM does not work on this host ({detail}): desktops run under TCG (slow); fix KVM, then add the host again"


def probe_accel(conn, uri: str, accel: str) -> tuple[str, str | None]:
    """Decide the domain type of a host being added: for `auto` where libvirt offers KVM, boot a
    tiny test guest under KVM with a time-out first (kvmcheck.probe_libvirt)."""
    offered = accel == "auto" and libvirt_offers_kvm(conn)
    local = kvmcheck.local_uri(uri)
    probe = kvmcheck.probe_libvirt(conn) if offered and local else None
    return choose_accel(accel, offered, local, probe)


def degraded_line(host: str, error: str | None) -> str | None:
    """The one line that marks a host degraded when a domain failed to start because of the
    hypervisor (not because of the desktop), else None. Pure."""
    reason = kvmcheck.hypervisor_fault(error)
    if reason is None:
        return None
    return f"host {host} is degraded: {reason}; its desktops wait (re-add it with --accel tcg, or fix KVM)"


def mark_degraded(ctx, name: str, line: str) -> bool:
    """Record the host as degraded (once); True the first time. Scheduling skips degraded hosts."""
    with ctx.db.session() as s:
        h = s.scalar(select(DesktopHost).where(DesktopHost.name == name))
        if h is None or (h.capacity or {}).get("degraded") == line:
            return False
        h.capacity = {**(h.capacity or {}), "degraded": line}
        audit.record(s, "desktops", "desktop.host.degraded", f"host:{name}", reason=line)
        return True


def read_capacity(conn, data_dir) -> dict[str, Any]:
    """CPUs and memory from the node; space from libvirt storage pools and the desktop disk directory."""
    info = conn.getInfo()  # [model, memory MiB, cpus, mhz, nodes, sockets, cores, threads]
    free = conn.getFreeMemory()
    pools = []
    for p in conn.listAllStoragePools():
        try:
            state, capacity, allocation, available = p.info()
            pools.append({"name": p.name(), "active": bool(p.isActive()), "capacity": capacity, "available": available})
        except Exception:
            continue
    disk_root = data_dir / "desktops"
    disk_root.mkdir(parents=True, exist_ok=True)
    du = shutil.disk_usage(disk_root)
    return {
        "cpus": int(info[2]),
        "memory_mib": int(info[1]),
        "free_memory_mib": int(free // (1024 * 1024)),
        "storage_pools": pools,
        "disk_dir_free": du.free,
        "disk_dir_total": du.total,
    }


def host_dict(h: DesktopHost, desktops: int = 0) -> dict[str, Any]:
    return {
        "name": h.name,
        "uri": h.uri,
        "accel": h.accel,
        "max_starting": h.max_starting,
        "reserve_mib": h.reserve_mib,
        "console_address": h.console_address,
        "labels": h.labels or {},
        "reachable": h.reachable,
        "last_error": h.last_error,
        "capacity": h.capacity or {},
        "accel_note": (h.capacity or {}).get("accel_note"),
        "degraded": (h.capacity or {}).get("degraded"),
        "last_seen": h.last_seen.isoformat() + "Z" if h.last_seen else None,
        "desktops": desktops,
    }


def _parse_labels(labels: list[str] | None) -> dict[str, str]:
    out = {}
    for item in labels or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UserError(f"label {item!r}: use KEY=VALUE")
        check_name(k, "label key")
        out[k] = v
    return out


def add_host(ctx, name: str, uri: str, actor: str, accel: str = "auto", max_starting: int = 4,
             reserve_mib: int = 512, console_address: str = "127.0.0.1", labels: list[str] | None = None) -> dict:
    check_name(name, "host name")
    if not uri.startswith(_URI_SCHEMES):
        raise UserError(f"host URI {uri!r}: use a libvirt QEMU URI such as qemu:///system or qemu+ssh://HOST/system")
    if accel not in ACCELS:
        raise UserError(f"--accel {accel!r}: choose one of {', '.join(ACCELS)}")
    if max_starting < 1 or max_starting > 1000:
        raise UserError("--max-starting must be between 1 and 1000")
    if reserve_mib < 0:
        raise UserError("--reserve must be 0 or more MiB")
    lab = _parse_labels(labels)
    with ctx.db.session() as s:
        if s.scalar(select(DesktopHost).where(DesktopHost.name == name)):
            raise Conflict(f"a host named {name!r} already exists")
    # check before recording: a host we cannot reach is refused, nothing is written
    try:
        conn = connect(uri, fresh=True)
        cap = read_capacity(conn, ctx.data_dir)
        cap["domain_type"], cap["accel_note"] = probe_accel(conn, uri, accel)
    except HostUnreachable as exc:
        raise UserError(f"host {name}: {exc}") from None
    with ctx.db.session() as s:
        if s.scalar(select(DesktopHost).where(DesktopHost.name == name)):
            raise Conflict(f"a host named {name!r} already exists")
        h = DesktopHost(name=name, uri=uri, accel=accel, max_starting=max_starting, reserve_mib=reserve_mib,
                        console_address=console_address, labels=lab, capacity=cap, reachable=True, last_seen=utcnow())
        s.add(h)
        audit.record(s, actor, "desktop.host.add", f"host:{name}", uri=uri, accel=accel)
        s.flush()
        return host_dict(h)


def list_hosts(ctx) -> list[dict]:
    with ctx.db.session() as s:
        counts = {}
        for d in s.scalars(select(Desktop)):
            counts[d.host] = counts.get(d.host, 0) + 1
        return [host_dict(h, counts.get(h.name, 0)) for h in s.scalars(select(DesktopHost).order_by(DesktopHost.name))]


def show_host(ctx, name: str, refresh: bool = True) -> dict:
    with ctx.db.session() as s:
        get_host(s, name)
    if refresh:
        refresh_host(ctx, name)
    with ctx.db.session() as s:
        h = s.scalar(select(DesktopHost).where(DesktopHost.name == name))
        n = len(list(s.scalars(select(Desktop).where(Desktop.host == name))))
        return host_dict(h, n)


def refresh_host(ctx, name: str) -> bool:
    """Read capacity again; record reachability. Returns whether the host answered."""
    with ctx.db.session() as s:
        h = s.scalar(select(DesktopHost).where(DesktopHost.name == name))
        uri, old = h.uri, dict(h.capacity or {})
    try:
        conn = connect(uri)
        cap = read_capacity(conn, ctx.data_dir)
        # the accelerator was proven when the host was added (a probe boots a guest: not on every read)
        cap.update({k: old[k] for k in ("domain_type", "accel_note", "degraded") if k in old})
        ok, err = True, ""
    except Exception as exc:  # libvirt errors on a half-dead connection, HostUnreachable
        drop_connection(uri)
        ok, err, cap = False, str(exc), None
    with ctx.db.session() as s:
        h = s.scalar(select(DesktopHost).where(DesktopHost.name == name))
        h.reachable = ok
        h.last_error = err
        if cap is not None:
            h.capacity = cap
            h.last_seen = utcnow()
    return ok


def remove_host(ctx, name: str, actor: str) -> None:
    with ctx.db.session() as s:
        h = get_host(s, name)
        n = len(list(s.scalars(select(Desktop).where(Desktop.host == name))))
        if n:
            raise Conflict(f"host {name} still has {n} desktop(s); shrink or remove their pools first")
        s.delete(h)
        audit.record(s, actor, "desktop.host.rm", f"host:{name}")


def select_hosts(selector: str, hosts: list[DesktopHost]) -> list[str]:
    """`*` (all), a comma list of names or globs, or `label=value` terms (all must match)."""
    selector = (selector or "*").strip()
    out = []
    for h in hosts:
        terms = [t.strip() for t in selector.split(",") if t.strip()]
        if any("=" in t for t in terms):
            ok = all((h.labels or {}).get(k) == v for k, _, v in (t.partition("=") for t in terms))
        else:
            ok = any(fnmatch.fnmatchcase(h.name, t) for t in terms)
        if ok:
            out.append(h.name)
    return out
