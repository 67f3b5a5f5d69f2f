"""Diskless desktop pools end to end: real libvirtd + QEMU (TCG), a real `netslate serve` running
dnsmasq (full DHCP) on a Linux bridge this test creates in the root namespace with no uplink (libvirt's
QEMU runs in the root namespace; a bridge with no physical port keeps every packet on it), QEMU's
iPXE option ROM PXE-booting the desktop, and the netslate initramfs loading the image in ram mode.

Shown: a diskless pool of size 1 fills; the desktop PXE-boots and reaches the image's init in ram
mode (serial console); the MAC is in the inventory (approved, labelled) with an active rule; a reset
reboots it into the image; after the tag moves, the next reset boots the new version; destroying the
desktop removes its inventory entry.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netslate.boot import store as bstore
from netslate.context import Context
from netslate.desktops import allocation, hosts
from netslate.desktops.actuator import Actuator
from netslate.desktops.tinyguest import kernel_path
from netslate.inventory import store as inventory

from desktops_fixtures import URI, cleanup, ensure_libvirtd, traversable, wait_serial
from nstest import free_port, run_cli

pytestmark = pytest.mark.timeout(420)

BRIDGE = "nsdl0"
ADDR = "10.99.0.1"
BOOT_TIMEOUT = 180  # TCG on 2 shared cores: iPXE + kernel + initramfs fetching the image

INIT = r"""#!/bin/busybox sh
B=/bin/busybox
echo "DISKLESS-INIT-REACHED version=$($B cat /etc/tiny-version)"
echo "DISKLESS-CMDLINE: $($B cat /proc/cmdline)"
echo "DISKLESS-ROOT: $($B grep ' / ' /proc/mounts | $B head -n 1)"
while true; do $B sleep 60; done
"""


def make_rootfs(root: Path, version: str) -> Path:
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "bin/busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (root / "bin/busybox").chmod(0o755)
    (root / "sbin/init").write_text(INIT)
    (root / "sbin/init").chmod(0o755)
    (root / "etc/tiny-version").write_text(version + "\n")
    return root


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


@pytest.fixture
def bridge():
    _sh("ip", "link", "del", BRIDGE, check=False)  # a leftover of an interrupted run
    _sh("ip", "link", "add", BRIDGE, "type", "bridge")
    try:
        _sh("ip", "addr", "add", f"{ADDR}/24", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")
        yield BRIDGE
    finally:
        _sh("ip", "link", "del", BRIDGE, check=False)


def _cli(data_dir, *args):
    r = run_cli(*args, data_dir=data_dir, timeout=300)
    assert r.code == 0, (args, r.stdout, r.stderr)
    return r


def _new_version(ctx, data_dir, tmp, version: str) -> int:
    """A plain image version (rootfs + Debian kernel), then `initramfs build --image` on it, tagged stable."""
    v = ctx.library.import_files("dl", rootfs=make_rootfs(tmp / f"root-{version}", version), kernel=kernel_path(),
                                 note=f"diskless test {version}")
    out = json.loads(_cli(data_dir, "initramfs", "build", "--image", f"dl@{v['version']}", "--tag", "stable", "--json").stdout)
    resolved = ctx.library.resolve("dl", "stable")
    assert resolved.version > v["version"] and "initrd" in resolved.artifacts, out
    return resolved.version


def _wait_boot(ctx, name: str, version: str, image_version: int) -> str:
    text = wait_serial(ctx, name, rf"DISKLESS-ROOT: [^\n]*\n", BOOT_TIMEOUT)
    m = re.search(r"DISKLESS-INIT-REACHED version=(\S+)", text)
    assert m and m.group(1) == version, text[-2000:]
    cmdline = re.search(r"DISKLESS-CMDLINE: ([^\n]*)", text).group(1).split()
    assert "netslate.mode=ram" in cmdline, cmdline
    assert f"netslate.image=dl@{image_version}" in cmdline, cmdline
    assert "console=ttyS0" in cmdline, cmdline
    root = re.search(r"DISKLESS-ROOT: ([^\n]*)", text).group(1)
    assert root.split()[2] == "overlay", root  # ram mode: tmpfs overlay over the squashfs
    return text


def _reset(ctx, actuator, did: int) -> None:
    allocation.request_desktop(ctx, "dl", "alice", provision=False)
    allocation.release_desktop(ctx, did, "test")
    r = actuator.reconcile(pool="dl", wait=True, timeout=120)
    assert r["actions"], r
    assert allocation.show_desktop(ctx, did)["state"] == "ready"


def test_desktops_diskless_pool_pxe_boots_ram_mode_and_rolls_a_tag(tmp_path, bridge):
    ensure_libvirtd()
    traversable(tmp_path)
    data = tmp_path / "data"
    ctx = Context(data).init()
    hosts.add_host(ctx, "local", URI, "test", accel="tcg", max_starting=4)
    v_first = _new_version(ctx, data, tmp_path, "1")

    # bad input: both or neither of --golden/--diskless, no network, unknown image → exit 2, nothing written
    for args in (["--diskless", "dl@stable", "--golden", "x"], ["--diskless", "dl@stable", "--network", "none"],
                 ["--diskless", "nope@stable", "--network", BRIDGE], []):
        r = run_cli("pool", "create", "bad", "--ip-range", "10.99.0.60-10.99.0.61", *args, data_dir=data)
        assert r.code == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stdout, r.stderr)
    assert json.loads(_cli(data, "pool", "list", "--json").stdout) == []

    port = free_port()
    srv_log = open(tmp_path / "serve.log", "ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "netslate", "serve", "--listen", f"{ADDR}:{port}", "--boot-interface", BRIDGE,
         "--dhcp", "full", "--dhcp-range", "10.99.0.100,10.99.0.150,255.255.255.0"],
        env={**__import__("os").environ, "NETSLATE_DATA_DIR": str(data)}, stdout=srv_log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL)
    try:
        import httpx

        deadline = time.time() + 60
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://{ADDR}:{port}/healthz", timeout=3).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "netslate serve did not come up"
            time.sleep(0.3)

        pool = json.loads(_cli(data, "pool", "create", "dl", "--diskless", "dl@stable", "--network", BRIDGE,
                               "--size", "1", "--spare", "0", "--max", "1", "--memory", "768", "--display", "vnc",
                               "--ip-range", "10.99.0.50-10.99.0.59", "--json").stdout)
        assert pool["diskless"] == "dl@stable" and pool["network"] == f"bridge:{BRIDGE}"

        actuator = Actuator(ctx)
        actuator.reconcile(pool="dl", wait=True, timeout=120)
        ds = allocation.list_desktops(ctx, pool="dl")
        assert len(ds) == 1 and ds[0]["state"] == "ready", ds
        d = ds[0]
        # no disk, network boot, NIC on the bridge, serial console logged
        xml = _sh("virsh", "-c", URI, "dumpxml", d["name"]).stdout
        assert "<disk" not in xml and "<boot dev='network'/>" in xml and f"bridge='{BRIDGE}'" in xml, xml
        assert "<graphics type='vnc'" in xml and "<serial type='pty'>" in xml
        # the boot part knows it: inventory (approved, labelled) and an active rule → ram-mode profile
        m = inventory.show_machine(ctx, d["mac"])
        assert m["approved"] and m["labels"].get("desktop-pool") == "dl", m
        prof = bstore.show_profile(ctx, "desktop-dl")
        assert (prof["image"], prof["ref"], prof["mode"]) == ("dl", "stable", "ram"), prof
        active = bstore.list_rules(ctx, "active")["rules"]
        assert [r for r in active if r["profile"] == "desktop-dl" and r["selectors"] == {"label": {"desktop-pool": "dl"}}], active

        _wait_boot(ctx, d["name"], "1", v_first)
        # the desktop's address is a dnsmasq reservation: the lease the guest took is that address
        assert d["ip"] == "10.99.0.50"
        leases = (data / "dnsmasq" / "dnsmasq.leases").read_text()
        assert re.search(rf"{d['mac']} 10\.99\.0\.50 ", leases), leases

        # a reset is a power cycle: the same image again, from the network
        _reset(ctx, actuator, d["id"])
        _wait_boot(ctx, d["name"], "1", v_first)

        # move the tag: the next reset boots the new version
        v_second = _new_version(ctx, data, tmp_path, "2")
        assert v_second != v_first
        _reset(ctx, actuator, d["id"])
        _wait_boot(ctx, d["name"], "2", v_second)
        # the boot server chose through our rule and profile each time: three boots, then the new version
        events = [e for e in bstore.list_events(ctx, machine=d["mac"]) if e["kind"] == "image"]
        assert {(e["rule"], e["profile"]) for e in events} == {("desktop-pool-dl", "desktop-dl")}, events
        assert sorted({e["version"] for e in events}) == [v_first, v_second], events

        # destroy: the desktop and its inventory entry go
        _cli(data, "pool", "rm", "dl", "--force")
        actuator.reconcile(wait=True, timeout=120)
        assert allocation.list_desktops(ctx, pool="dl") == []
        assert not [x for x in inventory.list_machines(ctx) if d["mac"] in x["macs"]]
        assert d["name"] not in _sh("virsh", "-c", URI, "list", "--name").stdout
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        srv_log.close()
        cleanup(ctx)
