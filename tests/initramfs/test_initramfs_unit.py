"""The netslate initramfs without VMs: command line, modes, digest pinning, cache rules, the builder."""

from __future__ import annotations

import base64
import gzip
import subprocess

import pytest

from netslate.images import pull as P
from netslate.initramfs import build as B
from netslate.initramfs import mode_cache as C
from netslate.initramfs import stage as S
from netslate.vmlab.qemu import find_kernel
from nstest import run_cli

DIGEST = "sha256:" + "ab" * 32
KEY = base64.b64encode(bytes(range(32))).decode()
BASE = f"netslate.server=http://10.0.0.1:8080,http://[fd00::1]:80 netslate.image=desktop@3 netslate.manifest={DIGEST}"
KERNEL = find_kernel()
KVER = KERNEL.name.removeprefix("vmlinuz-") if KERNEL else None


# ------------------------------------------------------------------ command line
def test_initramfs_cmdline_full():
    a = S.parse_cmdline(f"BOOT_IMAGE=x console=ttyS0 init=/lib/systemd/systemd {BASE} netslate.mode=cache "
                        f"netslate.key={KEY} netslate.disk=allow netslate.persist=/home,/var/lib/x netslate.timeout=5 "
                        "netslate.retries=2 netslate.onfail=reboot quiet")
    assert a.servers == ["http://10.0.0.1:8080", "http://[fd00::1]:80"]
    assert (a.image, a.ref, a.manifest, a.mode, a.key) == ("desktop", "3", DIGEST, "cache", KEY)
    assert a.disk_allow and a.persist == ["/home", "/var/lib/x"]
    assert (a.timeout, a.retries, a.onfail, a.init) == (5.0, 2, "reboot", "/lib/systemd/systemd")


def test_initramfs_cmdline_defaults():
    a = S.parse_cmdline(BASE)
    assert (a.mode, a.key, a.disk_allow, a.persist, a.init, a.onfail) == ("ram", None, False, [], "/sbin/init", "shell")
    # the disk is only taken with exactly netslate.disk=allow
    assert not S.parse_cmdline(BASE + " netslate.disk=yes").disk_allow


@pytest.mark.parametrize("cmdline, message", [
    ("netslate.server=http://a netslate.manifest=" + DIGEST, "netslate.image= is missing"),
    (BASE.replace("desktop@3", "desktop"), "is not NAME@VERSION"),
    (BASE.replace("desktop@3", "../x@3"), "is not NAME@VERSION"),
    (BASE.replace("netslate.server=http://10.0.0.1:8080,http://[fd00::1]:80", ""), "netslate.server= is missing"),
    (BASE.replace("http://10.0.0.1:8080", "ftp://x"), "is not http(s)://HOST[:PORT]"),
    (BASE.replace("http://10.0.0.1:8080", "http://x/path?q"), "is not http(s)://HOST[:PORT]"),
    (BASE.replace(DIGEST, "sha256:1234"), "is not sha256:<64 hex>"),
    (BASE.replace(f"netslate.manifest={DIGEST}", ""), "nothing to verify the image with"),
    (BASE + " netslate.key=notbase64!", "not a base64 Ed25519 public key"),
    (BASE + " netslate.key=" + base64.b64encode(b"short").decode(), "not a base64 Ed25519 public key"),
    (BASE + " netslate.mode=nfs", "netslate.mode='nfs' is not one of cache, ram"),
    (BASE + " netslate.persist=home", "is not an absolute path"),
    (BASE + " netslate.persist=/home/../etc", "is not an absolute path"),
    (BASE + " netslate.persist=/proc", "is not an absolute path"),
    (BASE + " netslate.timeout=abc", "are numbers"),
    (BASE + " netslate.retries=0", "1..20"),
    (BASE + " netslate.onfail=explode", "netslate.onfail="),
])
def test_initramfs_cmdline_refuses(cmdline, message):
    with pytest.raises(S.BootArgsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("?", r"\?")):
        S.parse_cmdline(cmdline)


def test_initramfs_cmdline_key_alone_is_enough():
    a = S.parse_cmdline(BASE.replace(f"netslate.manifest={DIGEST}", f"netslate.key={KEY}"))
    assert a.manifest is None and a.key == KEY


