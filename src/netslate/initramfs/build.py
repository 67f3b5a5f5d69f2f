"""Build the netslate initramfs (host side): a gzip newc cpio written atomically.

Contents: busybox-static (shell, mount, udhcpc, switch_root, insmod, findfs), the host's
CPython 3.11 (binary + shared libraries found with ldd + a trimmed stdlib), netslate's
stdlib-only boot modules, mkfs.ext4/e2fsck, and kernel modules of one kernel version loaded by
`insmod` in an order computed here from modules.dep (no depmod, no modprobe needed at boot).

The cpio is written by this module (pure newc writer), so device nodes need no root and the
output is reproducible: uid/gid 0, fixed mtimes for generated files, sorted entries.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import netslate
from netslate.errors import UserError
from netslate.fsutil import atomic_write

BUILDER_VERSION = "1"
FILES = Path(__file__).parent / "files"
BUSYBOX = Path("/bin/busybox")
PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
E2FS = [Path("/sbin/mke2fs"), Path("/sbin/e2fsck")]
MKE2FS_CONF = Path("/etc/mke2fs.conf")
EXTLINUX = Path("/usr/bin/extlinux")  # BIOS local boot from the NETSLATE disk (ldlinux is built into it)
# UEFI local boot: GPT + an EFI system partition with systemd-boot as the fallback loader.
SFDISK = Path("/usr/sbin/sfdisk")
MKFS_VFAT = Path("/usr/sbin/mkfs.fat")
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")

# Modules the boot needs: NICs, disks, the image filesystems, overlay, loop. Missing optional
# ones are skipped (built in, or not this kernel's business); missing required ones are an error.
REQUIRED_MODULES = ("squashfs", "overlay", "loop")
OPTIONAL_MODULES = (
    "virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "e1000", "e1000e", "igb", "r8169",
    "sd_mod", "ahci", "ata_piix", "nvme", "ext4", "erofs", "crc32c_generic", "crc32c_intel", "libcrc32c",
    "fat", "vfat", "nls_cp437", "nls_utf8", "nls_ascii",
)

# stdlib parts the boot never needs (GUI, tests, build tools, docs, unused databases).
STDLIB_DROP_DIRS = {
    "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data", "distutils",
    "unittest", "sqlite3", "dbm", "curses", "venv", "site-packages", "dist-packages", "lib-dynload",
    "xmlrpc", "wsgiref", "msilib", "__phello__",
}
STDLIB_DROP_FILES = {"turtle.py", "pydoc.py", "antigravity.py", "this.py", "doctest.py", "_pydecimal.py"}
DYNLOAD_DROP = re.compile(r"^(_test|_ctypes_test|_xxtest|xxlimited|_tkinter|_curses|readline|nis|ossaudiodev|audioop|_dbm|_gdbm|_sqlite3|_crypt)")

# netslate's boot code in the initramfs, all standard library only: the on-machine library (whole),
# the pull client, and every module of this package but the builder (host side: it needs the rest
# of netslate). tests/onmachine imports exactly these files in a Python without site-packages.
NETSLATE_HOST_ONLY = {"initramfs/build.py"}


def netslate_files() -> list[str]:
    """The package files (relative to the netslate package) copied into the initramfs."""
    pkg = Path(netslate.__file__).parent
    files = ["__init__.py", "images/__init__.py", "images/pull.py"]
    for sub in ("onmachine", "initramfs"):
        files += sorted(f"{sub}/{p.name}" for p in (pkg / sub).glob("*.py") if f"{sub}/{p.name}" not in NETSLATE_HOST_ONLY)
    return files


# ---------------------------------------------------------------- pure parts
@dataclass(frozen=True)
class CpioEntry:
    """One archive member. kind: file | dir | symlink | chr."""

    path: str  # without leading /
    kind: str
    mode: int = 0o755
    data: bytes = b""
    target: str = ""
    mtime: int = 0
    rdev: tuple[int, int] = (0, 0)


def newc(entries: list[CpioEntry]) -> bytes:
    """A newc ("070701") cpio archive of `entries`, parents before children."""
    out = io.BytesIO()
    kinds = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "chr": stat.S_IFCHR}

    def member(ino: int, name: str, mode: int, body: bytes, mtime: int, nlink: int, rdev=(0, 0)) -> None:
        nb = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, nlink, mtime, len(body), 0, 0, rdev[0], rdev[1], len(nb), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(nb)
        out.write(b"\0" * ((4 - (110 + len(nb)) % 4) % 4))
        out.write(body)
        out.write(b"\0" * ((4 - len(body) % 4) % 4))

    for ino, e in enumerate(sorted(entries, key=lambda e: e.path), start=1):
        body = e.data if e.kind == "file" else e.target.encode() if e.kind == "symlink" else b""
        perm = 0o777 if e.kind == "symlink" else e.mode & 0o7777
        member(ino, e.path, kinds[e.kind] | perm, body, e.mtime, 2 if e.kind == "dir" else 1, e.rdev)
    member(0, "TRAILER!!!", 0, b"", 0, 1)
    return out.getvalue()


def parse_ldd(text: str) -> list[str]:
    """Library paths from `ldd` output (the loader included, the vdso not)."""
    libs = []
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"^\S+ => (/\S+) \(0x[0-9a-f]+\)\Z", line) or re.match(r"^(/\S+) \(0x[0-9a-f]+\)\Z", line)
        if m:
            libs.append(m.group(1))
    return libs


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep → {name: (relative path, [dependency paths])}."""
    out = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        out[module_name(path.strip())] = (path.strip(), deps.split())
    return out


