"""A plain DHCP server that gives every client the same options (ISC dhcpd, no conditions), next to
`netslate serve --dhcp off` (TFTP only), with real VMs (QEMU, TCG):

- option 67 = `ipxe-bios/lpxelinux.0` (the loop-free BIOS loader) + next-server: a SeaBIOS VM runs
  Debian's iPXE (ipxe.lkrn) with netslate's script, fetches /boot.ipxe once and boots its image;
  each loader file is sent once over TFTP and the DHCP server sees two handshakes (firmware + iPXE),
  not the endless re-chaining `undionly.kpxe` gives behind such a server;
- option 67 = `lpxelinux.0`: a SeaBIOS VM reads its per-MAC pxelinux.cfg file and boots the image
  the rules assign, with no iPXE at all;
- option 67 = `shimx64.efi`: an OVMF VM (the firmware's own PXE, no NIC ROM) runs Debian's shim and
  netboot GRUB, which reads its per-MAC GRUB file and boots the assigned image; GRUB is sent once.
  (There is no loop-free iPXE for UEFI from Debian's binaries: see docs/boot-dhcp.md.)

`netslate boot explain` reports each VM's path (iPXE BIOS, pxelinux, GRUB) from the TFTP log.

One world for the module: one image, one `netslate serve`, one namespace; the ISC dhcpd is started
per test and always stopped. "Configured" here is the busybox initrd of the assigned version
printing its kernel command line (as in test_boot_vms.py), which proves kernel + initrd + arguments
came from netslate's decision.
"""

import contextlib
import json
import re
import subprocess
import time

import pytest

from netslate.context import Context
from netslate.vmlab import VM, LabNetwork, NetslateServer, build_busybox_initrd, cleanup_stale, find_kernel

from nstest import run_cli

pytestmark = [pytest.mark.timeout(600), pytest.mark.vm]

MAC_LOADER = "52:54:00:e6:00:01"  # SeaBIOS, option 67 = ipxe-bios/lpxelinux.0
MAC_PXE = "52:54:00:e6:00:02"  # SeaBIOS, option 67 = lpxelinux.0 (per-MAC pxelinux.cfg)
MAC_UEFI = "52:54:00:e6:00:03"  # OVMF (firmware PXE, no NIC ROM), option 67 = shimx64.efi
BOOT_TIMEOUT = 240  # TCG on 2 shared cores


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cleanup_stale()
    tmp = tmp_path_factory.mktemp("plain-dhcp")
    data = tmp / "data"
    kernel = find_kernel()
    assert kernel is not None, "linux-image-amd64 must be installed (scripts/install-deps.sh)"
    ctx = Context(data).init()
    initrd = build_busybox_initrd(tmp / "initrd.cpio", "plain-v1")
    rootfs = tmp / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "netslate-e2e").write_text("plain\n")
    ctx.library.import_files("lab", rootfs=rootfs, kernel=kernel, initrd=initrd, tag="stable", note="plain dhcp")
    from netslate import inventory
    from netslate.boot import store as bstore

    bstore.add_profile(ctx, "p-lab", ref="stable", image="lab", console="ttyS0", args=["panic=-1", "quiet", "e2e.profile=p-lab"])
    for name, mac in (("vm-loader", MAC_LOADER), ("vm-pxe", MAC_PXE), ("vm-uefi", MAC_UEFI)):
        inventory.add_machine(ctx, [mac], name=name)
        bstore.add_rule(ctx, f"r-{name}", {"mac": mac}, "p-lab")
    bstore.activate_rules(ctx)
    with LabNetwork() as lab:
        srv = NetslateServer(lab, data, ["--boot-interface", lab.bridge, "--dhcp", "off"], log_path=tmp / "serve.log")
        with srv:
            assert srv.health()["checks"]["dnsmasq"]["mode"] == "off"
            dhcp_host = lab.add_host()
            yield {"lab": lab, "data": data, "tmp": tmp, "srv": srv, "dhcp": dhcp_host}
    assert lab.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _dhcpd_conf(lab, filename: str, next_server: bool) -> str:
    net = lab.network
    return "\n".join([
        "authoritative;",
        "default-lease-time 600;",
        f"subnet {net.network_address} netmask {net.netmask} {{",
        f"  range {lab.host_ip(100)} {lab.host_ip(150)};",
        *([f"  next-server {lab.address};"] if next_server else []),
        f'  option tftp-server-name "{lab.address}";',  # option 66
        f'  option bootfile-name "{filename}";',  # option 67, the same for every client
        "}",
        "",
    ])


