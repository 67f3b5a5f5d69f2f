"""A plain DHCP server that gives every client the same options (ISC dhcpd, no conditions), next to
`netslate serve --dhcp off` (TFTP only), with real VMs (QEMU, TCG) and the fleet image (systemd +
agent, the netslate initramfs; built once per session, tests/boot_e2e/conftest.py):

- option 67 = `ipxe-bios/lpxelinux.0` (the loop-free BIOS loader) + next-server: a SeaBIOS VM runs
  Debian's iPXE (ipxe.lkrn) with netslate's script, fetches /boot.ipxe once, boots its image and its
  agent reports **configured**; each loader file is sent once over TFTP and the DHCP server sees two
  handshakes before Linux (firmware + iPXE), not the endless re-chaining `undionly.kpxe` gives;
- option 67 = `shimx64.efi` + next-server: an OVMF VM (the firmware's own PXE, no NIC ROM, Secure Boot
  off) runs Debian's shim and netboot GRUB, which reads its per-MAC GRUB file; its agent reports
  **configured**. (There is no loop-free iPXE for UEFI from Debian's binaries: docs/boot-dhcp.md.)
- option 67 = `lpxelinux.0` + next-server: a SeaBIOS VM reads its per-MAC pxelinux.cfg file, boots
  the assigned kernel + netslate initramfs with pxelinux's BOOTIF= (no iPXE, no boot script), and
  its agent reports **configured**;
- options 66 + 67 without next-server: what the firmware does (no VM gets past it):
  SeaBIOS's iPXE ROM says "Nothing to boot" and asks no TFTP server, even with the DHCP server on
  the netslate server's own address; OVMF, with the DHCP server on another host, asks that host
  (option 54), so netslate's TFTP sees nothing; with the DHCP server on the netslate server's own
  address OVMF does fetch shim from netslate, and shim then fails to fetch GRUB (it reads only
  next-server).

`netslate boot explain --json` reports each booted VM's path (iPXE BIOS via the pxelinux loader,
pxelinux, GRUB) from the TFTP log.

One world for the module: one copy of the fleet image, one `netslate serve`, one namespace; the ISC
dhcpd is started per test (its own address range, so the TFTP log never mixes VMs) and always
stopped. After each test a finalizer checks that no dhcpd or QEMU of the module runs; the module's
finalizer, that no process naming the module's paths and no namespace of it is left.
"""

import contextlib
import json
import os
import re
import subprocess
import time

import pytest

from netslate import inventory
from netslate.boot import store as bstore
from netslate.demo_fleet import Fleet, _utcnow, cli, configured
from netslate.vmlab import VM, NetslateServer, cleanup_stale

from nstest import run_cli

pytestmark = [pytest.mark.timeout(900), pytest.mark.vm]

MAC_LOADER = "52:54:00:e6:00:01"  # SeaBIOS, option 67 = ipxe-bios/lpxelinux.0
MAC_PXE = "52:54:00:e6:00:02"  # SeaBIOS, option 67 = lpxelinux.0 (per-MAC pxelinux.cfg)
MAC_UEFI = "52:54:00:e6:00:03"  # OVMF (firmware PXE, no NIC ROM), option 67 = shimx64.efi
MAC_NO_NS_BIOS = "52:54:00:e6:00:04"  # option 66 without next-server (unknown machines: never get that far)
MAC_NO_NS_UEFI = "52:54:00:e6:00:05"
MAC_NO_NS_SAME = "52:54:00:e6:00:06"
BOOT_TIMEOUT = 600  # TCG on 2 shared cores: firmware, loader, kernel + initramfs, rootfs pull, systemd
FIRMWARE_TIMEOUT = 180


