"""The world for booting the netslate initramfs in real QEMU (TCG) VMs; shared by the VM tests and
bench/initramfs_boot.py.

A vmlab namespace with a bridge; in it dnsmasq (DHCP only), `netslate serve` on the bridge address
and four proxies in front of it (tamper, hang, garbage, pass: see hostile_server.py); a tiny image whose
/sbin/init prints a marker, /proc/mounts and /run/netslate/boot.json, then powers off. VMs boot the
host's Debian kernel directly (-kernel/-initrd/-append), as iPXE would after the boot script.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from netslate.context import Context
from netslate.initramfs import build as B
from netslate.vmlab import VM, LabNetwork
from netslate.vmlab.qemu import find_kernel

HERE = Path(__file__).parent
KERNEL = find_kernel()
KVER = KERNEL.name.removeprefix("vmlinuz-") if KERNEL else None
MARKER = "TINY-INIT-REACHED"
BOOT_TIMEOUT = 150

TINY_INIT = r"""#!/bin/busybox sh
B=/bin/busybox
echo "TINY-INIT-REACHED version=$($B cat /etc/tiny-version)"
echo "--- mounts"
$B cat /proc/mounts
echo "--- boot.json"
$B tr -d '\n' < /run/netslate/boot.json
echo
echo "--- end"
if $B grep -q ' /home ' /proc/mounts; then
    n=$($B cat /home/boots 2>/dev/null || echo 0)
    n=$((n + 1))
    echo $n > /home/boots
    echo "PERSIST-BOOTS=$n"
fi
if $B grep -q 'tiny.pin=' /proc/cmdline && [ -d /netslate/lkg ]; then
    # what the agent does: save the last-known-good bundle (here one that pins an image version)
    pin=$($B sed -n 's/.*tiny.pin=\([^ ]*\).*/\1/p' /proc/cmdline)
    echo "{\"payload\": {\"image_pin\": \"$pin\"}}" > /netslate/lkg/bundle.json
    echo "LKG-SAVED=$pin"
