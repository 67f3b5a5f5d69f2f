"""UEFI Secure Boot, real VM: OVMF with Microsoft's keys enrolled and Secure Boot enforced
(OVMF_CODE_4M.ms.fd + OVMF_VARS_4M.ms.fd), one VM, booted three times on one world (one fleet
image with the netslate initramfs, one namespace):

1. the default UEFI boot file (snponly.efi, Debian's unsigned iPXE) is refused by the firmware
   (OVMF's BdsDxe: "Access Denied"): iPXE never runs, no boot script is requested — Secure Boot
   really is on;
2. full mode, efi_binary shimx64.efi: shim → GRUB → Debian's signed kernel (locked down) → netslate
   initramfs → the image, the agent reports: configured; `boot explain` names the GRUB path;
3. proxy mode next to a plain DHCP server (dnsmasq: addresses and next-server only, no boot file):
   the same chain, configured.

Each step's console is kept as console-<step>.log in the test's directory.
"""

import re
import subprocess
import time
from pathlib import Path

import pytest

from netslate.context import Context
from netslate.demo_fleet import MAC_RAM, UUID_RAM, Fleet, cli, configured, _utcnow
from netslate.vmlab import VM, NetslateServer

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]
NAME = "vm-ram"  # a demo_fleet machine name (Fleet.wait reads the fleet view by name)
BOOT_TIMEOUT = 600  # TCG: OVMF with SMM, TFTP of kernel + initramfs, rootfs download, systemd
MACFILE = "grub/grub.cfg-01-" + MAC_RAM.replace(":", "-")
# What OVMF's boot manager prints when the image's signature is not in db (EFI_SECURITY_VIOLATION)
REFUSED_RE = r'BdsDxe: failed to load Boot\d{4} "UEFI PXEv4 \(MAC:525400DE0001\)" from [^\n]*: Access Denied'


@pytest.fixture(scope="module")
def world(tmp_path_factory, fleet_seed):
    tmp = tmp_path_factory.mktemp("secure-boot")
    data = tmp / "data"
    ctx = fleet_seed.copy_to(data)  # the fleet image, built once per session (tests/boot_e2e/conftest.py)
    fl = Fleet(tmp, data, tls=False)
    try:
        from netslate import inventory
        from netslate.boot import store as bstore

        bstore.add_profile(ctx, "fleet-ram", image="fleet", ref="stable", mode="ram", console="ttyS0", args=["panic=-1"])
        inventory.add_machine(ctx, [MAC_RAM], uuid=UUID_RAM, name=NAME)
        bstore.add_rule(ctx, "r-sb", {"mac": MAC_RAM}, "fleet-ram")
        bstore.activate_rules(ctx)
        cli(data, "config", "set", "/site-a", "timezone", "Europe/Oslo", json_out=False)
        cli(data, "config", "place", NAME, "/site-a", json_out=False)
        cli(data, "config", "publish", "-m", "secure boot test")
        (tmp / "shim.yaml").write_text("efi_binary: shimx64.efi\n")
        vm = VM(fl.lab, fl.vmdir, NAME, MAC_RAM, firmware="uefi-sb", nic="virtio", memory_mb=1536, option_rom=False,
                extra=["-uuid", UUID_RAM])
        fl.vms[NAME] = vm
        yield {"fl": fl, "tmp": tmp, "data": data, "vm": vm, "lab": fl.lab}
    finally:
        name = fl.lab.name
        fl.close()
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _server(world, mode: str, shim: bool) -> NetslateServer:
    """A netslate server on the lab bridge (not started: `with _server(...) as srv:` starts and stops it)."""
    lab = world["lab"]
    args = ["--boot-interface", lab.bridge, "--dhcp", mode]
    if shim:
        args = ["--config", str(world["tmp"] / "shim.yaml")] + args
    if mode == "full":
        args += ["--dhcp-range", f"{lab.host_ip(100)},{lab.host_ip(150)},255.255.255.0"]
    srv = NetslateServer(lab, world["data"], args, log_path=world["tmp"] / f"serve-{mode}-{int(shim)}.log")
    world["fl"].server = srv
    return srv


def _keep_console(world, step: str) -> str:
    con = world["vm"].console.text()
    (world["tmp"] / f"console-{step}.log").write_text(con)
    return con


def _boot_to_configured(world, step: str) -> tuple[str, dict]:
    fl, vm = world["fl"], world["vm"]
    since = _utcnow()
    vm.restart() if vm.proc is not None else vm.start()
    t0 = time.monotonic()
    try:
        f = fl.wait(configured([NAME], since=since), BOOT_TIMEOUT, f"{NAME} configured through shim + GRUB ({step})")
        print(f"\n{step}: power-on → configured through shim + GRUB: {time.monotonic() - t0:.0f}s")
    finally:
        con = _keep_console(world, step)
        vm.stop()
    return con, f[NAME]


def _assert_secure_boot_chain(con: str, version: int):
    assert "NBP filename is shimx64.efi" in con
    # shim (signed by Microsoft) ran, fetched GRUB (signed by Debian) from the same TFTP server
    assert "netslate: GRUB over TFTP, looking for this machine" in con  # our loader, read by GRUB
    assert f"netslate: loading fleet@{version}" in con  # the machine's own GRUB file
    # Debian's kernel (checked by shim_lock) sees Secure Boot and locks itself down
    assert "EFI stub: UEFI Secure Boot is enabled." in con
    assert "secureboot: Secure boot enabled" in con
    assert re.search(r"Kernel is locked down from EFI Secure Boot", con)
    # the netslate initramfs under lockdown: no module refused, the image verified and booted
    assert "unsigned module loading is restricted" not in con
    assert "module verification failed" not in con
    # modules the initramfs insmods (Debian-signed, =m in Debian's config) loaded under lockdown:
    assert "squashfs: version 4.0" in con and "loop: module loaded" in con  # squashfs.ko, loop.ko
    assert re.search(r"netslate: network: eth0 \d", con)  # virtio_net.ko: the NIC came up
    assert f"netslate: rootfs fleet@{version}" in con


