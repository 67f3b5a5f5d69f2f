"""UEFI Secure Boot, real VM: OVMF with Microsoft's keys enrolled and Secure Boot enforced
(OVMF_CODE_4M.ms.fd + OVMF_VARS_4M.ms.fd), one VM, booted three times on one world (one fleet
image with the netslate initramfs, one namespace):

1. the default UEFI boot file (snponly.efi, Debian's unsigned iPXE) is refused by the firmware: the
   boot script is never requested — Secure Boot really is on;
2. full mode, efi_binary shimx64.efi: shim → GRUB → Debian's signed kernel → netslate initramfs →
   the image, the agent reports: configured;
3. proxy mode next to a plain DHCP server: the same chain, configured again.
"""

import subprocess
import time
from pathlib import Path

import pytest

from netslate.context import Context
from netslate.demo_fleet import MAC_RAM, Fleet, build_fleet_image, cli, configured, _utcnow
from netslate.vmlab import VM, NetslateServer

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]
NAME = "vm-ram"  # demo_fleet's machine names: setup_boot/setup_config place it and give it a ram profile
BOOT_TIMEOUT = 600  # TCG: OVMF with SMM, TFTP of kernel + initramfs, rootfs download, systemd


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure-boot")
    data = tmp / "data"
    ctx = Context(data).init()
    fl = Fleet(tmp, data)
    try:
        build_fleet_image(data, tmp, "sb")
        from netslate import inventory
        from netslate.boot import store as bstore

        bstore.add_profile(ctx, "fleet-ram", image="fleet", ref="stable", mode="ram", console="ttyS0", args=["panic=-1"])
        inventory.add_machine(ctx, [MAC_RAM], name=NAME)
        bstore.add_rule(ctx, "r-sb", {"mac": MAC_RAM}, "fleet-ram")
        bstore.activate_rules(ctx)
        cli(data, "config", "set", "/site-a", "timezone", "Europe/Oslo", json_out=False)
        cli(data, "config", "place", NAME, "/site-a", json_out=False)
        cli(data, "config", "publish", "-m", "secure boot test")
        (tmp / "shim.yaml").write_text("efi_binary: shimx64.efi\n")
        vm = VM(fl.lab, fl.vmdir, NAME, MAC_RAM, firmware="uefi-sb", nic="virtio", memory_mb=1536, option_rom=False)
        fl.vms[NAME] = vm
        yield {"fl": fl, "tmp": tmp, "data": data, "vm": vm, "lab": fl.lab}
    finally:
        name = fl.lab.name
        fl.close()
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _server(world, mode: str, shim: bool) -> NetslateServer:
    lab = world["lab"]
    args = ["--boot-interface", lab.bridge, "--dhcp", mode]
    if shim:
        args = ["--config", str(world["tmp"] / "shim.yaml")] + args
    if mode == "full":
        args += ["--dhcp-range", f"{lab.host_ip(100)},{lab.host_ip(150)},255.255.255.0"]
    srv = NetslateServer(lab, world["data"], args, log_path=world["tmp"] / f"serve-{mode}-{int(shim)}.log")
    world["fl"].server = srv
    return srv.start()


def _boot_to_configured(world, srv) -> str:
    fl, vm = world["fl"], world["vm"]
    since = _utcnow()
    vm.restart() if vm.proc is not None else vm.start()
    t0 = time.monotonic()
    fl.wait(configured([NAME], since=since), BOOT_TIMEOUT, f"{NAME} configured through shim + GRUB")
    con = vm.console.text()
    print(f"power-on → configured through shim + GRUB: {time.monotonic() - t0:.0f}s")
    return con


def _assert_secure_boot_chain(con: str, data: Path):
    assert "NBP filename is shimx64.efi" in con
    assert "Fetching Netboot Image grubx64.efi" in con  # shim (signed by Microsoft) loaded GRUB
    assert "netslate: loading fleet@" in con  # our per-machine GRUB file
    assert "EFI stub: UEFI Secure Boot is enabled." in con and "secureboot: Secure boot enabled" in con
    assert "Kernel is locked down from EFI Secure Boot" in con


def test_unsigned_boot_file_is_refused(world):
    """Default server (UEFI → snponly.efi): OVMF downloads Debian's unsigned iPXE and refuses to run it."""
    vm = world["vm"]
    with _server(world, "full", shim=False) as srv:
        vm.start()
        try:
            vm.wait_for(r"NBP filename is snponly\.efi", 300)
            m = vm.wait_for(r"(Access Denied|Security Violation|Verification failed)", 300)
        finally:
            vm.stop()
    con = vm.console.text()
    assert "NBP file downloaded successfully" in con and m.group(1)
    assert "iPXE" not in con.split("NBP filename is snponly.efi", 1)[1]  # never ran
    dns = (world["data"] / "dnsmasq" / "dnsmasq.log").read_text()
    assert "snponly.efi" in dns
    from netslate.boot import store as bstore

    assert bstore.count_events(Context(world["data"]).init()) == 0  # the boot script was never requested


def test_secure_boot_full_mode_reaches_configured(world):
    with _server(world, "full", shim=True):
        con = _boot_to_configured(world, None)
    _assert_secure_boot_chain(con, world["data"])
    tftp = world["data"] / "tftp"
    cfg = (tftp / "grub" / ("grub.cfg-01-" + MAC_RAM.replace(":", "-"))).read_text()
    assert "linux /images/fleet/2/kernel" in cfg and "netslate.image=fleet@2" in cfg
    dns = (world["data"] / "dnsmasq" / "dnsmasq.log").read_text()
    assert "grub.cfg-01-" + MAC_RAM.replace(":", "-") in dns and "/images/fleet/2/initrd" in dns


def test_secure_boot_proxy_mode_reaches_configured(world):
    lab, tmp = world["lab"], world["tmp"]
    plain = lab.add_host()
    leases = tmp / "plain.leases"
    plain.popen(["dnsmasq", "--keep-in-foreground", "--port=0", "--interface=eth0", "--bind-interfaces",
                 f"--dhcp-range={lab.host_ip(50)},{lab.host_ip(60)},1h", f"--dhcp-leasefile={leases}",
                 f"--pid-file={tmp}/plain.pid", "--log-facility=-", "--log-dhcp"],
                stdout=open(tmp / "plain-dnsmasq.log", "w"), stderr=subprocess.STDOUT)
    with _server(world, "proxy", shim=True) as srv:
        assert srv.health()["checks"]["dnsmasq"]["mode"] == "proxy"
        con = _boot_to_configured(world, srv)
    _assert_secure_boot_chain(con, world["data"])
    assert MAC_RAM in leases.read_text()  # the address came from the site's DHCP server
