"""Snapshots of persistent desktops as netslate's own qcow2 overlay chain (no libvirt internal
snapshots, so UEFI desktops work too).

A snapshot freezes the desktop's active overlay: a new overlay on top of it becomes the active
disk (live through libvirt's external disk-only snapshot when the domain runs, qemu-img when not).
Revert = a fresh overlay on top of the frozen layer; the desktop restarts from it. Delete = pull
the layer's data into the layers that sit on it (live blockRebase or offline qemu-img rebase).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from sqlalchemy import select

from netslate import audit
from netslate.errors import Conflict, NotFound, UserError
from netslate.names import check_name

from netslate.desktops import domains
from netslate.desktops import states as S
from netslate.desktops.disks import make_traversable, qemu_img
from netslate.desktops.models import Desktop, DesktopHost, DesktopPool, DesktopSnapshot
from netslate.desktops.records import get_desktop as _get


def _backing(path: Path) -> str | None:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    info = json.loads(out.stdout)
    return info.get("full-backing-filename") or info.get("backing-filename")


def _context(ctx, ref):
    with ctx.db.session() as s:
        d = _get(s, ref)
        p = s.get(DesktopPool, d.pool_id) if d.pool_id else None
        if p is None or not p.persistent:
            raise UserError(f"desktop {d.name} is not in a persistent pool; snapshots are for persistent desktops")
        if d.state not in S.RUNNING:
            raise Conflict(f"desktop {d.name} is {d.state}; snapshots need a settled desktop")
        h = s.scalar(select(DesktopHost).where(DesktopHost.name == d.host))
        return d, h


def _domain(uri: str, name: str):
    return domains.running_domain(uri, name)


def _label_like_domain(dom, path: Path) -> None:
    """Give a file we made the DAC owner QEMU runs as (libvirt does not relabel reused overlays)."""
    live = ET.fromstring(dom.XMLDesc(0))
    for sl in live.findall("seclabel"):
        label = sl.findtext("label") or ""
        if sl.get("model") == "dac" and ":" in label:
            uid, gid = (int(x.lstrip("+")) for x in label.split(":", 1))
            os.chown(path, uid, gid)
            return


def create(ctx, ref, name: str, actor: str, note: str = "", scheduled: bool = False) -> dict:
    import libvirt

    check_name(name, "snapshot name")
    d, h = _context(ctx, ref)
    with ctx.db.session() as s:
        if s.scalar(select(DesktopSnapshot).where(DesktopSnapshot.desktop_id == d.id, DesktopSnapshot.name == name)):
            raise Conflict(f"desktop {d.name} already has a snapshot {name!r}")
    frozen = Path(d.disk)
    new = frozen.parent / f"layer-{secrets.token_hex(4)}.qcow2"
    dom = _domain(h.uri, d.name)
    if dom is not None:
        # we make the overlay ourselves (QEMU may not create files in our directory) and let libvirt reuse it
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(frozen), "-F", "qcow2", str(new))
        _label_like_domain(dom, new)
        make_traversable(new.parent)  # QEMU opens it now; a Context opened since may have tightened DATA to 0700
        root = ET.Element("domainsnapshot")
        ET.SubElement(root, "name").text = f"{name}-{int(time.time())}"
        disks = ET.SubElement(root, "disks")
        disk = ET.SubElement(disks, "disk", {"name": "vda", "snapshot": "external", "type": "file"})
        ET.SubElement(disk, "driver", {"type": "qcow2"})
        ET.SubElement(disk, "source", {"file": str(new)})
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT)
        for attempt in range(4):
            try:
                dom.snapshotCreateXML(ET.tostring(root, encoding="unicode"), flags)
                break
            except libvirt.libvirtError as exc:
                # seen under load: QEMU refused the fresh overlay once (EACCES), then took it; ATOMIC
                # guarantees nothing changed, so label it again and retry
                if attempt == 3 or "Permission denied" not in str(exc):
                    with contextlib.suppress(FileNotFoundError):
                        new.unlink()
                    raise
                time.sleep(1.0)
                _label_like_domain(dom, new)
    else:
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(frozen), "-F", "qcow2", str(new))
    with ctx.db.session() as s:
        row = s.get(Desktop, d.id)
        row.disk = str(new)
        snap = DesktopSnapshot(desktop_id=d.id, name=name, file=str(frozen), note=note, scheduled=scheduled)
        s.add(snap)
        audit.record(s, actor, "desktop.snapshot.create", d.name, snapshot=name, live=dom is not None)
        s.flush()
        return _snap_dict(snap)


def _snap_dict(snap: DesktopSnapshot) -> dict:
    return {"name": snap.name, "file": snap.file, "note": snap.note, "scheduled": bool(snap.scheduled),
            "created_at": snap.created_at.isoformat() + "Z"}


def list_snapshots(ctx, ref) -> list[dict]:
    with ctx.db.session() as s:
        d = _get(s, ref)
        return [_snap_dict(x) for x in s.scalars(select(DesktopSnapshot).where(DesktopSnapshot.desktop_id == d.id)
                                                  .order_by(DesktopSnapshot.created_at, DesktopSnapshot.id))]


def revert(ctx, ref, name: str, actor: str) -> dict:
    """Restore one desktop to a snapshot (the rest of the pool is untouched); it restarts from it."""
    d, h = _context(ctx, ref)
    with ctx.db.session() as s:
        snap = s.scalar(select(DesktopSnapshot).where(DesktopSnapshot.desktop_id == d.id, DesktopSnapshot.name == name))
        if snap is None:
            raise NotFound(f"desktop {d.name} has no snapshot {name!r}")
        frozen = Path(snap.file)
        referenced = {x.file for x in s.scalars(select(DesktopSnapshot).where(DesktopSnapshot.desktop_id == d.id))}
    with domains.reconcile_lock(ctx):
        domains.kill_domain(h.uri, d.name)
        new = frozen.parent / f"layer-{secrets.token_hex(4)}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(frozen), "-F", "qcow2", str(new))
        old = Path(d.disk)
        with ctx.db.session() as s:
            row = s.get(Desktop, d.id)
            row.disk = str(new)
            audit.record(s, actor, "desktop.snapshot.revert", d.name, snapshot=name)
        if str(old) not in referenced:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()  # the changes made since the snapshot are discarded
        domains.start_domain(ctx, d.id, {h.name: h})
    return {"desktop": d.name, "reverted_to": name, "disk": str(new)}


def remove(ctx, ref, name: str, actor: str) -> None:
    """Merge the layer into the layers on top of it, then delete it."""
    d, h = _context(ctx, ref)
    with ctx.db.session() as s:
        snap = s.scalar(select(DesktopSnapshot).where(DesktopSnapshot.desktop_id == d.id, DesktopSnapshot.name == name))
        if snap is None:
            raise NotFound(f"desktop {d.name} has no snapshot {name!r}")
        others = [x.file for x in s.scalars(select(DesktopSnapshot).where(DesktopSnapshot.desktop_id == d.id)) if x.id != snap.id]
        frozen = snap.file
    parent = _backing(Path(frozen))
    if parent is None:
        raise Conflict(f"snapshot {name}: cannot read its layer {frozen}")
    with domains.reconcile_lock(ctx):
        _merge_and_delete(ctx, d, h, snap.id, name, frozen, parent, others, actor)


def _chain(top: str) -> list[str]:
    out, f = [], top
    while f and f not in out and len(out) < 256:
        out.append(f)
        f = _backing(Path(f))
    return out


def _wait_job(dom, what: str) -> None:
    deadline = time.monotonic() + 300
    while dom.blockJobInfo("vda", 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    if dom.blockJobInfo("vda", 0):
        raise Conflict(f"{what}: the block job on the running desktop did not finish")


def _merge_and_delete(ctx, d, h, snap_id, name, frozen, parent, others, actor) -> None:
    """Remove a layer from every chain that uses it, then delete it (the caller holds the lock).

    Layers on top of it that nothing runs on: `qemu-img rebase` onto its parent (offline, safe mode).
    The running desktop's active overlay on top of it: live `blockRebase` (pull its data up).
    A frozen layer inside the running chain on top of it: live `blockCommit` of that layer down
    into this one, which then stands for the layer above (its snapshot row moves to this file).
    """
    dom = _domain(h.uri, d.name)
    live = set(_chain(d.disk)) if dom is not None else set()
    children = [Path(f) for f in others + [d.disk] if Path(f).exists() and _backing(Path(f)) == frozen]
    offline = [f for f in children if str(f) not in live]
    active = [f for f in children if str(f) == d.disk and str(f) in live]
    inner = [f for f in children if str(f) in live and str(f) != d.disk]
    for f in offline:
        qemu_img("rebase", "-f", "qcow2", "-b", parent, "-F", "qcow2", str(f))
    for f in active:
        dom.blockRebase("vda", parent, 0, 0)
        _wait_job(dom, f"snapshot {name}")
    delete_file = frozen
    for f in inner:
        dom.blockCommit("vda", frozen, str(f), 0, 0)
        _wait_job(dom, f"snapshot {name}")
        delete_file = str(f)
    with ctx.db.session() as s:
        if inner:
            moved = s.scalar(select(DesktopSnapshot).where(DesktopSnapshot.desktop_id == d.id,
                                                           DesktopSnapshot.file == str(inner[0])))
            if moved is not None:
                moved.file = frozen  # that snapshot's content now lives in the older file
        row = s.get(DesktopSnapshot, snap_id)
        s.delete(row)
        audit.record(s, actor, "desktop.snapshot.rm", d.name, snapshot=name)
    with contextlib.suppress(FileNotFoundError):
        Path(delete_file).unlink()


def scheduled(ctx, desktop_id: int, keep: int, actor: str = "netslate:schedule") -> None:
    """Take a scheduled snapshot and prune older scheduled ones beyond `keep` (called by the actuator,
    which already holds the reconcile lock)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    create(ctx, desktop_id, f"auto-{stamp}-{secrets.token_hex(2)}", actor, note="scheduled", scheduled=True)
    d, h = _context(ctx, desktop_id)
    with ctx.db.session() as s:
        rows = list(s.scalars(select(DesktopSnapshot).where(DesktopSnapshot.desktop_id == desktop_id)
                              .order_by(DesktopSnapshot.created_at, DesktopSnapshot.id)))
        auto = [r for r in rows if r.scheduled]
        doomed = [(r.id, r.name, r.file) for r in auto[: max(0, len(auto) - keep)]]
    for sid, name, frozen in doomed:
        with ctx.db.session() as s:
            others = [x.file for x in s.scalars(select(DesktopSnapshot).where(DesktopSnapshot.desktop_id == desktop_id)) if x.id != sid]
            d = s.get(Desktop, desktop_id)
        parent = _backing(Path(frozen))
        if parent is None:
            continue
        _merge_and_delete(ctx, d, h, sid, name, frozen, parent, others, actor)