def test_initramfs_cmdline_unbalanced_quote_still_parses():
    assert S.parse_cmdline(BASE + ' foo="bar').image == "desktop"


def test_initramfs_modes_registry_and_backoff():
    assert set(S.MODES) == {"ram", "cache"}
    for mode in S.MODES:
        assert callable(S.load_mode(mode).boot)
    assert [S.backoff(i) for i in range(6)] == [2, 4, 8, 16, 30, 30]
    assert S.parse_env_file("NS_IP=10.0.0.5\nNS_IFACE=eth0\njunk\n") == {"NS_IP": "10.0.0.5", "NS_IFACE": "eth0"}


def test_initramfs_stage_main_bad_cmdline_is_the_dead_end(tmp_path, monkeypatch, capsys):
    from netslate.initramfs import runtime as rt

    monkeypatch.setattr(rt, "RUN", tmp_path / "run")
    f = tmp_path / "cmdline"
    f.write_text("console=ttyS0 netslate.image=x@1")
    assert S.main(str(f)) == S.EXIT_NO_IMAGE
    assert "netslate: bad kernel command line: netslate.server= is missing" in capsys.readouterr().out


# ------------------------------------------------------------------ cache-mode rules (pure)
def test_initramfs_cache_rules():
    assert C.assigned_version(None, "d") is None
    assert C.assigned_version({"image_pin": None}, "d") is None
    assert C.assigned_version({"image_pin": {"name": "d", "version": 4, "source": "boot rule r"}}, "d") == 4
    assert C.assigned_version({"image_pin": {"image": "d", "version": 6}}, "d") == 6  # older bundles' shape
    assert C.assigned_version({"image_pin": "d@5"}, "d") == 5
    assert C.assigned_version({"image_pin": "other@5"}, "d") is None
    assert C.assigned_version({"image_pin": {"name": "d", "version": "x"}}, "d") is None
    assert C.pick_fallback([3, 5, 4], None) == [(5, True), (4, True), (3, True)]
    # assigned 4 (e.g. the tag was rolled back from 5): 4, then older; 5 only as the last resort
    assert C.pick_fallback([3, 5, 4], 4) == [(4, True), (3, True), (5, False)]
    assert C.pick_fallback([3, 5], 9) == [(5, True), (3, True)]
    assert C.pick_fallback([6, 7], 5) == [(6, False), (7, False)]
    assert C.keep_versions(5, 4, [3, 4, 5]) == {4, 5}
    assert C.keep_versions(5, 5, [3, 4, 5]) == {4, 5}
    assert C.keep_versions(5, None, [5]) == {5}
    assert C.keep_versions(5, 2, [3, 5]) == {3, 5}  # the previous one is gone: keep the newest other
    assert C.persist_dir_name("/var/lib/a%b") == "var%2Flib%2Fa%25b"
    assert [n for n in ("vda", "vda1", "sdb", "sdb2", "nvme0n1", "nvme0n1p1", "loop0", "sr0", "ram0") if C.is_candidate_disk(n)] == ["vda", "sdb", "nvme0n1"]


def test_initramfs_cache_verified_cached_and_prune(tmp_path, monkeypatch):
    import hashlib
    import json

    lay = C.Layout(tmp_path, "img")
    data = b"x" * 1000
    cid = hashlib.sha256(data).hexdigest()
    payload = {"name": "img", "version": 2, "artifacts": {"rootfs": {"size": 1000, "sha256": cid, "chunks": [[0, 1000, cid]]}}}
    lay.img(2).write_bytes(data)
    lay.meta(2).write_text(json.dumps({"payload": payload, "digest": P.payload_digest(payload)}))
    assert C.verified_cached(lay, 2)["payload"] == payload
    assert C.verified_cached(lay, 2, digest="sha256:" + "0" * 64) is None
    (lay.pull / "chunks" / cid[:2]).mkdir(parents=True)
    (lay.pull / "chunks" / cid[:2] / cid).write_bytes(data)
    (lay.pull / "chunks" / cid[:2] / ("f" * 64)).write_bytes(b"stale")
    lay.img(1).write_bytes(b"old")
    lay.meta(1).write_text("{}")
    C.prune(lay, {2})
    assert lay.cached() == [2]
    assert sorted(p.name for p in (lay.pull / "chunks" / cid[:2]).iterdir()) == [cid]
    lay.img(2).write_bytes(b"y" * 1000)  # a damaged cached version is discarded, never booted
    assert C.verified_cached(lay, 2) is None
    assert lay.cached() == []


