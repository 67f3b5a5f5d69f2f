"""Golden images: versioned, read-only qcow2 base disks under DATA/desktops/golden/NAME/VERSION.qcow2."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path

from sqlalchemy import func, select

from netslate import audit
from netslate.errors import NotFound, UserError
from netslate.fsutil import fsync_dir
from netslate.names import check_name

from netslate.desktops.disks import make_traversable
from netslate.desktops.models import Desktop, DesktopPool, GoldenImage


def golden_dir(ctx, name: str) -> Path:
    return ctx.data_dir / "desktops" / "golden" / name


def qemu_img_info(path: Path, shown: str | None = None) -> dict:
    proc = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{shown or path}: not a disk image qemu-img can read ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'unknown error'})")
    return json.loads(proc.stdout)


def golden_dict(g: GoldenImage) -> dict:
    return {
        "name": g.name, "version": g.version, "path": g.path, "virtual_size": g.virtual_size,
        "actual_size": g.actual_size, "source": g.source, "kernel": g.kernel, "initrd": g.initrd,
        "cmdline": g.cmdline, "created_at": g.created_at.isoformat() + "Z",
    }


def import_disk(ctx, name: str, file: Path, actor: str, kernel: Path | None = None, initrd: Path | None = None,
                cmdline: str | None = None, source: str | None = None, shown: str | None = None) -> dict:
    """Convert FILE (qcow2 or raw) into the next version of golden NAME. Nothing is left on failure.
    `shown` names the file in messages (an upload's original name)."""
    check_name(name, "golden image name")
    file = Path(file)
    label = shown or str(file)
    if not file.is_file():
        raise UserError(f"{label}: no such file")
    info = qemu_img_info(file, label)
    fmt = info.get("format")
    if fmt not in ("qcow2", "raw"):
        raise UserError(f"{label}: format {fmt!r} is not supported; give a qcow2 or raw disk")
    vsize = int(info.get("virtual-size", 0))
    if vsize < 1024 * 1024 or vsize % 512:
        # qemu-img calls any file "raw": refuse what cannot be a disk (wrong file given)
        raise UserError(f"{label}: not a disk image (format {fmt}, {vsize} bytes; a disk is at least 1 MiB in 512-byte sectors)")
    if info.get("backing-filename"):
        raise UserError(f"{label}: has a backing file; flatten it first (qemu-img convert -O qcow2)")
    for p, what in ((kernel, "kernel"), (initrd, "initrd")):
        if p is not None and not Path(p).is_file():
            raise UserError(f"--{what} {p}: no such file")
    d = golden_dir(ctx, name)
    d.mkdir(parents=True, exist_ok=True)
    make_traversable(d)  # QEMU (libvirt-qemu) opens the golden as a backing file
    with ctx.db.session() as s:
        version = (s.scalar(select(func.max(GoldenImage.version)).where(GoldenImage.name == name)) or 0) + 1
    tmp = d / f".{version}.qcow2.tmp"
    final = d / f"{version}.qcow2"
    extra: list[Path] = []
    try:
        # always a fresh, self-contained qcow2 (raw converted, qcow2 rewritten without any chain)
        proc = subprocess.run(["qemu-img", "convert", "-q", "-f", fmt, "-O", "qcow2", str(file), str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"{label}: qemu-img convert failed: {proc.stderr.strip()}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o444)
        kpath = ipath = None
        if kernel is not None:
            kpath = d / f"{version}.vmlinuz"
            _copy_ro(Path(kernel), kpath)
            extra.append(kpath)
        if initrd is not None:
            ipath = d / f"{version}.initrd"
            _copy_ro(Path(initrd), ipath)
            extra.append(ipath)
        os.replace(tmp, final)
        fsync_dir(d)
        info2 = qemu_img_info(final)
        with ctx.db.session() as s:
            g = GoldenImage(name=name, version=version, path=str(final), virtual_size=int(info2["virtual-size"]),
                            actual_size=int(info2.get("actual-size", 0)), source=source or str(file.resolve()),
                            kernel=str(kpath) if kpath else None, initrd=str(ipath) if ipath else None, cmdline=cmdline)
            s.add(g)
            audit.record(s, actor, "desktop.golden.import", f"golden:{name}@{version}", source=g.source)
            s.flush()
            return golden_dict(g)
    except BaseException:
        for p in (tmp, final, *extra):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        raise


# ---------- uploads (a remote CLI sends the files first, then imports them by upload id) ----------

UPLOAD_RE = re.compile(r"[0-9a-f]{32}")
UPLOAD_MAX_AGE = 24 * 3600


def uploads_dir(ctx) -> Path:
    return ctx.data_dir / "desktops" / "uploads"


class Upload:
    """One uploaded file, written to a temp name and renamed to its id when complete."""

    def __init__(self, ctx):
        d = uploads_dir(ctx)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        now = time.time()
        for old in d.iterdir():  # uploads nobody imported: gone after a day
            with contextlib.suppress(OSError):
                if old.stat().st_mtime < now - UPLOAD_MAX_AGE:
                    old.unlink()
        self.id = secrets.token_hex(16)
        self.path = d / self.id
        self._tmp = d / f".{self.id}.tmp"
        self._f = open(self._tmp, "wb")
        os.chmod(self._tmp, 0o600)

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def finish(self) -> str:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)
        return self.id

    def abort(self) -> None:
        self._f.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


def upload_path(ctx, upload_id: str) -> Path:
    if not UPLOAD_RE.fullmatch(upload_id or ""):
        raise UserError(f"upload {upload_id!r}: not an upload id")
    p = uploads_dir(ctx) / upload_id
    if not p.is_file():
        raise NotFound(f"no upload {upload_id} (uploads are kept for a day)")
    return p


def import_uploads(ctx, name: str, disk: str, actor: str, kernel: str | None = None, initrd: str | None = None,
                   cmdline: str | None = None, source: str | None = None) -> dict:
    """import_disk over uploaded files (by upload id); the uploads are deleted afterwards either way."""
    paths = [upload_path(ctx, u) for u in (disk, kernel, initrd) if u is not None]
    try:
        return import_disk(ctx, name, paths[0], actor, kernel=upload_path(ctx, kernel) if kernel else None,
                           initrd=upload_path(ctx, initrd) if initrd else None, cmdline=cmdline,
                           source=source or f"upload:{disk}", shown=source)
    finally:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _copy_ro(src: Path, dst: Path) -> None:
    tmp = dst.with_name("." + dst.name + ".tmp")
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        while chunk := fi.read(1 << 20):
            fo.write(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    os.chmod(tmp, 0o444)
    os.replace(tmp, dst)


def from_image(ctx, name: str, image_ref: str, actor: str, size_mib: int = 0) -> dict:
    """A golden disk from a netslate image version: its rootfs as the disk, its kernel/initrd booted directly.

    The rootfs artifact is a filesystem image (uncompressed squashfs, EROFS or ext4, as the image
    library stored it); the desktop boots the image's own kernel and initrd with root=/dev/vda and
    rootfstype=<format>. The disk is a qcow2 copy of that file: a read-only filesystem, so the
    image's initramfs is expected to put an overlay on top, as it does for network boot.
    """
    import tempfile

    image, _, ref = image_ref.partition("@")
    check_name(image, "image name")
    resolved = ctx.library.resolve(image, ref or "latest")
    arts = resolved.artifacts
    if "rootfs" not in arts:
        raise UserError(f"image {image}@{resolved.version} has no rootfs artifact")
    with tempfile.TemporaryDirectory(dir=ctx.data_dir, prefix=".from-image-") as tmp:
        paths = {}
        for art in ("rootfs", "kernel", "initrd"):
            if art not in arts:
                continue
            rec = ctx.library.artifact_record(image, str(resolved.version), art)[1]
            p = Path(tmp) / art
            with open(p, "wb") as f:
                for block in ctx.library.read_range(rec, 0, int(rec["size"])):
                    f.write(block)
            paths[art] = p
        # a disk is whole MiBs: pad the filesystem image (zeros past its end are never read)
        size = paths["rootfs"].stat().st_size
        mib = 1024 * 1024
        os.truncate(paths["rootfs"], max(mib, -(-size // mib) * mib))
        fstype = arts["rootfs"].get("format") or "auto"
        cmdline = f"root=/dev/vda rootfstype={fstype} ro console=ttyS0 quiet" if "kernel" in paths else None
        return import_disk(ctx, name, paths["rootfs"], actor, kernel=paths.get("kernel"), initrd=paths.get("initrd"),
                           cmdline=cmdline, source=f"image:{image}@{resolved.version} {resolved.manifest_digest}")


def resolve(ctx, name: str, version: int | None) -> GoldenImage:
    with ctx.db.session() as s:
        q = select(GoldenImage).where(GoldenImage.name == name)
        if version is None:
            g = s.scalar(q.order_by(GoldenImage.version.desc()).limit(1))
        else:
            g = s.scalar(q.where(GoldenImage.version == version))
        if g is None:
            raise NotFound(f"no golden image {name}" + (f"@{version}" if version is not None else ""))
        return g


def parse_ref(ref: str) -> tuple[str, int | None]:
    name, sep, ver = ref.partition("@")
    check_name(name, "golden image name")
    if not sep or ver in ("", "latest"):
        return name, None
    if not ver.isdigit() or int(ver) < 1:
        raise UserError(f"golden version {ver!r}: use a number (IMG@3) or nothing for the newest")
    return name, int(ver)


def list_goldens(ctx, name: str | None = None) -> list[dict]:
    with ctx.db.session() as s:
        q = select(GoldenImage).order_by(GoldenImage.name, GoldenImage.version)
        if name:
            q = q.where(GoldenImage.name == name)
        return [golden_dict(g) for g in s.scalars(q)]


def remove_golden(ctx, name: str, version: int, actor: str) -> None:
    with ctx.db.session() as s:
        g = s.scalar(select(GoldenImage).where(GoldenImage.name == name, GoldenImage.version == version))
        if g is None:
            raise NotFound(f"no golden image {name}@{version}")
        users = [d.name for d in s.scalars(select(Desktop).where(Desktop.golden_version == version)) if d.pool_name in
                 {p.name for p in s.scalars(select(DesktopPool).where(DesktopPool.golden == name))}]
        pinned = [p.name for p in s.scalars(select(DesktopPool).where(DesktopPool.golden == name, DesktopPool.golden_version == version))]
        if users or pinned:
            raise UserError(f"golden {name}@{version} is in use by " + ", ".join(pinned + users))
        path = Path(g.path)
        files = [path] + [Path(p) for p in (g.kernel, g.initrd) if p]
        s.delete(g)
        audit.record(s, actor, "desktop.golden.rm", f"golden:{name}@{version}")
    for p in files:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
