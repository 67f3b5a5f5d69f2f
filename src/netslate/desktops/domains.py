"""libvirt domains of desktops and the one-reconciler-at-a-time lock, shared by the actuator and snapshots.

Domains are transient: the store holds the definition (`domain_spec`), nothing lingers in libvirt
after a destroy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import secrets
import time
from pathlib import Path

from sqlalchemy import select

from netslate import inventory
from netslate.errors import Conflict
from netslate.store.db import utcnow

from netslate.desktops import domainxml, hosts as hostmod
from netslate.desktops.disks import installation_id, logs_root, make_traversable
from netslate.desktops.models import Desktop, DesktopPool, GoldenImage
from netslate.enrollment import tokens as enroll_tokens


@contextlib.contextmanager
def reconcile_lock(ctx, timeout: float = 120.0):
    """One reconciler at a time per installation (the server loop and CLI commands share it)."""
    f = open(ctx.data_dir / "desktops" / "reconcile.lock", "a+")
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Conflict("another reconcile pass is still running; try again") from None
                time.sleep(0.05)
        yield
    finally:
        f.close()


def domain_spec(ctx, did: int, host_rows: dict) -> domainxml.DomainSpec:
    inst = installation_id(ctx)
    with ctx.db.session() as s:
        d = s.get(Desktop, did)
        p = s.get(DesktopPool, d.pool_id)
        g = s.scalar(select(GoldenImage).where(GoldenImage.name == p.golden, GoldenImage.version == d.golden_version))
        h = host_rows[d.host]
        dtype = (h.capacity or {}).get("domain_type") or ("qemu" if h.accel == "tcg" else "kvm" if h.accel == "kvm" else "qemu")
        locked_until = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        return domainxml.DomainSpec(
            name=d.name, uuid=d.uuid, vcpus=p.vcpus, memory_mib=p.memory_mib,
            disk_path=None if p.diskless else d.disk, mac=d.mac, boot_network=bool(p.diskless),
            domain_type=dtype, display=p.display, video=p.video, usb_redirect=p.usb_redirect,
            smartcard=p.smartcard, network=p.network, listen=h.console_address,
            # consoles start locked: an unknown password that has already expired, until a ticket
            spice_password=secrets.token_urlsafe(18), vnc_password=secrets.token_hex(4),
            password_valid_to=locked_until,
            kernel=g.kernel if g else None, initrd=g.initrd if g else None, cmdline=g.cmdline if g else None,
            serial_log=str(logs_root(ctx) / f"{d.name}.log"),
            metadata={"installation": inst, "pool": p.name, "desktop": str(d.id)},
        )


def start_domain(ctx, did: int, host_rows: dict) -> None:
    """Start the desktop's domain unless it runs already; record the start time."""
    import libvirt

    spec = domain_spec(ctx, did, host_rows)
    with ctx.db.session() as s:
        host = s.get(Desktop, did).host
    conn = hostmod.connect(host_rows[host].uri)
    try:
        conn.lookupByName(spec.name)
        running = True
    except libvirt.libvirtError:
        running = False
    if not running:
        if spec.disk_path:
            make_traversable(Path(spec.disk_path).parent)  # DATA is 0700 again after any Context opened it
        # A fresh one-time enrollment token per definition, bound to the domain's UUID, in its SMBIOS
        # OEM strings: the guest's agent trades it for a credential at trust `host` (issue 13 §3).
        spec.oem_strings.append(host_token_entry(ctx, spec.uuid, spec.mac))
        conn.createXML(domainxml.build(spec), 0)
    with ctx.db.session() as s:
        row = s.get(Desktop, did)
        row.started_at = utcnow()


def host_token_entry(ctx, domain_uuid: str, mac: str | None = None) -> str:
    """`netslate-enroll:nse_...`: a one-time host token bound to `domain_uuid` (and to the machine
    record of `mac` when there is one: a diskless desktop's), for the SMBIOS OEM strings."""
    machine = None
    if mac:
        with ctx.db.session() as s:
            m = inventory.by_mac(s, mac)
            machine = m.id if m is not None else None
    return enroll_tokens.oem_string(enroll_tokens.create(ctx, "desktops", machine=machine, domain_uuid=domain_uuid,
                                                         kind="host")["token"])


def kill_domain(uri: str, name: str) -> None:
    """Power the domain off (and undefine a persistent one); nothing to do when it does not exist."""
    import libvirt

    conn = hostmod.connect(uri)
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isPersistent():
            dom.undefine()


def running_domain(uri: str, name: str):
    """The active libvirt domain of that name, or None."""
    import libvirt

    conn = hostmod.connect(uri)
    try:
        dom = conn.lookupByName(name)
        return dom if dom.isActive() else None
    except libvirt.libvirtError:
        return None