# ------------------------------------------------------------------ pinned-digest pull (real server)
def test_initramfs_pull_with_pinned_digest(ctx, live_server, tmp_path):
    src = tmp_path / "root"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hello").write_bytes(b"hello" * 5000)
    v = ctx.library.import_files("pin", rootfs=src, warn=lambda m: None)
    r = ctx.library.resolve("pin", str(v["version"]))
    out = tmp_path / "out.img"
    # the digest alone vouches for the manifest: no key is fetched or pinned (no trust-on-first-use)
    st = P.pull(live_server.url, "pin", "1", tmp_path / "c1", out, pinned_digest=r.manifest_digest)
    assert st.key == "pinned-digest" and out.stat().st_size == r.artifacts["rootfs"]["size"]
    assert not (tmp_path / "c1" / "trusted.pub").exists()
    with pytest.raises(P.PullError, match="is not the pinned"):
        P.pull(live_server.url, "pin", "1", tmp_path / "c2", tmp_path / "o2", pinned_digest="sha256:" + "0" * 64)
    assert not (tmp_path / "o2").exists()
    # key and digest together: both must hold
    key = ctx.signing_key.public_b64
    P.pull(live_server.url, "pin", "1", tmp_path / "c3", tmp_path / "o3", trust=key, pinned_digest=r.manifest_digest)
    with pytest.raises(P.PullError, match="manifest refused"):
        P.pull(live_server.url, "pin", "1", tmp_path / "c4", tmp_path / "o4", trust=KEY, pinned_digest=r.manifest_digest)
    with pytest.raises(P.PullError, match="no key and no pinned digest"):
        P.fetch_manifest(P._Http(live_server.url, 5), tmp_path, None, "pin", "1", None)


# ------------------------------------------------------------------ builder (pure parts)
def test_initramfs_newc_is_read_by_gnu_cpio(tmp_path):
    entries = [B.CpioEntry("bin", "dir"), B.CpioEntry("bin/hello", "file", 0o755, b"hi\n"), B.CpioEntry("bin/sh", "symlink", target="busybox"),
               B.CpioEntry("dev/console", "chr", 0o600, rdev=(5, 1)), B.CpioEntry("dev", "dir"), B.CpioEntry("odd", "file", 0o644, b"x" * 5)]
    arc = B.newc(entries)
    listing = subprocess.run(["cpio", "-itv"], input=arc, capture_output=True).stdout.decode()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing.splitlines()]
    assert names == ["bin", "bin/hello", "bin/sh", "dev", "dev/console", "odd"]
    assert "crw-------" in listing and "bin/sh -> busybox" in listing
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--no-absolute-filenames"], input=arc, cwd=out, check=True, capture_output=True)
    assert (out / "bin/hello").read_bytes() == b"hi\n" and (out / "odd").read_bytes() == b"xxxxx"
    assert B.newc(list(reversed(entries))) == arc  # reproducible


def test_initramfs_builder_pure_helpers():
    ldd = ("\tlinux-vdso.so.1 (0x00007ffd)\n\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f65)\n"
           "\t/lib64/ld-linux-x86-64.so.2 (0x00007f65)\n\tlibgone.so => not found\n")
    assert B.parse_ldd(ldd) == ["/lib/x86_64-linux-gnu/libm.so.6", "/lib64/ld-linux-x86-64.so.2"]
    dep = B.parse_modules_dep("kernel/a/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2.ko\nkernel/fs/jbd2.ko:\n"
                              "kernel/lib/crc16.ko:\nkernel/x/virtio-net.ko.xz: kernel/v/virtio.ko\nkernel/v/virtio.ko:\n")
    assert B.module_name("kernel/x/virtio-net.ko.xz") == "virtio_net"
    order = B.load_order(dep, ["ext4", "virtio_net", "nope"])
    assert order.index("kernel/lib/crc16.ko") < order.index("kernel/a/ext4.ko")
    assert order.index("kernel/fs/jbd2.ko") < order.index("kernel/a/ext4.ko")
    assert order.index("kernel/v/virtio.ko") < order.index("kernel/x/virtio-net.ko.xz")
    assert len(order) == len(set(order)) == 5
    assert B.stdlib_keep("json/decoder.py") and B.stdlib_keep("__pycache__/os.cpython-311.pyc")
    assert not B.stdlib_keep("test/test_os.py") and not B.stdlib_keep("tkinter/__init__.py")
    assert not B.stdlib_keep("__pycache__/os.cpython-311.opt-1.pyc") and not B.stdlib_keep("pydoc.py")
    assert not B.stdlib_keep("config-3.11-x86_64-linux-gnu/libpython3.11.a")
    assert not B.stdlib_keep("ctypes/test/test_x.py")
    assert B.kernel_version_from_bzimage(KERNEL.read_bytes()[:1 << 16]) == KVER
    assert B.kernel_version_from_bzimage(b"\0" * 4096) is None