def _our_processes(marks: list[str]) -> list[str]:
    """Command lines of live processes that name one of this module's paths (dhcpd -cf, QEMU's serial log)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(pid) != os.getpid() and any(m in cmd for m in marks):
            found.append(f"{pid}: {cmd[:200]}")
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory, fleet_seed):
    cleanup_stale()
    tmp = tmp_path_factory.mktemp("plain-dhcp")
    data = tmp / "data"
    t0 = time.monotonic()
    ctx = fleet_seed.copy_to(data)
    bstore.add_profile(ctx, "p-plain", image="fleet", ref="stable", mode="ram", console="ttyS0",
                       args=["panic=-1", "e2e.profile=p-plain"])
    for name, mac in (("vm-loader", MAC_LOADER), ("vm-pxe", MAC_PXE), ("vm-uefi", MAC_UEFI)):
        inventory.add_machine(ctx, [mac], name=name)
        bstore.add_rule(ctx, f"r-{name}", {"mac": mac}, "p-plain")
    bstore.activate_rules(ctx)
    cli(data, "config", "set", "/site-a", "timezone", "Europe/Oslo", json_out=False)
    for name in ("vm-loader", "vm-pxe", "vm-uefi"):
        cli(data, "config", "place", name, "/site-a", json_out=False)
    cli(data, "config", "publish", "-m", "plain dhcp test")
    fl = Fleet(tmp, data, tls=False)
    lab = fl.lab
    names = [lab.name]
    try:
        srv = NetslateServer(lab, data, ["--boot-interface", lab.bridge, "--dhcp", "off"], log_path=tmp / "serve.log")
        fl.server = srv
        srv.start()
        assert srv.health()["checks"]["dnsmasq"]["mode"] == "off"
        dhcp_host = lab.add_host()
        names.append(dhcp_host.name)
        print(f"\nworld (copy of the seed, server up): {time.monotonic() - t0:.0f}s")
        yield {"fl": fl, "lab": lab, "data": data, "tmp": tmp, "srv": srv, "dhcp": dhcp_host,
               "ranges": iter(range(100, 250, 10))}
    finally:
        fl.close()
    # nothing left behind: no namespace, no dhcpd, no QEMU of this module
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in names if n in netns], netns
    assert _our_processes([str(tmp), str(fl.vmdir)]) == []


def _dhcpd_conf(lab, filename: str, next_server: bool, first: int) -> str:
    net = lab.network
    return "\n".join([
        "authoritative;",
        "default-lease-time 600;",
        f"subnet {net.network_address} netmask {net.netmask} {{",
        f"  range {lab.host_ip(first)} {lab.host_ip(first + 9)};",
        *([f"  next-server {lab.address};"] if next_server else []),
        f'  option tftp-server-name "{lab.address}";',  # option 66: the netslate server
        f'  option bootfile-name "{filename}";',  # option 67, the same for every client
        "}",
        "",
    ])


@contextlib.contextmanager
def isc_dhcpd(world, name: str, filename: str, next_server: bool, on_server: bool = False):
    """The site's DHCP server: ISC dhcpd bound to one test-made interface (the other host's eth0, or
    with on_server the lab bridge, i.e. the netslate server's own address); always stopped."""
    tmp = world["tmp"]
    host, iface = (world["lab"], world["lab"].bridge) if on_server else (world["dhcp"], world["dhcp"].interface)
    first = next(world["ranges"])
    conf, leases = tmp / f"{name}.conf", tmp / f"{name}.leases"
    conf.write_text(_dhcpd_conf(world["lab"], filename, next_server, first))
    leases.write_text("")
    log = open(tmp / f"{name}.log", "w")
    proc = host.popen(["dhcpd", "-f", "-d", "-4", "-cf", str(conf), "-lf", str(leases), "-pf", str(tmp / f"{name}.pid"),
                       iface], stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, (tmp / f"{name}.log").read_text()
        yield {"leases": leases, "log": tmp / f"{name}.log", "server": host.address,
               "range": {world["lab"].host_ip(i) for i in range(first, first + 10)}}
    finally:
        host.stop(proc)
        log.close()
    assert proc.poll() is not None  # no DHCP server left running


def _acks(dhcpd_log, mac: str) -> int:
    return len(re.findall(rf"DHCPACK on \S+ to {re.escape(mac)}", dhcpd_log.read_text()))


def _dnsmasq_log(world) -> str:
    return (world["data"] / "dnsmasq" / "dnsmasq.log").read_text()


def _tftp_sent(world, name: str, to: set[str] | None = None) -> int:
    return len([ip for ip in re.findall(rf"sent \S*/tftp/{re.escape(name)} to (\S+)", _dnsmasq_log(world))
                if to is None or ip in to])


def _tftp_any(world, to: set[str]) -> list[str]:
    """Every TFTP line of netslate's dnsmasq that names one of these addresses (sent, refused, errors)."""
    return [x for x in _dnsmasq_log(world).splitlines() if "dnsmasq-tftp" in x and any(f" {ip}" in x for ip in to)]


def _events(world, mac: str) -> list[dict]:
    r = run_cli("boot", "events", "--json", data_dir=world["data"], timeout=60)
    assert r.code == 0, r.stderr
    return [e for e in json.loads(r.stdout) if e.get("mac") == mac]


def _explain(world, mac: str) -> dict:
    r = run_cli("boot", "explain", mac, "--json", data_dir=world["data"], timeout=60)
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(autouse=True)
def nothing_left_after_each_test(world):
    """After every test: no dhcpd and no QEMU of this module still running (the server stays)."""
    yield
    marks = [str(world["tmp"]), str(world["fl"].vmdir)]
    assert [p for p in _our_processes(marks) if "dhcpd" in p or "qemu-system" in p] == []


def _vm(world, name, mac, firmware="bios", **kw) -> VM:
    fl = world["fl"]
    vm = VM(world["lab"], fl.vmdir, name, mac, firmware=firmware, nic="virtio", memory_mb=1536, **kw)
    fl.vms[name] = vm  # Fleet.wait notices a dead VM; Fleet.close stops it
    return vm


def _keep(world, vm: VM) -> str:
    con = vm.console.text()
    (world["tmp"] / f"console-{vm.name}.log").write_text(con)
    return con


def _linux_then_configured(world, vm: VM, d: dict) -> tuple[int, dict, str]:
    """Power on; at the kernel's first line count the DHCP handshakes so far (firmware and loader only:
    the initramfs asks DHCP again later); then wait for the agent's configured report."""
    since = _utcnow()
    t0 = time.monotonic()
    vm.start()
    try:
        vm.wait_for(r"Linux version \d", BOOT_TIMEOUT)
        acks = _acks(d["log"], vm.mac)
        t_linux = time.monotonic() - t0
        f = world["fl"].wait(configured([vm.name], since=since), BOOT_TIMEOUT, f"{vm.name} configured")
        print(f"\n{vm.name}: power-on → Linux {t_linux:.0f}s, → configured {time.monotonic() - t0:.0f}s")
    finally:
        con = _keep(world, vm)
        vm.stop()
    return acks, f[vm.name], con


def test_bios_loader_with_next_server_reaches_configured(world):
    with isc_dhcpd(world, "dhcpd-loader", "ipxe-bios/lpxelinux.0", next_server=True) as d:
        vm = _vm(world, "vm-loader", MAC_LOADER)
        acks, m, con = _linux_then_configured(world, vm, d)
    ver = int(m["version"])
    assert m["state"] == "configured", m
    assert f"netslate: boot server {world['lab'].address}" in con  # the loader script (next-server = option 66 = built-in here)
    assert re.search(rf"Command line: .*netslate\.image=fleet@{ver}\b.*e2e\.profile=p-plain", con)
    assert f"netslate: rootfs fleet@{ver}: downloaded" in con  # the initramfs pulled and verified the image
    # no loop: each loader file sent once, two DHCP handshakes before Linux (firmware's, iPXE's), one boot script
    to = d["range"]
    assert _tftp_sent(world, "ipxe-bios/lpxelinux.0", to) == 1
    assert _tftp_sent(world, "ipxe-bios/ipxe.lkrn", to) == 1
    assert _tftp_sent(world, "ipxe-bios/netslate.ipxe", to) == 1
    assert acks == 2, acks
    ev = _events(world, MAC_LOADER)
    assert len(ev) == 1 and ev[0]["profile"] == "p-plain" and ev[0]["version"] == ver, ev
    # explain: the path it used (from the TFTP log + its boot script request) and will use next
    bp = _explain(world, MAC_LOADER)["boot_path"]
    assert bp["last"]["path"] == "ipxe-bios" and bp["last"]["first_file"] == "ipxe-bios/lpxelinux.0", bp
    assert bp["last"]["label"] == "iPXE BIOS", bp
    assert "ipxe-bios/netslate.ipxe" in bp["last"]["tftp_files"] and bp["last"]["last_script_at"]
    assert bp["next"]["path"] == "ipxe-bios" and bp["next"]["boots"] == f"image fleet@{ver}", bp


def test_uefi_shim_with_next_server_reaches_configured(world):
    with isc_dhcpd(world, "dhcpd-uefi", "shimx64.efi", next_server=True) as d:
        vm = _vm(world, "vm-uefi", MAC_UEFI, firmware="uefi", option_rom=False)
        acks, m, con = _linux_then_configured(world, vm, d)
    ver = int(m["version"])
    assert "NBP filename is shimx64.efi" in con and f"Server IP address is {world['lab'].address}" in con
    assert "netslate: GRUB over TFTP, looking for this machine" in con  # grub/grub.cfg, read by GRUB
    assert f"netslate: loading fleet@{ver}" in con  # the machine's own GRUB file
    assert f"netslate: rootfs fleet@{ver}: downloaded" in con
    # no loop: GRUB is sent once; OVMF's PXE fetches shim twice within one boot, both before GRUB
    # (seen here: two "sent shimx64.efi", then one "sent grubx64.efi"), never more
    to = d["range"]
    sends = [x for x in _tftp_any(world, to) if "shimx64" in x or "grubx64" in x]
    assert _tftp_sent(world, "shimx64.efi", to) <= 2 and _tftp_sent(world, "grubx64.efi", to) == 1, sends
    macfile = "grub/grub.cfg-01-" + MAC_UEFI.replace(":", "-")
    assert _tftp_sent(world, macfile, to) == 1
    assert acks <= 2, acks
    bp = _explain(world, MAC_UEFI)["boot_path"]
    assert bp["last"]["path"] == "grub" and bp["last"]["first_file"] == "shimx64.efi", bp
    assert bp["last"]["label"] == "GRUB / Secure Boot", bp
    assert bp["next"]["path"] == "grub" and bp["next"]["file"] == macfile and bp["next"]["boots"] == f"fleet@{ver}", bp


def test_pxelinux_per_mac_file_reaches_configured(world):
    cfg = world["data"] / "tftp" / "pxelinux.cfg" / ("01-" + MAC_PXE.replace(":", "-"))
    text = cfg.read_text()
    ver = int(re.search(r"netslate\.image=fleet@(\d+)", text).group(1))
    with isc_dhcpd(world, "dhcpd-pxe", "lpxelinux.0", next_server=True) as d:
        vm = _vm(world, "vm-pxe", MAC_PXE)
        acks, m, con = _linux_then_configured(world, vm, d)
    assert int(m["version"]) == ver, m
    assert f"netslate: rootfs fleet@{ver}: downloaded" in con  # the initramfs pulled and verified the image
    cmdline = re.search(r"Command line: ([^\n]*)", con).group(1).split()
    assert f"netslate.image=fleet@{ver}" in cmdline and "e2e.profile=p-plain" in cmdline, cmdline
    assert f"BOOTIF=01-{MAC_PXE.replace(':', '-')}" in cmdline  # IPAPPEND 2: pxelinux, not iPXE
    to = d["range"]
    assert _tftp_sent(world, "lpxelinux.0", to) == 1 and _tftp_sent(world, "pxelinux.cfg/" + cfg.name, to) == 1
    assert acks == 1, acks  # pxelinux reuses the firmware's lease
    assert _events(world, MAC_PXE) == []  # no iPXE boot script: the per-MAC file decided
    bp = _explain(world, MAC_PXE)["boot_path"]
    assert bp["last"]["path"] == "pxelinux" and bp["last"]["first_file"] == "lpxelinux.0", bp
    assert f"pxelinux.cfg/{cfg.name}" in bp["last"]["tftp_files"] and bp["last"]["last_script_at"] is None
    assert bp["next"] == {"path": "pxelinux", "label": "pxelinux", "file": f"pxelinux.cfg/{cfg.name}",
                          "boots": f"fleet@{ver}"}, bp


def _firmware_only(world, name: str, mac: str, filename: str, firmware: str, until: str, on_server: bool = False):
    """Boot a VM behind options 66 + 67 without next-server until the firmware gives up on the network."""
    with isc_dhcpd(world, name, filename, next_server=False, on_server=on_server) as d:
        vm = _vm(world, name, mac, firmware=firmware, option_rom=firmware == "bios")
        t0 = time.monotonic()
        vm.start()
        try:
            vm.wait_for(until, FIRMWARE_TIMEOUT)
            print(f"\n{name}: power-on → the firmware gave up: {time.monotonic() - t0:.0f}s")
            # the leftover check sees what runs (so that its empty answer after the test means something)
            running = _our_processes([str(world["tmp"]), str(world["fl"].vmdir)])
            assert any("qemu-system" in p for p in running) and any("dhcpd" in p for p in running), running
        finally:
            con = _keep(world, vm)
            vm.stop()
        leases = d["leases"].read_text()
    assert mac in leases  # it did get an address from the DHCP server
    return con, d


def test_option66_without_next_server_bios_ipxe_rom_boots_nothing(world):
    """QEMU's iPXE ROM (SeaBIOS) reads the file name but neither option 66 nor the DHCP server's address
    (option 54): even with the DHCP server on the netslate server's own address (so that a TFTP request
    to either would reach netslate's TFTP and be logged) it sends no TFTP request at all."""
    con, d = _firmware_only(world, "no-ns-bios", MAC_NO_NS_BIOS, "ipxe-bios/lpxelinux.0", "bios",
                            r"Nothing to boot", on_server=True)
    assert d["server"] == world["lab"].address
    assert "Filename: ipxe-bios/lpxelinux.0" in con and "Next server:" not in con
    assert _tftp_any(world, d["range"]) == []  # netslate's TFTP never heard from it


def test_option66_without_next_server_ovmf_asks_the_dhcp_server(world):
    """OVMF's PXE ignores option 66 and, with next-server 0.0.0.0, asks the DHCP server's own address
    (option 54): the download fails there and netslate's TFTP never hears from the machine."""
    con, d = _firmware_only(world, "no-ns-uefi", MAC_NO_NS_UEFI, "shimx64.efi", "uefi",
                            r"Start PXE over IPv6")
    assert f"Server IP address is {d['server']}" in con and d["server"] != world["lab"].address
    assert "NBP filename is shimx64.efi" in con and "NBP filesize is 0 Bytes" in con
    assert "NBP file downloaded successfully" not in con
    assert _tftp_any(world, d["range"]) == []


def test_option66_without_next_server_dhcp_on_the_netslate_address(world):
    """The DHCP server on the netslate server's own address (a small site's one box): OVMF fetches shim
    from there (option 54), but shim takes GRUB's server from next-server only and cannot fetch it."""
    con, d = _firmware_only(world, "no-ns-same", MAC_NO_NS_SAME, "shimx64.efi", "uefi",
                            r"Start PXE over IPv6", on_server=True)
    assert d["server"] == world["lab"].address
    assert f"Server IP address is {world['lab'].address}" in con and "NBP file downloaded successfully" in con
    assert "Fetching Netboot Image grubx64.efi" in con and "Unable to fetch TFTP image" in con
    assert _tftp_sent(world, "shimx64.efi", d["range"]) >= 1  # shim came from netslate
    assert _tftp_sent(world, "grubx64.efi", d["range"]) == 0  # GRUB never asked for
    assert "Linux version" not in con