@contextlib.contextmanager
def isc_dhcpd(world, name: str, filename: str, next_server: bool):
    """The site's DHCP server: ISC dhcpd bound to the test namespace's eth0 only; always stopped."""
    tmp, host = world["tmp"], world["dhcp"]
    conf, leases = tmp / f"{name}.conf", tmp / f"{name}.leases"
    conf.write_text(_dhcpd_conf(world["lab"], filename, next_server))
    leases.write_text("")
    log = open(tmp / f"{name}.log", "w")
    proc = host.popen(["dhcpd", "-f", "-d", "-4", "-cf", str(conf), "-lf", str(leases), "-pf", str(tmp / f"{name}.pid"),
                       host.interface], stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, (tmp / f"{name}.log").read_text()
        yield {"leases": leases, "log": tmp / f"{name}.log"}
    finally:
        host.stop(proc)
        log.close()
    assert proc.poll() is not None


def _acks(dhcpd_log, mac: str) -> int:
    return len(re.findall(rf"DHCPACK on \S+ to {re.escape(mac)}", dhcpd_log.read_text()))


def _tftp_sent(world, name: str) -> int:
    log = (world["data"] / "dnsmasq" / "dnsmasq.log").read_text()
    return len(re.findall(rf"sent \S*/tftp/{re.escape(name)} to ", log))


def _events(world, mac: str) -> list[dict]:
    r = run_cli("boot", "events", "--json", data_dir=world["data"], timeout=60)
    assert r.code == 0, r.stderr
    return [e for e in json.loads(r.stdout) if e.get("mac") == mac]


def _explain(world, mac: str) -> dict:
    r = run_cli("boot", "explain", mac, "--json", data_dir=world["data"], timeout=60)
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def _vm(world, name, mac, firmware="bios", **kw):
    return VM(world["lab"], world["tmp"] / "vms", name, mac, firmware=firmware, nic="virtio", **kw)


def test_plain_dhcp_bios_loader_with_next_server(world):
    with isc_dhcpd(world, "dhcpd-loader", "ipxe-bios/lpxelinux.0", next_server=True) as d:
        vm = _vm(world, "vm-loader", MAC_LOADER)
        with vm:
            m = vm.wait_for(r"NSLAB-CMDLINE: ([^\n]*)\n", BOOT_TIMEOUT)
            args = m.group(1).split()
            vm.wait_exit(30)
        text = vm.console.text()
        acks = _acks(d["log"], MAC_LOADER)
    assert "netslate.image=lab@1" in args and "e2e.profile=p-lab" in args, args
    assert "NSLAB-INITRD id=plain-v1" in text
    assert f"netslate: boot server {world['lab'].address}" in text  # from next-server
    # no loop: each loader file sent once, two DHCP handshakes (the firmware's, iPXE's), one boot script
    assert _tftp_sent(world, "ipxe-bios/lpxelinux.0") == 1
    assert _tftp_sent(world, "ipxe-bios/ipxe.lkrn") == 1
    assert _tftp_sent(world, "ipxe-bios/netslate.ipxe") == 1
    assert acks == 2, acks
    ev = _events(world, MAC_LOADER)
    assert len(ev) == 1 and ev[0]["profile"] == "p-lab" and ev[0]["version"] == 1, ev
    # explain: the path it used (from the TFTP log + its boot script request) and will use next
    bp = _explain(world, MAC_LOADER)["boot_path"]
    assert bp["last"]["path"] == "ipxe-bios" and bp["last"]["first_file"] == "ipxe-bios/lpxelinux.0", bp
    assert "ipxe-bios/netslate.ipxe" in bp["last"]["tftp_files"] and bp["last"]["last_script_at"]
    assert bp["next"]["path"] == "ipxe-bios" and bp["next"]["boots"] == "image lab@1", bp


def test_plain_dhcp_pxelinux_per_mac_file(world):
    cfg = world["data"] / "tftp" / "pxelinux.cfg" / ("01-" + MAC_PXE.replace(":", "-"))
    assert "netslate.image=lab@1" in cfg.read_text()
    with isc_dhcpd(world, "dhcpd-pxe", "lpxelinux.0", next_server=True) as d:
        vm = _vm(world, "vm-pxe", MAC_PXE)
        with vm:
            m = vm.wait_for(r"NSLAB-CMDLINE: ([^\n]*)\n", BOOT_TIMEOUT)
            args = m.group(1).split()
            vm.wait_exit(30)
        acks = _acks(d["log"], MAC_PXE)
    assert "netslate.image=lab@1" in args and "e2e.profile=p-lab" in args, args
    assert f"BOOTIF=01-{MAC_PXE.replace(':', '-')}" in args  # IPAPPEND 2: pxelinux, not iPXE
    assert _tftp_sent(world, "lpxelinux.0") == 1 and _tftp_sent(world, "pxelinux.cfg/" + cfg.name) == 1
    assert acks == 1, acks  # pxelinux reuses the firmware's lease
    assert _events(world, MAC_PXE) == []  # no iPXE boot script: the per-MAC file decided
    bp = _explain(world, MAC_PXE)["boot_path"]
    assert bp["last"]["path"] == "pxelinux" and bp["last"]["first_file"] == "lpxelinux.0", bp
    assert f"pxelinux.cfg/{cfg.name}" in bp["last"]["tftp_files"] and bp["last"]["last_script_at"] is None
    assert bp["next"] == {"path": "pxelinux", "label": "pxelinux", "file": f"pxelinux.cfg/{cfg.name}", "boots": "lab@1"}, bp


def test_plain_dhcp_uefi_shim_with_next_server(world):
    with isc_dhcpd(world, "dhcpd-uefi", "shimx64.efi", next_server=True) as d:
        vm = _vm(world, "vm-uefi", MAC_UEFI, firmware="uefi", option_rom=False)
        with vm:
            m = vm.wait_for(r"NSLAB-CMDLINE: ([^\n]*)\n", BOOT_TIMEOUT)
            args = m.group(1).split()
            vm.wait_exit(30)
        acks = _acks(d["log"], MAC_UEFI)
    assert "netslate.image=lab@1" in args and "e2e.profile=p-lab" in args, args
    # no loop: GRUB is sent once; OVMF's PXE fetches shim twice within one boot, both before GRUB
    # (seen here: two "sent shimx64.efi", then one "sent grubx64.efi"), never more
    log = (world["data"] / "dnsmasq" / "dnsmasq.log").read_text()
    sends = [x for x in log.splitlines() if "dnsmasq-tftp" in x and ("shimx64" in x or "grubx64" in x)]
    assert _tftp_sent(world, "shimx64.efi") <= 2 and _tftp_sent(world, "grubx64.efi") == 1, sends
    assert acks <= 2, acks
    bp = _explain(world, MAC_UEFI)["boot_path"]
    assert bp["last"]["path"] == "grub" and bp["last"]["first_file"] == "shimx64.efi", bp
    assert bp["next"]["file"] == "grub/grub.cfg-01-" + MAC_UEFI.replace(":", "-") and bp["next"]["boots"] == "lab@1", bp