# ------------------------------------------------------------------ builder (real build)
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("initramfs-build")
    out = tmp / "initrd.img"
    r = run_cli("initramfs", "build", "--kernel-version", KVER, "--output", str(out), "--json", data_dir=tmp / "data")
    assert r.code == 0, r.stderr
    return out, r.json(), tmp


def test_initramfs_build_cli_listing(built):
    out, info, _ = built
    assert info["kernel_version"] == KVER and info["compression"] == "gzip" and info["bytes"] == out.stat().st_size
    listing = set(subprocess.run(["cpio", "-it"], input=gzip.decompress(out.read_bytes()), capture_output=True).stdout.decode().split())
    for f in ("init", "bin/busybox", "bin/sh", "sbin/switch_root", "sbin/udhcpc" if "sbin/udhcpc" in listing else "usr/bin/udhcpc",
              "sbin/findfs", "sbin/mke2fs", "sbin/mkfs.ext4", "sbin/e2fsck", "dev/console",
              "usr/bin/python3.11", "usr/bin/python3", "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6",
              "usr/lib/python3.11/os.py", "usr/lib/python3.11/http/client.py", "usr/lib/python3.11/json/__init__.py",
              "usr/lib/python3.11/concurrent/futures/thread.py", "usr/lib/python3.11/email/parser.py",
              "usr/lib/python3.11/lib-dynload/_hashlib.cpython-311-x86_64-linux-gnu.so",
              "usr/lib/python3.11/netslate/images/pull.py", "usr/lib/python3.11/netslate/onmachine/ed25519.py",
              "usr/lib/python3.11/netslate/onmachine/envelope.py", "usr/lib/python3.11/netslate/onmachine/srv.py",
              "usr/lib/python3.11/netslate/onmachine/fsutil.py", "usr/lib/python3.11/netslate/onmachine/formats.py",
              "usr/lib/python3.11/netslate/onmachine/manifest.py", "usr/lib/python3.11/netslate/onmachine/cmdline.py",
              "usr/lib/python3.11/netslate/onmachine/__pycache__/envelope.cpython-311.pyc",
              "usr/lib/python3.11/netslate/initramfs/stage.py", "usr/lib/python3.11/netslate/initramfs/mode_cache.py",
              "usr/lib/python3.11/netslate/initramfs/bootargs.py", "usr/lib/python3.11/netslate/initramfs/localboot.py",
              "etc/netslate/modules.order", "etc/netslate/udhcpc.sh",
              f"lib/modules/{KVER}/kernel/fs/squashfs/squashfs.ko", f"lib/modules/{KVER}/kernel/fs/overlayfs/overlay.ko",
              f"lib/modules/{KVER}/kernel/drivers/net/virtio_net.ko", f"lib/modules/{KVER}/kernel/fs/ext4/ext4.ko"):
        assert f in listing, f
    for gone in ("usr/lib/python3.11/test", "usr/lib/python3.11/tkinter/__init__.py", "usr/lib/python3.11/idlelib",
                 "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/ensurepip", "usr/lib/python3.11/distutils",
                 "usr/lib/python3.11/unittest/__init__.py", "usr/lib/python3.11/netslate/images/chunker.py",
                 "usr/lib/python3.11/netslate/crypto/keys.py", "usr/lib/python3.11/netslate/crypto/envelope.py",
                 "usr/lib/python3.11/netslate/fsutil.py", "usr/lib/python3.11/netslate/initramfs/build.py"):
        assert gone not in listing, gone
    assert info["bytes"] < 40 << 20


