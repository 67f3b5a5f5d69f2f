"""vmlab itself: QEMU command lines (pure), the KVM probe, namespace creation and cleanup."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from netslate.vmlab import LabNetwork, build_busybox_initrd, cleanup_stale, kvm_available
from netslate.vmlab import qemu as Q


def _netns():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_boot_vmlab_qemu_command_lines(tmp_path):
    bios = Q.qemu_command(name="a", mac="52:54:00:00:00:01", tap="tap0", serial_path=tmp_path / "s.log")
    assert bios[:5] == [Q.QEMU, "-name", "a", "-accel", "tcg"]
    assert "pc,graphics=off" in bios and ["-boot", "order=n"] == bios[bios.index("-boot"):bios.index("-boot") + 2]
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,bootindex=1" in bios
    assert not any("pflash" in a for a in bios)
    assert f"logfile={tmp_path / 's.log'}" in bios[bios.index("-chardev") + 1]
    uefi = Q.qemu_command(name="b", mac="52:54:00:00:00:02", tap="tap1", serial_path=tmp_path / "s.log", firmware="uefi",
                          nic="e1000", vars_path=tmp_path / "vars.fd", option_rom=False)
    assert "q35,graphics=off" in uefi and "e1000,netdev=n0,mac=52:54:00:00:00:02,bootindex=1,romfile=" in uefi
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={Q.OVMF_CODE}" in uefi
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'vars.fd'}" in uefi
    for bad in (dict(firmware="coreboot"), dict(nic="rtl8139"), dict(mac="52:54:00:00:00:1"), dict(mac="x;rm -rf /")):
        kw = dict(name="c", mac="52:54:00:00:00:03", tap="tap2", serial_path=tmp_path / "s.log")
        kw.update(bad)
        with pytest.raises(ValueError):
            Q.qemu_command(**kw)
    with pytest.raises(ValueError, match="OVMF_VARS"):
        Q.qemu_command(name="d", mac="52:54:00:00:00:04", tap="t", serial_path=tmp_path / "s", firmware="uefi")


def test_boot_vmlab_kvm_probe_bounded_and_cached(monkeypatch):
    monkeypatch.delenv("NETSLATE_VMLAB_ACCEL", raising=False)
    t0 = time.monotonic()
    first = kvm_available(timeout=10)
    took = time.monotonic() - t0
    assert took < 25  # a hanging /dev/kvm costs the timeout once, never more
    t1 = time.monotonic()
    assert kvm_available(timeout=10) is first
    assert time.monotonic() - t1 < 0.1  # cached in the process
    monkeypatch.setenv("NETSLATE_VMLAB_ACCEL", "tcg")
    assert kvm_available() is False


def test_boot_vmlab_network_created_and_removed():
    with LabNetwork() as lab:
        assert lab.name in _netns()
        tap = lab.add_tap()
        host = lab.add_host()
        assert host.name in _netns()
        links = lab.run(["ip", "-o", "link", "show", "master", lab.bridge]).stdout
        assert tap in links and "veth0" in links
        assert lab.run(["ip", "route"]).stdout.count("default") == 0  # never a route out
        assert lab.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"
        assert host.run(["busybox", "ping", "-c", "1", "-W", "2", lab.address], check=False).returncode == 0
        sleeper = lab.popen(["sleep", "300"])
    assert sleeper.poll() is not None  # processes started in the namespace are ended
    assert lab.name not in _netns() and host.name not in _netns()


def test_boot_vmlab_cleanup_stale_only_dead_owners():
    dead = 4_000_000  # above any pid this machine hands out (pid_max 4194304 at most, and unused)
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
    stale = f"nslab-{dead}-abc123"
    mine = f"nslab-{os.getpid()}-def456"
    other = "nslabx-1-000000"  # not ours by name: never touched
    for ns in (stale, mine, other):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        removed = cleanup_stale()
        assert stale in removed and mine not in removed and other not in removed
        names = _netns()
        assert stale not in names and mine in names and other in names
    finally:
        for ns in (stale, mine, other):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_boot_vmlab_busybox_initrd(tmp_path):
    out = build_busybox_initrd(tmp_path / "i.cpio", "abc-1")
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=out.read_bytes(), capture_output=True, check=True).stdout.decode()
    assert {"init", "bin/busybox", "bin/sh"} <= set(listing.split())
    with pytest.raises(ValueError):
        build_busybox_initrd(tmp_path / "j.cpio", "a b")
