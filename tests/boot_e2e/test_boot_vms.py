"""Real network boots: QEMU VMs (TCG) on an isolated namespace network, the real `netslate serve`
running dnsmasq, iPXE fetching its script over HTTP, and a Debian kernel + a busybox initrd whose
/init prints its kernel command line on the serial console.

One namespace and one server per phase; VMs run two at a time. What this shows:
- full mode boots BIOS/virtio and UEFI/e1000 VMs, each with its own profile (different MACs);
- the console shows the image version's kernel + initrd and the expected kernel arguments;
- moving a tag changes the next boot;
- an unknown MAC is held, approved with the CLI, then boots without a reboot;
- the menu profile lists the image's versions on the console;
- proxy mode (next to a plain dnsmasq DHCP server) boots a UEFI VM through the firmware's own PXE,
  TFTP (snponly.efi) and iPXE.
"""

import json
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from netslate.context import Context
from netslate.vmlab import VM, LabNetwork, NetslateServer, build_busybox_initrd, cleanup_stale, find_kernel

from nstest import run_cli

pytestmark = pytest.mark.timeout(480)

MAC_A = "52:54:00:e2:00:0a"  # BIOS, virtio → profile p-stable
MAC_B = "52:54:00:e2:00:0b"  # UEFI, e1000 → profile p-one (version 1)
MAC_C = "52:54:00:e2:00:0c"  # unknown → held → approved
MAC_D = "52:54:00:e2:00:0d"  # menu profile
MAC_E = "52:54:00:e2:00:0e"  # proxy mode, UEFI without NIC ROM (OVMF PXE → TFTP → iPXE)
BOOT_TIMEOUT = 150  # TCG, two VMs at a time on 2 shared cores


def _cli(data_dir, *args):
    r = run_cli(*args, data_dir=data_dir, timeout=120)
    assert r.code == 0, (args, r.stdout, r.stderr)
    return r


def _cmdline(vm, since=0):
    m = vm.wait_for(r"NSLAB-CMDLINE: ([^\n]*)\n", BOOT_TIMEOUT, since=since)
    return m.group(1).split()