def test_initramfs_build_python_runs_inside(built):
    """The initramfs's own Python (chroot into the unpacked archive) imports the boot code stdlib-only."""
    out, _info, tmp = built
    root = tmp / "unpacked"
    root.mkdir(exist_ok=True)
    subprocess.run(["cpio", "-id", "--no-absolute-filenames", "--quiet"], input=gzip.decompress(out.read_bytes()), cwd=root,
                   check=True, capture_output=True)
    order = (root / "etc/netslate/modules.order").read_text().split()
    assert order.index("kernel/lib/crc16.ko") < order.index("kernel/fs/ext4/ext4.ko")
    code = ("import sys, netslate.initramfs.stage as s, netslate.initramfs.mode_cache, netslate.images.pull as p, hashlib;"
            "import netslate.initramfs.localboot, netslate.onmachine.srv, netslate.onmachine.manifest;"
            f"a = s.parse_cmdline({BASE!r}); "
            "print(a.image, a.ref, p._zstd, p._cut_file, sorted(m for m in sys.modules if m in ('zstandard','pyfastcdc','cryptography')))")
    r = subprocess.run(["chroot", str(root), "/usr/bin/python3", "-I", "-S", "-c", code], capture_output=True, text=True,
                       env={"LD_LIBRARY_PATH": "/lib/x86_64-linux-gnu", "PATH": "/bin:/sbin:/usr/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["desktop", "3", "None", "None", "[]"]
    r = subprocess.run(["chroot", str(root), "/bin/sh", "-n", "/init"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_initramfs_cached_builds_once(tmp_path):
    p1, s1 = B.cached(tmp_path, KVER)
    p2, s2 = B.cached(tmp_path, KVER)
    assert p1 == p2 and not s1["cached"] and s2["cached"]
    assert p1.parent == tmp_path / "initramfs" and p1.name.startswith(KVER + "-")
    B._memo.clear()  # a new process: the content hash finds the same file, nothing is rebuilt
    mtime = p1.stat().st_mtime_ns
    p3, s3 = B.cached(tmp_path, KVER)
    assert p3 == p1 and s3["cached"] and p1.stat().st_mtime_ns == mtime


def test_initramfs_build_cli_errors(tmp_path):
    d = tmp_path / "data"
    for args, msg in ((["--output", str(tmp_path / "x")], "give --kernel-version VER or --modules-dir DIR"),
                      (["--kernel-version", "0.0-nope", "--output", str(tmp_path / "x")], "no modules for kernel 0.0-nope"),
                      (["--kernel-version", "../../etc", "--output", str(tmp_path / "x")], "invalid kernel version"),
                      (["--modules-dir", str(tmp_path), "--output", str(tmp_path / "x")], "has no modules.dep"),
                      (["--kernel-version", KVER], "give exactly one of --output FILE or --image NAME@VER"),
                      (["--image", "nope@1"], "no image named")):
        r = run_cli("initramfs", "build", *args, data_dir=d)
        assert r.code == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (tmp_path / "x").exists()


def test_initramfs_build_image_adds_initrd(ctx, tmp_path):
    root = tmp_path / "root"
    (root / "sbin").mkdir(parents=True)
    (root / "sbin" / "init").write_text("#!/bin/sh\n")
    ctx.library.import_files("withk", rootfs=root, kernel=KERNEL, warn=lambda m: None)
    r = run_cli("initramfs", "build", "--image", "withk@1", "--json", data_dir=ctx.data_dir)
    assert r.code == 0, r.stderr
    d = r.json()
    assert (d["version"], d["base_version"], d["initramfs"]["kernel_version"]) == (2, 1, KVER)
    v1, v2 = ctx.library.resolve("withk", "1"), ctx.library.resolve("withk", "2")
    assert "initrd" in v2.artifacts and "initrd" not in v1.artifacts
    assert v2.artifacts["rootfs"]["sha256"] == v1.artifacts["rootfs"]["sha256"]
    assert v2.artifacts["kernel"]["sha256"] == v1.artifacts["kernel"]["sha256"]
    r = run_cli("initramfs", "build", "--image", "withk@1", "--kernel-version", "0.0-none", data_dir=ctx.data_dir)
    assert r.code == 2 and "no modules for kernel 0.0-none" in r.stderr


def test_initramfs_cache_lkg_bundle_signature(ctx, tmp_path, capsys):
    import json

    from netslate.initramfs import runtime as rt

    lay = C.Layout(tmp_path, "img")
    env_key = rt.Env(args=S.parse_cmdline(BASE + f" netslate.key={ctx.signing_key.public_b64}"))
    env_nokey = rt.Env(args=S.parse_cmdline(BASE))
    assert C.lkg_payload(env_key, lay) is None  # no bundle saved yet
    signed = ctx.signing_key.sign({"kind": "netslate-bundle/1", "generation": 3, "image_pin": "img@2"})
    (lay.lkg / "bundle.json").write_text(json.dumps(signed))
    assert C.lkg_payload(env_key, lay)["image_pin"] == "img@2"
    assert C.assigned_version(C.lkg_payload(env_key, lay), "img") == 2
    signed["payload"]["image_pin"] = "img@1"  # edited on the disk: the pinned key refuses it
    (lay.lkg / "bundle.json").write_text(json.dumps(signed))
    assert C.lkg_payload(env_key, lay) is None
    assert "netslate: last-known-good bundle ignored" in capsys.readouterr().out
    assert C.lkg_payload(env_nokey, lay)["image_pin"] == "img@1"  # no key pinned: the agent's saved copy
    (lay.lkg / "bundle.json").write_text("{garbage")
    assert C.lkg_payload(env_key, lay) is None and C.lkg_payload(env_nokey, lay) is None


# ------------------------------------------------------------------ local boot (pure parts)
def test_initramfs_localboot_entry_args_and_config():
    from netslate.initramfs import localboot as L

    booted = ("BOOT_IMAGE=/x initrd=initrd console=ttyS0,115200 panic=-1 netslate.server=http://10.0.0.1:8080 "
              "netslate.image=fleet@4 netslate.manifest=sha256:" + "a" * 64 + " netslate.mode=cache netslate.disk=allow "
              "BOOTIF=01-52-54-00-00-00-01 netslate.boot=local quiet")
    args = L.entry_args(booted, "fleet", 3, "sha256:" + "b" * 64)
    toks = args.split()
    # this boot's image, digest, initrd name and boot interface are not carried over; the rest is
    assert toks[:6] == ["console=ttyS0,115200", "panic=-1", "netslate.server=http://10.0.0.1:8080",
                        "netslate.mode=cache", "netslate.disk=allow", "quiet"]
    assert toks[6:] == ["netslate.image=fleet@3", "netslate.manifest=sha256:" + "b" * 64, "netslate.boot=local"]
    assert S.parse_cmdline(args).boot == "local" and S.parse_cmdline(booted.replace(" netslate.boot=local", "")).boot == "network"
    assert L.entry_args('a="x y" b', "i", 1, "sha256:" + "0" * 64).startswith('a="x y" b ')
    assert L.serial_line(booted) == "SERIAL 0 115200" and L.serial_line("console=tty0") is None
    assert L.serial_line("console=ttyS10,9600") == "SERIAL 10 9600"
    # a token the kernel could not take back (a lone double quote) is dropped, not mangled
    assert L.entry_args("x 'a\"b' y", "i", 1, "sha256:" + "0" * 64).startswith("x y netslate.image=i@1")
    conf = L.render_config("fleet", [{"version": 4, "args": "A4"}, {"version": 3, "args": "A3"}], "SERIAL 0 115200")
    lines = conf.splitlines()
    assert "DEFAULT fleet-4" in lines and "SERIAL 0 115200" in lines and "ALLOWOPTIONS 0" in lines
    assert lines[lines.index("LABEL fleet-3") + 1:lines.index("LABEL fleet-3") + 4] == [
        "  LINUX /boot/images/fleet/3/vmlinuz", "  INITRD /boot/images/fleet/3/initrd", "  APPEND A3"]
    with pytest.raises(ValueError):
        L.render_config("fleet", [], None)
    sector = bytearray(512)
    sector[3:11] = b"SYSLINUX"
    assert not L.boot_sector_ok(bytes(sector))  # no 0x55AA
    sector[510:512] = b"\x55\xaa"
    assert L.boot_sector_ok(bytes(sector)) and not L.boot_sector_ok(b"") and not L.boot_sector_ok(bytes(512))


def test_initramfs_localboot_uefi_layout_with_real_sfdisk(tmp_path):
    """The GPT that a UEFI machine's first cache boot writes, applied by the real sfdisk to a file."""
    import json as _json

    from netslate.initramfs import localboot as L

    assert L.partition_path("/dev/vda", 2) == "/dev/vda2" and L.partition_path("/dev/nvme0n1", 1) == "/dev/nvme0n1p1"
    disk = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "1G", str(disk)], check=True)
    subprocess.run(["sfdisk", "--quiet", "--wipe", "always", str(disk)], input=L.gpt_script(), text=True, check=True)
    table = _json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True).stdout)
    parts = table["partitiontable"]["partitions"]
    assert table["partitiontable"]["label"] == "gpt" and len(parts) == 2
    assert parts[0]["type"] == L.GPT_ESP and parts[0]["name"] == "NSBOOT" and parts[0]["size"] * 512 == 256 << 20
    assert parts[1]["type"] == L.GPT_LINUX and parts[1]["name"] == "NETSLATE"
    assert parts[1]["start"] + parts[1]["size"] >= (1 << 30) // 512 - 2048  # the rest of the disk (1 MiB alignment)
    files = L.render_loader("fleet", [{"version": 4, "args": "A4 netslate.boot=local"}, {"version": 3, "args": "A3"}])
    assert files["loader/loader.conf"].startswith("default netslate-fleet-4.conf\n") and "editor no" in files["loader/loader.conf"]
    assert list(files)[-1] == "loader/loader.conf"  # written after the entries it names
    # the ESP is recognised by its FAT32 label, on the real mkfs.fat output
    esp = tmp_path / "esp.img"
    subprocess.run(["truncate", "-s", "64M", str(esp)], check=True)
    subprocess.run(["mkfs.fat", "-F", "32", "-n", "NSBOOT", str(esp)], check=True, capture_output=True)
    assert L.fat_label(esp.read_bytes()[:512]) == "NSBOOT" and L.fat_label(bytes(512)) is None
    assert files["loader/entries/netslate-fleet-3.conf"].splitlines()[1:] == [
        "linux /netslate/fleet/3/vmlinuz", "initrd /netslate/fleet/3/initrd", "options A3"]