fi
$B sync
$B poweroff -f
"""


def make_tiny(root: Path, version: str, payload_seed: int) -> Path:
    """A directory rootfs: busybox, an init script, and 3 MiB of data (so there are many chunks)."""
    (root / "bin").mkdir(parents=True)
    (root / "sbin").mkdir()
    (root / "etc").mkdir()
    (root / "usr/share/data").mkdir(parents=True)
    for d in ("proc", "sys", "dev", "run", "home", "tmp"):
        (root / d).mkdir()
    (root / "bin/busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (root / "bin/busybox").chmod(0o755)
    (root / "sbin/init").write_text(TINY_INIT)
    (root / "sbin/init").chmod(0o755)
    (root / "etc/tiny-version").write_text(version + "\n")
    import random

    rnd = random.Random(1234)  # the same 3 MiB in every version
    (root / "usr/share/data/blob").write_bytes(rnd.randbytes(3 << 20))
    (root / "usr/share/data/small").write_bytes(random.Random(payload_seed).randbytes(20000))
    return root


class World:
    pass


def _start_dnsmasq(lab: LabNetwork, tmp: Path):
    lo, hi = lab.host_ip(100), lab.host_ip(150)
    log = open(tmp / "dnsmasq.log", "ab")
    return lab.popen(["dnsmasq", "--keep-in-foreground", "--port=0", f"--interface={lab.bridge}", "--bind-interfaces",
                      f"--dhcp-range={lo},{hi},255.255.255.0,1h", f"--dhcp-leasefile={tmp}/leases", "--user=root",
                      "--no-resolv", "--no-hosts", "--log-dhcp", "--conf-file=/dev/null", f"--pid-file={tmp}/dnsmasq.pid"],
                     stdout=log, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def make_world(tmp: Path):
    """The test world (see the module docstring); everything it started is stopped on exit."""
    assert KERNEL is not None, "no /boot/vmlinuz-*: install linux-image-amd64 (scripts/install-deps.sh)"
    w = World()
    w.tmp = tmp
    w.data = tmp / "data"
    w.ctx = Context(w.data).init()
    w.initrd, w.initrd_info = B.cached(tmp / "build", KVER)
    w.v1 = w.ctx.library.import_files("tiny", rootfs=make_tiny(tmp / "tiny1", "1", 1), warn=lambda m: None)
    w.lab = LabNetwork().create()
    try:
        yield from _populate(w, tmp)
    finally:
        w.lab.close()


def _populate(w: World, tmp: Path):
    w.port = 8080
    w.dnsmasq = _start_dnsmasq(w.lab, tmp)
    w.server_log = tmp / "server.log"
    env = {**os.environ, "NETSLATE_DATA_DIR": str(w.data)}
    w.server = w.lab.popen([sys.executable, "-m", "netslate", "serve", "--listen", f"{w.lab.address}:{w.port}", "--log-level", "info"],
                           env=env, stdout=open(w.server_log, "ab"), stderr=subprocess.STDOUT)
    w.url = f"http://{w.lab.address}:{w.port}"
    w.hostile = {}
    for mode, port in (("tamper", 8081), ("hang", 8082), ("pass", 8083), ("garbage", 8084)):
        w.hostile[mode] = f"http://{w.lab.address}:{port}"
        w.lab.popen([sys.executable, str(HERE / "hostile_server.py"), w.lab.address, str(port), w.url, mode],
                    stdout=open(tmp / f"hostile-{mode}.log", "ab"), stderr=subprocess.STDOUT)
    w.lab.wait_tcp(w.port, timeout=60)
    for port in (8081, 8082, 8083, 8084):
        w.lab.wait_tcp(port, timeout=20)
    yield w


_macs = iter(range(0x10, 0xFF))


def make_vm(w: World, name: str, args: list[str], disk: Path | None = None, disk_format: str = "qcow2") -> VM:
    cmdline = " ".join(["console=ttyS0", "panic=-1", "quiet", *args])
    extra = ["-kernel", str(KERNEL), "-initrd", str(w.initrd), "-append", cmdline]
    if disk is not None:
        extra += ["-drive", f"file={disk},if=virtio,format={disk_format}"]
    return VM(w.lab, w.tmp / "vms", name, f"52:54:00:5a:00:{next(_macs):02x}", memory_mb=768, accel="tcg", extra=extra)


def finish(vm: VM, until: str = MARKER, timeout: float = BOOT_TIMEOUT) -> str:
    """Wait until `until` is on the console (and, for the marker, until the tiny init powered off)."""
    vm.wait_for(until, timeout)
    if until == MARKER:
        vm.wait_for("--- end", 30)
        try:
            vm.wait_exit(30)
        except subprocess.TimeoutExpired:
            pass
    return vm.console.text()


def boot(w: World, name: str, args: list[str], disk: Path | None = None, until: str = MARKER,
         timeout: float = BOOT_TIMEOUT, disk_format: str = "qcow2") -> str:
    """Boot one VM with the netslate initramfs; return its console text once `until` appeared."""
    with make_vm(w, name, args, disk, disk_format) as vm:
        return finish(vm, until, timeout)


def boot_many(w: World, specs: dict[str, dict]) -> dict[str, str]:
    """Boot several VMs at once (each TCG VM is single-threaded; the host has 2 cores)."""
    vms = {name: make_vm(w, name, spec["args"], spec.get("disk"), spec.get("disk_format", "qcow2")) for name, spec in specs.items()}
    try:
        for vm in vms.values():
            vm.start()
        return {name: finish(vm, specs[name].get("until", MARKER), BOOT_TIMEOUT + 60) for name, vm in vms.items()}
    finally:
        for vm in vms.values():
            vm.stop()


def ns_args(w: World, resolved, mode: str = "ram", servers: list[str] | None = None, extra: tuple = ()) -> list[str]:
    return [f"netslate.server={','.join(servers or [w.url])}", f"netslate.image={resolved.name}@{resolved.version}",
            f"netslate.manifest={resolved.manifest_digest}", f"netslate.mode={mode}", *extra]


def boot_json(console: str) -> dict:
    m = re.search(r"--- boot\.json\n(.*?)\n--- end", console, re.S)
    assert m, console[-3000:]
    return json.loads(m.group(1))


def chunk_requests(w: World) -> int:
    """Image-data requests (/chunks/ID, or a Range of /images/NAME/VER/rootfs) that went through the
    counting proxy (the cache-mode VMs' only server)."""
    text = (w.tmp / "hostile-pass.log").read_text(errors="replace")
    return len(re.findall(r'"GET (/chunks/|/images/[^/ ]+/[^/ ]+/rootfs )', text))


def new_disk(w: World, name: str) -> Path:
    p = w.tmp / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(p), "1G"], check=True)
    return p


