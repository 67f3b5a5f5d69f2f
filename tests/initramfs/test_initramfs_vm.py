"""Real QEMU (TCG) boots of the netslate initramfs against a real `netslate serve` (world: initramfs_world.py)."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from initramfs_world import (  # noqa: E402
    KERNEL, MARKER, boot, boot_json, boot_many, chunk_requests, finish, make_tiny, make_world, new_disk, ns_args,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with make_world(tmp_path_factory.mktemp("initramfs-vm")) as w:
        yield w


# ------------------------------------------------------------------------------------- tests
def test_initramfs_vm_ram_boot_reaches_image_init(world):
    r = world.ctx.library.resolve("tiny", "1")
    con = boot(world, "ram1", ns_args(world, r, "ram"))
    assert f"{MARKER} version=1" in con
    mounts = con.split("--- mounts", 1)[1]
    assert re.search(r"^overlay / overlay ro?w?", mounts, re.M), mounts
    assert re.search(r"^/dev/loop\d+ /run/netslate/lower squashfs ro", mounts, re.M), mounts
    rec = boot_json(con)
    assert rec["mode"] == "ram" and rec["source"] == "server" and rec["version"] == 1
    assert rec["manifest_digest"] == r.manifest_digest
    assert rec["bytes_downloaded"] == rec["bytes_total"] > 3 << 20
    assert rec["network"]["NS_IP"].startswith(world.lab.address.rsplit(".", 1)[0])


def test_initramfs_vm_cache_mode_first_second_update_and_offline(world):
    disk = new_disk(world, "cache")
    r1 = world.ctx.library.resolve("tiny", "1")
    args = ("netslate.disk=allow", "netslate.persist=/home")
    via = [world.hostile["pass"]]
    # 1. first boot: formats the empty disk, downloads everything
    con = boot(world, "cache1", ns_args(world, r1, "cache", servers=via, extra=args), disk)
    assert "netslate: formatting /dev/vda as ext4 labelled NETSLATE" in con
    rec = boot_json(con)
    assert (rec["mode"], rec["source"], rec["version"]) == ("cache", "server", 1)
    assert rec["bytes_downloaded"] == rec["bytes_total"]
    assert "PERSIST-BOOTS=1" in con
    # 2. second boot, same version: nothing downloaded (< 1 % of the image), persistent /home kept
    before = chunk_requests(world)
    con = boot(world, "cache2", ns_args(world, r1, "cache", servers=via, extra=args), disk)
    rec = boot_json(con)
    assert "formatting" not in con
    assert (rec["source"], rec["version"]) == ("server", 1)
    assert rec["bytes_downloaded"] < 0.01 * rec["bytes_total"]
    assert chunk_requests(world) - before < 0.01 * rec["chunks_total"]
    assert "PERSIST-BOOTS=2" in con
    # 3. an update: only the changed chunks travel
    v2 = world.ctx.library.import_files("tiny", rootfs=make_tiny(world.tmp / "tiny2", "2", 2), warn=lambda m: None)
    r2 = world.ctx.library.resolve("tiny", str(v2["version"]))
    before = chunk_requests(world)
    con = boot(world, "cache3", ns_args(world, r2, "cache", servers=via, extra=args + ("tiny.pin=tiny@1",)), disk)
    rec = boot_json(con)
    assert f"{MARKER} version=2" in con
    assert (rec["source"], rec["version"]) == ("server", r2.version)
    assert 0 < rec["bytes_downloaded"] < 0.2 * rec["bytes_total"], rec
    assert 0 < chunk_requests(world) - before <= rec["chunks_downloaded"] < rec["chunks_total"] // 4
    assert rec["cached_versions"] == [1, r2.version]
    assert "LKG-SAVED=tiny@1" in con
    # 4. server down (nothing listens there): boots the newest verified cached version that the
    #    last-known-good bundle allows (it pins tiny@1, so not the newer v2), and says so
    down = f"http://{world.lab.address}:8099"
    con = boot(world, "cache4", ns_args(world, r2, "cache", servers=[down], extra=args + ("netslate.retries=1",)), disk)
    rec = boot_json(con)
    assert "netslate: last-known-good bundle assigns tiny@1; cached versions up to it are allowed" in con
    assert f"{MARKER} version=1" in con
    assert (rec["source"], rec["version"]) == ("cache", 1)
    assert "server unreachable" in rec["reason"]
    assert "PERSIST-BOOTS=4" in con


DEAD_END = "netslate: no verified image available"


def test_initramfs_vm_refuses_unverified_data_and_survives_bad_disks(world):
    """Four VMs at once: a tampered chunk, a wrong pinned digest and a wrong pinned key are refused
    (the image's init is never reached); a full and a damaged NETSLATE disk fall back to RAM."""
    r = world.ctx.library.resolve("tiny", "1")
    fail = ("netslate.retries=1", "netslate.onfail=poweroff")
    wrong_digest = [a if not a.startswith("netslate.manifest=") else "netslate.manifest=sha256:" + "0" * 64
                    for a in ns_args(world, r, "ram", extra=fail)]
    other_key = base64.b64encode(hashlib.sha256(b"not the server").digest()).decode()
    full = world.tmp / "full.img"
    fill = world.tmp / "fill"
    fill.mkdir()
    (fill / "filler").write_bytes(b"\xaa" * (54 << 20))
    subprocess.run(["truncate", "-s", "64M", str(full)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "NETSLATE", "-d", str(fill), str(full)], check=True)
    damaged = world.tmp / "damaged.img"
    subprocess.run(["truncate", "-s", "128M", str(damaged)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "NETSLATE", str(damaged)], check=True)
    with open(damaged, "r+b") as f:  # garbage over the group descriptors: e2fsck -p exits 4
        f.seek(4096)
        f.write(b"\xff" * 64)
    cons = boot_many(world, {
        "tamper": {"args": ns_args(world, r, "ram", servers=[world.hostile["tamper"]], extra=fail), "until": DEAD_END},
        "baddigest": {"args": wrong_digest, "until": DEAD_END},
        "badkey": {"args": ns_args(world, r, "ram", extra=fail + (f"netslate.key={other_key}",)), "until": DEAD_END},
        "fulldisk": {"args": ns_args(world, r, "cache", extra=("netslate.disk=allow",)), "disk": full, "disk_format": "raw"},
    })
    assert "failed verification" in cons["tamper"] and MARKER not in cons["tamper"]
    assert "manifest refused: its digest" in cons["baddigest"] and MARKER not in cons["baddigest"]
    assert "manifest refused" in cons["badkey"] and MARKER not in cons["badkey"]
    con = cons["fulldisk"]
    assert "NETSLATE disk is full" in con and "booting in RAM" in con
    rec = boot_json(con)
    assert (rec["mode"], rec["requested_mode"], rec["source"], rec["version"]) == ("ram", "cache", "server", 1)
    assert "No space left on device" in rec["reason"]
    # A damaged NETSLATE disk without netslate.disk=allow: never reformatted, RAM boot says why.
    con = boot(world, "damaged", ns_args(world, r, "cache"), damaged, disk_format="raw")
    assert "NETSLATE disk /dev/vda is damaged (e2fsck exit 4)" in con and "formatting" not in con
    rec = boot_json(con)
    assert (rec["mode"], rec["requested_mode"], rec["version"]) == ("ram", "cache", 1)
    assert "damaged and netslate.disk=allow is not given" in rec["reason"]


def test_initramfs_vm_garbage_and_hanging_servers_are_survived(world):
    """Servers tried in order: one answering garbage, one hanging mid-transfer, then a good one."""
    r = world.ctx.library.resolve("tiny", "1")
    con = boot(world, "hang", ns_args(world, r, "ram", servers=[world.hostile["garbage"], world.hostile["hang"], world.url],
                                     extra=("netslate.timeout=2",)))
    assert f"pull from {world.hostile['garbage']} failed: manifest is not valid JSON" in con
    assert f"pull from {world.hostile['hang']} failed" in con and "timed out" in con
    rec = boot_json(con)
    assert rec["server"] == world.url and rec["source"] == "server"


def bootable_image(world, name: str, label: str, seed: int):
    """A new version of a tiny image that has a kernel and the netslate initramfs (what local boot keeps)."""
    img = world.ctx.library.import_files(name, rootfs=make_tiny(world.tmp / f"{name}-{label}", label, seed), kernel=KERNEL,
                                         initrd=world.initrd, warn=lambda m: None)
    return world.ctx.library.resolve(name, str(img["version"]))


def own_server(world, port: int):
    """A server of the test's own that it can take down: a pass-through proxy in front of the real one.
    Returns (process, URL); stop it with world.lab.stop(process)."""
    proxy = world.lab.popen([sys.executable, str(Path(__file__).parent / "hostile_server.py"), world.lab.address, str(port),
                             world.url, "pass"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    world.lab.wait_tcp(port, timeout=20)
    return proxy, f"http://{world.lab.address}:{port}"


def test_initramfs_vm_firmware_falls_back_to_the_netslate_disk_when_the_server_is_down(world):
    """Cache mode keeps the version's kernel + initrd on the NETSLATE disk with extlinux in its boot
    sector. With the server gone, the real BIOS (SeaBIOS) tries PXE first (iPXE gets a DHCP lease
    but nothing to boot), falls through to the disk, extlinux loads the cached kernel and netslate
    initramfs, and the stage boots the verified cached rootfs with source=cache."""
    from netslate.vmlab import VM

    r = bootable_image(world, "tinyk", "K1", 7)
    proxy, server = own_server(world, 8085)
    disk = new_disk(world, "local")
    try:
        con = boot(world, "local1", ns_args(world, r, "cache", servers=[server], extra=("netslate.disk=allow",)), disk)
        rec = boot_json(con)
        assert (rec["source"], rec["version"], rec["booted_via"]) == ("server", r.version, "network")
        assert rec["local_boot"] == {"installed": True, "versions": [r.version], "firmware": "bios"}, rec["local_boot"]
        assert "local boot: extlinux installed on the NETSLATE disk" in con
        # something wipes the disk's first sector: the next verified boot puts extlinux back
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -z 0 512", str(disk)], check=True, capture_output=True)
        # an update: the new version's boot files join the previous one's, the new one is the default
        r2 = bootable_image(world, "tinyk", "K2", 8)
        con = boot(world, "local1b", ns_args(world, r2, "cache", servers=[server], extra=("netslate.disk=allow",)), disk)
        rec = boot_json(con)
        assert (rec["source"], rec["version"]) == ("server", r2.version)
        assert rec["local_boot"] == {"installed": True, "versions": [r2.version, r.version], "firmware": "bios"}, rec["local_boot"]
        assert "the boot sector of /dev/vda no longer holds extlinux; installing it again" in con
    finally:
        world.lab.stop(proxy)
    # power on with no kernel given: the firmware boots NIC first, then the disk
    vm = VM(world.lab, world.tmp / "vms", "local2", "52:54:00:5a:01:01", memory_mb=768, accel="tcg",
            extra=["-drive", f"file={disk},if=none,id=d0,format=qcow2", "-device", "virtio-blk-pci,drive=d0,bootindex=2"])
    with vm:
        con = finish(vm)
    assert re.search(r"iPXE", con), con[:2000]
    assert "SYSLINUX" in con and f"netslate: local boot from the NETSLATE disk: tinyk@{r2.version}" in con
    rec = boot_json(con)
    assert (rec["source"], rec["version"], rec["booted_via"]) == ("cache", r2.version, "local disk")
    assert "server unreachable" in rec["reason"]
    assert f"{MARKER} version=K2" in con


def test_initramfs_vm_uefi_firmware_falls_back_to_the_esp_when_the_server_is_down(world):
    """The same with OVMF: the first cache boot of a UEFI machine lays the empty disk out as GPT
    (NSBOOT EFI system partition + NETSLATE), puts systemd-boot, the kernel + initrd and a loader
    entry on the ESP; with the server gone, OVMF tries PXE, then boots the disk's fallback loader."""
    from netslate.vmlab import VM

    r = bootable_image(world, "tinyu", "U1", 9)
    proxy, server = own_server(world, 8086)
    disk = new_disk(world, "uefi")
    drive = ["-drive", f"file={disk},if=none,id=d0,format=qcow2", "-device", "virtio-blk-pci,drive=d0,bootindex=2"]
    cmdline = " ".join(["console=ttyS0", "panic=-1", "quiet",
                        *ns_args(world, r, "cache", servers=[server], extra=("netslate.disk=allow",))])
    try:
        vm = VM(world.lab, world.tmp / "vms", "uefi1", "52:54:00:5a:02:01", firmware="uefi", memory_mb=768, accel="tcg",
                extra=["-kernel", str(KERNEL), "-initrd", str(world.initrd), "-append", cmdline, *drive])
        with vm:
            con = finish(vm, timeout=300)
        assert "partitioned /dev/vda for UEFI: /dev/vda1 EFI system partition (256 MiB, NSBOOT), /dev/vda2 NETSLATE" in con
        rec = boot_json(con)
        assert (rec["source"], rec["version"], rec["disk"]) == ("server", r.version, "/dev/vda2")
        assert rec["local_boot"] == {"installed": True, "versions": [r.version], "firmware": "uefi"}, rec["local_boot"]
    finally:
        world.lab.stop(proxy)
    vm = VM(world.lab, world.tmp / "vms", "uefi2", "52:54:00:5a:02:01", firmware="uefi", memory_mb=768, accel="tcg",
            extra=drive)
    with vm:
        con = finish(vm, timeout=300)
    assert "Nothing to boot" in con  # iPXE (the NIC's ROM) tried first
    assert f"netslate tinyu@{r.version} (local boot from the NETSLATE disk)" in con  # systemd-boot's entry
    assert "netslate: started from the NETSLATE disk" in con
    rec = boot_json(con)
    assert (rec["source"], rec["version"], rec["booted_via"]) == ("cache", r.version, "local disk")
    assert f"{MARKER} version=U1" in con