def test_initramfs_localboot_update_never_stops_the_boot(tmp_path, monkeypatch, capsys):
    """Whatever goes wrong while making the disk bootable (here extlinux hanging past its time-out,
    or a state file that is not an object), update() reports it and returns."""
    from netslate.initramfs import localboot as L
    from netslate.initramfs import runtime as rt

    monkeypatch.setattr(rt, "RUN", tmp_path / "run")
    monkeypatch.setattr(L, "is_uefi", lambda: False)
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "state.json").write_text("[1, 2]")
    monkeypatch.setattr(L, "fetch_boot_files", lambda *a: True)

    def hang(*_a, **_k):
        raise subprocess.TimeoutExpired(["extlinux", "--install"], 120)

    monkeypatch.setattr(L, "install_extlinux", hang)
    env = rt.Env(args=S.parse_cmdline("netslate.server=http://h netslate.image=i@1 netslate.key=" + "A" * 43 + "="))
    out = L.update(env, tmp_path, "i", {1: {"digest": "sha256:" + "0" * 64}}, "http://h", "quiet")
    assert out["installed"] is False and "timed out" in out["reason"] and out["firmware"] == "bios"
    assert "netslate: local boot not installed" in capsys.readouterr().out
    # a missing manifest field is one version's problem, not the boot's
    monkeypatch.setattr(L, "fetch_boot_files", lambda *a: (_ for _ in ()).throw(KeyError("artifacts")))
    out = L.update(env, tmp_path, "i", {1: {"digest": "sha256:" + "0" * 64}}, "http://h", "quiet")
    assert out == {"installed": False, "reason": "no version with a verified kernel and initrd", "firmware": "bios"}