def load_order(dep: dict[str, tuple[str, list[str]]], wanted: list[str]) -> list[str]:
    """Module paths to insmod, every module after its dependencies, each once."""
    by_path = {p: (p, d) for p, d in dep.values()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str, stack: tuple = ()) -> None:
        if path in seen or path in stack:
            return
        for d in by_path.get(path, (path, []))[1]:
            visit(d, stack + (path,))
        seen.add(path)
        order.append(path)

    for name in wanted:
        if name in dep:
            visit(dep[name][0])
    return order


def stdlib_keep(rel: str) -> bool:
    """Whether a path relative to the stdlib dir goes into the initramfs."""
    parts = rel.split("/")
    if parts[0] in STDLIB_DROP_DIRS or parts[0].startswith("config-"):
        return False
    if len(parts) == 1 and parts[0] in STDLIB_DROP_FILES:
        return False
    if "__pycache__" in parts:
        name = parts[-1]
        if ".opt-" in name:
            return False
        if len(parts) == 2:  # top-level module's pyc: keep only if its .py is kept
            return name.split(".")[0] + ".py" not in STDLIB_DROP_FILES
    if "test" in parts or "tests" in parts or "idle_test" in parts:
        return False
    return True


def kernel_version_from_bzimage(data: bytes) -> str | None:
    """The version string a bzImage carries (boot protocol: header 'HdrS', kernel_version pointer)."""
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        return None
    ptr = int.from_bytes(data[0x20E:0x210], "little")
    if not ptr:
        return None
    start = ptr + 0x200
    raw = data[start:start + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    return raw.split()[0] if raw else None


# ---------------------------------------------------------------- collecting files
class Collector:
    def __init__(self) -> None:
        self.entries: dict[str, CpioEntry] = {}

    def dir(self, path: str, mode: int = 0o755) -> None:
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p and p not in self.entries:
                self.entries[p] = CpioEntry(p, "dir", mode)

    def add(self, entry: CpioEntry) -> None:
        parent = entry.path.rsplit("/", 1)[0] if "/" in entry.path else ""
        if parent:
            self.dir(parent)
        self.entries[entry.path] = entry

    def file(self, path: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        self.add(CpioEntry(path.strip("/"), "file", mode, data, mtime=mtime))

    def copy(self, src: Path, dest: str | None = None, keep_mtime: bool = False) -> None:
        st = os.stat(src)
        self.file(dest or str(src), Path(src).read_bytes(), stat.S_IMODE(st.st_mode), int(st.st_mtime) if keep_mtime else 0)

    def symlink(self, path: str, target: str) -> None:
        self.add(CpioEntry(path.strip("/"), "symlink", 0o777, target=target))

    def binary(self, src: Path, dest: str | None = None) -> None:
        """A dynamically linked program and every library ldd names (copied to the same paths)."""
        self.copy(src, dest)
        self.libs(src)

    def libs(self, src: Path) -> None:
        proc = subprocess.run(["ldd", str(src)], capture_output=True, text=True)
        if proc.returncode != 0 and "not a dynamic executable" not in (proc.stdout + proc.stderr):
            raise UserError(f"ldd {src} failed: {proc.stderr.strip()}")
        for lib in parse_ldd(proc.stdout):
            if lib.strip("/") not in self.entries:
                self.copy(Path(os.path.realpath(lib)), lib)


def _need(path: Path, package: str) -> Path:
    if not path.exists():
        raise UserError(f"{path} not found: install the Debian package {package} (scripts/install-deps.sh does)")
    return path


def add_busybox(c: Collector) -> None:
    _need(BUSYBOX, "busybox-static")
    c.copy(BUSYBOX, "bin/busybox")
    out = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True).stdout
    for applet in out.split():
        applet = applet.strip("/")
        if applet and applet != "bin/busybox" and applet not in c.entries:
            c.symlink(applet, "/bin/busybox")


def add_python(c: Collector) -> None:
    _need(PYTHON, "python3.11")
    c.binary(PYTHON, "usr/bin/python3.11")
    c.symlink("usr/bin/python3", "python3.11")
    for root, dirs, files in os.walk(STDLIB):
        rel_root = os.path.relpath(root, STDLIB)
        dirs[:] = sorted(d for d in dirs if stdlib_keep(os.path.normpath(os.path.join(rel_root, d))))
        for f in sorted(files):
            rel = os.path.normpath(os.path.join(rel_root, f))
            if (f.endswith(".py") or f.endswith(".pyc")) and stdlib_keep(rel):
                # Keep the mtime: the stdlib's .pyc files are checked against it.
                c.copy(Path(root) / f, f"usr/lib/python3.11/{rel}", keep_mtime=True)
    dyn = STDLIB / "lib-dynload"
    for so in sorted(dyn.glob("*.so")):
        if not DYNLOAD_DROP.match(so.name):
            c.copy(so, f"usr/lib/python3.11/lib-dynload/{so.name}")
            c.libs(so)


def add_netslate(c: Collector) -> None:
    import py_compile
    import sys
    import tempfile

    pkg = Path(netslate.__file__).parent
    for rel in netslate_files():
        src = pkg / rel
        dest = f"usr/lib/python3.11/netslate/{rel}"
        c.file(dest, src.read_bytes(), 0o644)
        if sys.version_info[:2] == (3, 11):  # precompile: saves seconds under TCG
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "x.pyc"
                py_compile.compile(str(src), cfile=str(out), dfile=f"/{dest}", doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
                d, f = dest.rsplit("/", 1)
                c.file(f"{d}/__pycache__/{f[:-3]}.{sys.implementation.cache_tag}.pyc", out.read_bytes())


def add_e2fsprogs(c: Collector) -> None:
    for p in E2FS:
        c.binary(_need(p, "e2fsprogs"), f"sbin/{p.name}")
    c.symlink("sbin/mkfs.ext4", "mke2fs")
    if MKE2FS_CONF.exists():
        c.copy(MKE2FS_CONF, "etc/mke2fs.conf")


def add_local_boot(c: Collector) -> None:
    """What cache mode needs to make the NETSLATE disk bootable by the firmware (localboot.py)."""
    c.binary(_need(EXTLINUX, "extlinux"), "usr/bin/extlinux")
    c.binary(_need(SFDISK, "fdisk"), "usr/sbin/sfdisk")
    c.binary(_need(MKFS_VFAT, "dosfstools"), "usr/sbin/mkfs.fat")
    c.symlink("usr/sbin/mkfs.vfat", "mkfs.fat")
    c.copy(_need(SYSTEMD_BOOT, "systemd-boot-efi"), "usr/lib/netslate/systemd-bootx64.efi")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=256 << 20)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    return data


def add_modules(c: Collector, modules_dir: Path, kver: str) -> list[str]:
    dep_file = modules_dir / "modules.dep"
    if not dep_file.exists():
        raise UserError(f"{modules_dir} has no modules.dep: not a kernel modules tree")
    dep = parse_modules_dep(dep_file.read_text())
    builtin = set()
    bfile = modules_dir / "modules.builtin"
    if bfile.exists():
        builtin = {module_name(line.strip()) for line in bfile.read_text().splitlines() if line.strip()}
    missing = [m for m in REQUIRED_MODULES if m not in dep and m not in builtin]
    if missing:
        raise UserError(f"kernel {kver} has neither a module nor built-in support for: {', '.join(missing)}")
    order = load_order(dep, list(REQUIRED_MODULES) + [m for m in OPTIONAL_MODULES if m in dep])
    lines = []
    for rel in order:
        data = _module_bytes(modules_dir / rel)
        plain = re.sub(r"\.(xz|zst|gz)$", "", rel)
        c.file(f"lib/modules/{kver}/{plain}", data, 0o644)
        lines.append(plain)
    c.file("etc/netslate/modules.order", ("\n".join(lines) + "\n").encode())
    return [module_name(p) for p in order]


def collect(modules_dir: Path, kver: str) -> tuple[Collector, dict]:
    c = Collector()
    for d in ("proc", "sys", "dev", "run", "tmp", "newroot", "root", "etc/netslate", "var", "mnt"):
        c.dir(d)
    c.add(CpioEntry("dev/console", "chr", 0o600, rdev=(5, 1)))
    c.add(CpioEntry("dev/null", "chr", 0o666, rdev=(1, 3)))
    modules = add_modules(c, modules_dir, kver)  # first: a wrong modules tree fails fast
    add_busybox(c)
    add_python(c)
    add_netslate(c)
    add_e2fsprogs(c)
    add_local_boot(c)
    c.file("init", (FILES / "init").read_bytes(), 0o755)
    c.file("etc/netslate/udhcpc.sh", (FILES / "udhcpc.sh").read_bytes(), 0o755)
    c.file("etc/netslate/kernel", (kver + "\n").encode())
    c.file("etc/netslate/version", f"netslate-{netslate.__version__}\n".encode())
    c.file("etc/resolv.conf", b"")
    c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    c.file("etc/group", b"root:x:0:\n")
    c.dir("tmp", 0o1777)
    c.entries["tmp"] = CpioEntry("tmp", "dir", 0o1777)
    return c, {"kernel_version": kver, "modules": modules}


def content_digest(entries: list[CpioEntry]) -> str:
    h = hashlib.sha256(BUILDER_VERSION.encode())
    for e in sorted(entries, key=lambda e: e.path):
        h.update(f"\0{e.path}\0{e.kind}\0{e.mode:o}\0{e.target}\0{e.mtime}\0{e.rdev}\0".encode())
        h.update(hashlib.sha256(e.data).digest())
    return h.hexdigest()


# ---------------------------------------------------------------- entry points
def modules_dir_for(kernel_version: str | None, modules_dir: Path | None) -> tuple[Path, str]:
    if modules_dir is not None:
        modules_dir = Path(modules_dir)
        if not modules_dir.is_dir():
            raise UserError(f"modules directory {modules_dir} does not exist")
        return modules_dir, kernel_version or modules_dir.name
    if kernel_version is None:
        raise UserError("give --kernel-version VER or --modules-dir DIR")
    if not re.match(r"^[A-Za-z0-9._+-]{1,100}\Z", kernel_version):
        raise UserError(f"invalid kernel version {kernel_version!r}")
    d = Path("/lib/modules") / kernel_version
    if not d.is_dir():
        raise UserError(f"no modules for kernel {kernel_version} in /lib/modules (install its linux-image package, or give --modules-dir)")
    return d, kernel_version


def build(output: Path, kernel_version: str | None = None, modules_dir: Path | None = None) -> dict:
    """Build the initramfs into `output` (atomically). Returns a summary."""
    mdir, kver = modules_dir_for(kernel_version, modules_dir)
    c, info = collect(mdir, kver)
    entries = list(c.entries.values())
    digest = content_digest(entries)
    archive = newc(entries)
    packed = gzip.compress(archive, compresslevel=6, mtime=0)
    atomic_write(Path(output), packed)
    return {
        "output": str(output), "kernel_version": kver, "modules_dir": str(mdir), "modules": info["modules"],
        "files": len(entries), "bytes_uncompressed": len(archive), "bytes": len(packed),
        "content_digest": "sha256:" + digest, "compression": "gzip",
    }


_memo: dict[tuple, tuple[Path, dict]] = {}


def cached(data_dir: Path, kernel_version: str | None = None, modules_dir: Path | None = None) -> tuple[Path, dict]:
    """The netslate initramfs for a kernel, cached as DATA/initramfs/<ver>-<hash>.img (hash of its content).

    Computing the hash reads every input (~50 MB, a few seconds), so the answer is also kept in
    memory for the life of the process (a server calls this per kernel version, not per boot)."""
    mdir, kver = modules_dir_for(kernel_version, modules_dir)
    memo_key = (str(Path(data_dir).resolve()), str(mdir), kver)
    hit = _memo.get(memo_key)
    if hit is not None and hit[0].exists():
        return hit[0], dict(hit[1], cached=True)
    c, info = collect(mdir, kver)
    entries = list(c.entries.values())
    digest = content_digest(entries)
    path = Path(data_dir) / "initramfs" / f"{kver}-{digest[:16]}.img"
    summary = {"output": str(path), "kernel_version": kver, "modules_dir": str(mdir), "modules": info["modules"],
               "files": len(entries), "content_digest": "sha256:" + digest, "compression": "gzip", "cached": True}
    if not path.exists():
        archive = newc(entries)
        atomic_write(path, gzip.compress(archive, compresslevel=6, mtime=0))
        summary["cached"] = False
    summary["bytes"] = path.stat().st_size
    _memo[memo_key] = (path, summary)
    return path, summary


def _export(ctx, record: dict, dest: Path, limit: int | None = None) -> None:
    end = record["size"] if limit is None else min(limit, record["size"])
    with open(dest, "wb") as f:
        for piece in ctx.library.read_range(record, 0, end):
            f.write(piece)


def image_modules_dir(rootfs: Path, fmt: str, kver: str, work: Path) -> Path | None:
    """The image's own /lib/modules/KVER (squashfs rootfs: extracted with unsquashfs), or None."""
    if fmt != "squashfs" or not shutil.which("unsquashfs"):
        return None
    out = work / "modules-root"
    for sub in (f"lib/modules/{kver}", f"usr/lib/modules/{kver}"):
        subprocess.run(["unsquashfs", "-q", "-n", "-f", "-d", str(out), str(rootfs), sub], capture_output=True)
        if (out / sub / "modules.dep").exists():
            return out / sub
    return None


def import_as_initrd(ctx, name: str, ref: str, kernel_version: str | None = None, modules_dir: Path | None = None,
                     tag: str | None = None, note: str = "") -> dict:
    """A new version of NAME with REF's rootfs and kernel and the netslate initramfs as its initrd.

    The kernel version comes from the kernel artifact's bzImage header; the modules from the image's
    own /lib/modules/VER, else --modules-dir, else this host's /lib/modules/VER."""
    import tempfile

    r = ctx.library.resolve(name, ref)
    arts = r.artifacts
    if "kernel" not in arts or "rootfs" not in arts:
        raise UserError(f"{name}@{r.version} needs a kernel and a rootfs to get a netslate initramfs")
    ctx.library.tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="initramfs-", dir=ctx.library.tmp_dir) as tmp:
        work = Path(tmp)
        kernel = work / "kernel"
        _export(ctx, arts["kernel"], kernel)
        kver = kernel_version or kernel_version_from_bzimage(kernel.read_bytes()[:1 << 16])
        if not kver:
            raise UserError(f"cannot read the kernel version of {name}@{r.version}'s kernel; give --kernel-version")
        rootfs = work / "rootfs"
        _export(ctx, arts["rootfs"], rootfs)
        fmt = arts["rootfs"].get("format") or "raw"
        mdir = modules_dir or image_modules_dir(rootfs, fmt, kver, work)
        if mdir is None and not (Path("/lib/modules") / kver).is_dir():
            raise UserError(f"no modules for kernel {kver}: not in the image, not in /lib/modules; give --modules-dir")
        initrd = work / "initrd.img"
        summary = build(initrd, kver, mdir)
        result = ctx.library.import_files(
            name, rootfs=rootfs, kernel=kernel, initrd=initrd, tag=tag,
            note=note or f"netslate initramfs for {kver} added to version {r.version}",
            source=f"initramfs build --image {name}@{r.version}", parent=r.version, warn=lambda m: None)
    result["initramfs"] = {k: v for k, v in summary.items() if k != "output"}
    result["base_version"] = r.version
    return result