def _initrd_id(vm, since=0):
    return vm.wait_for(r"NSLAB-INITRD id=([A-Za-z0-9._-]+)", 5, since=since).group(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cleanup_stale()
    tmp = tmp_path_factory.mktemp("boot-e2e")
    data = tmp / "data"
    kernel = find_kernel()
    assert kernel is not None, "linux-image-amd64 must be installed (scripts/install-deps.sh)"
    ctx = Context(data).init()
    # two versions of one image: same Debian kernel, initrds that say which one booted
    for v in (1, 2):
        initrd = build_busybox_initrd(tmp / f"initrd-v{v}.cpio", f"lab-v{v}")
        rootfs = tmp / f"rootfs-v{v}"
        (rootfs / "etc").mkdir(parents=True)
        (rootfs / "etc" / "netslate-e2e").write_text(f"version {v}\n")
        ctx.library.import_files("lab", rootfs=rootfs, kernel=kernel, initrd=initrd, tag="stable", note=f"e2e v{v}")
    # boot setup through the boot store (the CLI does the same; it is exercised below for approve,
    # tag, events and in tests/boot): in-process keeps this fixture fast
    from netslate.boot import store as bstore
    from netslate import inventory

    common = dict(image="lab", console="ttyS0")
    bstore.add_profile(ctx, "p-stable", ref="stable", args=["panic=-1", "quiet", "e2e.profile=p-stable"], **common)
    bstore.add_profile(ctx, "p-one", ref="1", args=["panic=-1", "quiet", "e2e.profile=p-one"], **common)
    bstore.add_profile(ctx, "p-menu", kind="menu", ref="stable", args=["panic=-1", "quiet"], **common)
    for name, mac in (("vm-b", MAC_B), ("vm-d", MAC_D), ("vm-e", MAC_E)):
        inventory.add_machine(ctx, [mac], name=name)
    for rule, mac, profile in (("r-a", MAC_A, "p-stable"), ("r-b", MAC_B, "p-one"), ("r-d", MAC_D, "p-menu"),
                               ("r-e", MAC_E, "p-stable")):
        bstore.add_rule(ctx, rule, {"mac": mac}, profile)
    # C is not in the inventory: its rule only applies once it is discovered and approved
    bstore.add_rule(ctx, "r-c", {"mac": MAC_C}, "p-stable")
    bstore.activate_rules(ctx)
    # unknown machines wait for approval
    bstore.set_policy(ctx, "hold", retry_seconds=3)
    with LabNetwork() as lab:
        # A has a fixed address: a DHCP reservation in full mode
        inventory.add_machine(ctx, [MAC_A], name="vm-a", hostname="vm-a", labels={"dhcp-ip": lab.host_ip(20)})
        yield {"lab": lab, "data": data, "tmp": tmp, "ctx": ctx}
    assert lab.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def full_server(world):
    lab = world["lab"]
    srv = NetslateServer(lab, world["data"], ["--boot-interface", lab.bridge, "--dhcp", "full",
                                              "--dhcp-range", f"{lab.host_ip(100)},{lab.host_ip(150)},255.255.255.0"],
                         log_path=world["tmp"] / "serve-full.log")
    srv.start()
    yield srv
    srv.stop()


def _vm(world, name, mac, firmware, nic, **kw):
    return VM(world["lab"], world["tmp"] / "vms", name, mac, firmware=firmware, nic=nic, **kw)


def test_boot_e2e_full_mode_two_machines_two_profiles(world, full_server):
    h = full_server.health()
    assert h["checks"]["dnsmasq"]["ok"] and h["checks"]["dnsmasq"]["mode"] == "full", h
    # TFTP root populated, pxelinux.cfg rendered for the known machines
    tftp = world["data"] / "tftp"
    for f in ("undionly.kpxe", "snponly.efi", "ipxe.efi", "lpxelinux.0", "ldlinux.c32", "pxelinux.cfg/default"):
        assert (tftp / f).exists(), f
    assert "netslate.image=lab@2" in (tftp / "pxelinux.cfg" / ("01-" + MAC_A.replace(":", "-"))).read_text()
    assert "netslate.image=lab@1" in (tftp / "pxelinux.cfg" / ("01-" + MAC_B.replace(":", "-"))).read_text()

    digests = {v: world["ctx"].library.resolve("lab", str(v)).manifest_digest for v in (1, 2)}
    a = _vm(world, "vm-a", MAC_A, "bios", "virtio")
    b = _vm(world, "vm-b", MAC_B, "uefi", "e1000")
    with a, b, ThreadPoolExecutor(2) as pool:
        fa, fb = pool.submit(_cmdline, a), pool.submit(_cmdline, b)
        args_a, args_b = fa.result(), fb.result()
        assert a.wait_exit(30) == 0 and b.wait_exit(30) == 0  # /init powered off
    text_a, text_b = a.console.text(), b.console.text()
    # A: BIOS iPXE ROM, stable → version 2; B: UEFI, pinned profile → version 1
    assert "netslate.image=lab@2" in args_a and "e2e.profile=p-stable" in args_a
    assert f"netslate.manifest={digests[2]}" in args_a and "netslate.mode=ram" in args_a
    assert "console=ttyS0" in args_a and any(x.startswith("netslate.server=http://") for x in args_a)
    assert _initrd_id(a) == "lab-v2"
    assert "netslate.image=lab@1" in args_b and "e2e.profile=p-one" in args_b
    assert f"netslate.manifest={digests[1]}" in args_b
    assert _initrd_id(b) == "lab-v1"
    assert f"/images/lab/2/kernel" in text_a and f"/images/lab/1/kernel" in text_b
    # A ran the BIOS iPXE (PXE/bzImage build), B the EFI one
    assert "SeaBIOS" in text_a and re.search(r"Features:.* PXE bzImage", text_a)
    # A's reservation (machine label dhcp-ip) → dnsmasq's hosts file → the address A got
    assert f"net0: {world['lab'].host_ip(20)}/" in text_a
    assert re.search(r"net0: \d+\.\d+\.\d+\.1(0\d|1\d|2\d|3\d|4\d|50)/", text_b)  # B: from the range
    assert "SeaBIOS" not in text_b and re.search(r"Features:.* EFI", text_b)
    # the server recorded both boots
    ev = json.loads(_cli(world["data"], "boot", "events", "--json").stdout)
    got = {(e.get("mac"), e.get("profile"), e.get("version")) for e in ev}
    assert (MAC_A, "p-stable", 2) in got and (MAC_B, "p-one", 1) in got, ev


def test_boot_e2e_tag_move_and_held_machine(world, full_server):
    data = world["data"]
    # roll the tag back: the next boot of A gets version 1
    _cli(data, "image", "tag", "lab", "1", "stable", "-m", "e2e rollback")
    a = _vm(world, "vm-a2", MAC_A, "bios", "virtio")
    c = _vm(world, "vm-c", MAC_C, "bios", "e1000")
    with a, c:
        c.wait_for(r"is waiting for", BOOT_TIMEOUT)  # the console wraps at 80 columns
        rows = json.loads(_cli(data, "machine", "list", "--json").stdout)
        held = [m for m in rows if MAC_C in (m.get("macs") or [])]
        assert len(held) == 1 and held[0]["state"] == "discovered", rows
        mark = c.console.mark()
        time.sleep(4)  # it keeps asking while held
        assert "is waiting for" in c.console.text()[mark:]
        _cli(data, "machine", "approve", str(held[0]["id"]))
        args_c = _cmdline(c, since=mark)
        args_a = _cmdline(a)
        assert a.wait_exit(30) == 0 and c.wait_exit(30) == 0
    assert "netslate.image=lab@1" in args_a and _initrd_id(a) == "lab-v1"
    assert "netslate.image=lab@1" in args_c and "e2e.profile=p-stable" in args_c  # its rule; the tag is now at 1
    _cli(data, "image", "tag", "lab", "2", "stable", "-m", "e2e forward again")


def test_boot_e2e_menu_lists_versions(world, full_server):
    d = _vm(world, "vm-d", MAC_D, "bios", "virtio")
    with d:
        d.wait_for(r"choose a version", BOOT_TIMEOUT)
        m = d.wait_for(r"lab version 1", 30)
        text = d.console.text()
        assert re.search(r"lab version 2 \[stable\]", text), text[-1500:]
        assert "current stable: version 2" in text
        assert text.index("lab version 2") < text.index("lab version 1")  # newest first
        # Enter at the console boots the highlighted (tagged) version at once instead of after the
        # 30 s menu timeout. (Arrow keys are escape sequences that SeaBIOS's serial console
        # sometimes splits under TCG load, which iPXE reads as Esc = cancel; so only Enter here.)
        d.send_keys(b"\r")
        args = _cmdline(d, since=m.end())
        d.wait_exit(30)
    assert "netslate.image=lab@2" in args and _initrd_id(d, since=m.end()) == "lab-v2"
    ev = json.loads(_cli(world["data"], "boot", "events", "--json").stdout)
    assert any(e["mac"] == MAC_D and e["kind"] == "menu" and e["profile"] == "p-menu" for e in ev), ev


def test_boot_e2e_proxy_mode_uefi_firmware_pxe(world, full_server):
    lab = world["lab"]
    full_server.stop()
    plain = lab.add_host()
    leases = world["tmp"] / "plain.leases"
    plain.popen(["dnsmasq", "--keep-in-foreground", "--port=0", "--interface=eth0", "--bind-interfaces",
                 f"--dhcp-range={lab.host_ip(50)},{lab.host_ip(60)},1h", f"--dhcp-leasefile={leases}",
                 f"--pid-file={world['tmp']}/plain.pid", "--log-facility=-", "--log-dhcp"],
                stdout=open(world["tmp"] / "plain-dnsmasq.log", "w"), stderr=subprocess.STDOUT)
    srv = NetslateServer(lab, world["data"], ["--boot-interface", lab.bridge, "--dhcp", "proxy"],
                         log_path=world["tmp"] / "serve-proxy.log")
    with srv:
        assert srv.health()["checks"]["dnsmasq"]["mode"] == "proxy"
        e = _vm(world, "vm-e", MAC_E, "uefi", "virtio", option_rom=False)
        with e:
            args = _cmdline(e)
            e.wait_exit(30)
        text = e.console.text()
    assert "NBP filename is snponly.efi" in text  # firmware PXE got the EFI iPXE over TFTP from the proxy
    assert "netslate.image=lab@2" in args and _initrd_id(e) == "lab-v2"
    # the address came from the plain DHCP server, not from netslate
    ip = re.search(r"net0: (\d+\.\d+\.\d+\.\d+)/", text).group(1)
    assert lab.host_ip(50) <= ip <= lab.host_ip(60) or int(ip.split(".")[-1]) in range(50, 61)
    assert MAC_E in leases.read_text()
    log = (world["data"] / "dnsmasq" / "dnsmasq.log").read_text()
    assert "sent" in log and "snponly.efi" in log
