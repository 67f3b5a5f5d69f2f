"""The issue-5 fleet end to end with real VMs: the real `netslate serve` with dnsmasq in a vmlab
namespace, a systemd Debian image built with mmdebstrap (agent inside) + the netslate initramfs,
two QEMU VMs PXE-booting through iPXE (ram and cache mode), the agent reporting to the fleet.

The same steps as `make demo` (netslate.demo_fleet.fleet_steps); each raises when its claim does
not hold, so this test asserts through them, then checks the server's records once more.
"""

import subprocess

import pytest

from netslate.context import Context
from netslate.demo_fleet import Fleet, fleet_steps

pytestmark = pytest.mark.timeout(1200)


def test_fleet_vm_ram_cache_live_config_update_outage_rollback(tmp_path):
    data = tmp_path / "data"
    Context(data).init()
    fl = Fleet(tmp_path, data)
    lines: list[str] = []
    try:
        for title, fn in fleet_steps(fl, lines.append, accel="tcg"):
            lines.append(f"== {title}")
            fn()
        r = fl.results
        # ram and cache first boots downloaded the whole rootfs; the update < 20 % of it
        assert r["first_boot_bytes_vm-ram"] == r["first_boot_bytes_vm-cache"] > 100 << 20
        assert 0 < r["update_bytes"] < 0.2 * r["first_boot_bytes_vm-cache"]
        f = fl.fleet()
        assert f["vm-ram"]["state"] == "configured" and f["vm-ram"]["healthy"] is True
        assert f["vm-cache"]["image_source"] == "cache" and "image_from_cache" in f["vm-cache"]["flags"]
        # the serial consoles: the agent's own lines
        assert "netslate-agent: config generation" in fl.vms["vm-ram"].console.text()
        con = fl.vms["vm-cache"].console.text()  # the outage boot: PXE found nothing, extlinux on the disk
        assert "Booting from Hard Disk" in con and "SYSLINUX" in con and "source cache" in con
        print("\n".join(lines))
        print(r)
    finally:
        name = fl.lab.name
        fl.close()
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