def _assert_explain_grub(world):
    ex = cli(world["data"], "boot", "explain", MAC_RAM)
    bp = ex["boot_path"]
    assert bp["last"]["path"] == "grub" and bp["last"]["first_file"] == "shimx64.efi", bp
    assert MACFILE in bp["last"]["tftp_files"] or "grub/grub.cfg" in bp["last"]["tftp_files"], bp
    assert bp["next"]["path"] == "grub" and bp["next"]["file"] == MACFILE, bp
    return bp


def test_unsigned_boot_file_is_refused(world):
    """Default server (UEFI → snponly.efi): OVMF downloads Debian's unsigned iPXE and refuses to run it."""
    vm, data = world["vm"], world["data"]
    t0 = time.monotonic()
    with _server(world, "full", shim=False):
        vm.start()
        try:
            vm.wait_for(r"NBP filename is snponly\.efi", 300)
            vm.wait_for(REFUSED_RE, 300)
            # OVMF goes on to its next boot option; give a refused image time to show if it ran anyway
            vm.wait_for(r">>Start PXE over IPv6", 120)
        finally:
            con = _keep_console(world, "refused")
            vm.stop()
    print(f"\nrefused: server start + power-on → Access Denied: {time.monotonic() - t0:.0f}s")
    assert "NBP file downloaded successfully" in con
    after = con.split("NBP filename is snponly.efi", 1)[1]
    assert "iPXE" not in after  # iPXE never printed its banner: it never ran
    dns = (data / "dnsmasq" / "dnsmasq.log").read_text()
    assert re.search(r"sent \S+/tftp/snponly\.efi to ", dns)
    assert "user class: iPXE" not in dns  # no iPXE ever asked for DHCP
    from netslate.boot import store as bstore

    assert bstore.count_events(Context(data).init()) == 0  # the boot script was never requested


def test_secure_boot_full_mode_reaches_configured(world):
    data = world["data"]
    with _server(world, "full", shim=True):
        con, m = _boot_to_configured(world, "full")
    ver = int(m["version"])
    _assert_secure_boot_chain(con, ver)
    tftp = data / "tftp"
    cfg = (tftp / MACFILE).read_text()
    assert f"linux /images/fleet/{ver}/kernel" in cfg and f"netslate.image=fleet@{ver}" in cfg
    dns = (data / "dnsmasq" / "dnsmasq.log").read_text()
    for f in ("shimx64.efi", "grubx64.efi", "grub/grub.cfg", MACFILE, f"images/fleet/{ver}/kernel", f"images/fleet/{ver}/initrd"):
        assert re.search(rf"sent \S+/tftp/{re.escape(f)} to ", dns), f
    _assert_explain_grub(world)


def test_secure_boot_proxy_mode_reaches_configured(world):
    """Proxy mode: the site's DHCP server gives the address and only `next-server` = the netslate
    server (no boot file name); netslate's proxyDHCP gives shimx64.efi. Debian 12's GRUB (2.06) reads
    its files from the DHCP ACK's next-server, not from the proxy offer: without that one setting
    it asks the site's DHCP server for grub/grub.cfg and drops to its `grub>` prompt (docs/secure-boot.md)."""
    lab, tmp, data = world["lab"], world["tmp"], world["data"]
    plain = lab.add_host()
    leases = tmp / "plain.leases"
    log = open(tmp / "plain-dnsmasq.log", "w")
    dhcpd = plain.popen(["dnsmasq", "--keep-in-foreground", "--port=0", "--interface=eth0", "--bind-interfaces",
                         f"--dhcp-range={lab.host_ip(50)},{lab.host_ip(60)},1h", f"--dhcp-leasefile={leases}",
                         f"--dhcp-boot=,,{lab.address}",  # next-server only: no file name, no option 66/67
                         f"--pid-file={tmp}/plain.pid", "--log-facility=-", "--log-dhcp"],
                        stdout=log, stderr=subprocess.STDOUT)
    try:
        with _server(world, "proxy", shim=True) as srv:
            assert srv.health()["checks"]["dnsmasq"]["mode"] == "proxy"
            con, m = _boot_to_configured(world, "proxy")
    finally:
        plain.stop(dhcpd)
        log.close()
    assert dhcpd.poll() is not None  # no DHCP server left running
    _assert_secure_boot_chain(con, int(m["version"]))
    assert MAC_RAM in leases.read_text()  # the address came from the site's DHCP server
    site = (tmp / "plain-dnsmasq.log").read_text()
    assert "DHCPACK(eth0)" in site and "bootfile name" not in site  # the site server named no boot file
    assert f"Server IP address is {lab.address}" in con and "NBP filename is shimx64.efi" in con  # from the proxy
    # the server says at start what proxy mode needs on this path
    assert "Debian's GRUB reads its files from the site DHCP server's next-server" in (tmp / "serve-proxy-1.log").read_text()
    station = re.search(r"Station IP address is (\S+)", con).group(1)
    assert station in {lab.host_ip(i) for i in range(50, 61)}, station  # the plain server's range, not netslate's
    _assert_explain_grub(world)
