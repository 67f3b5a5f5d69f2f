"""Does KVM really work here? (issue 11 #10)

`/dev/kvm` existing, and libvirt advertising a `kvm` domain type, do not mean a guest runs: on a
host with broken nested virtualisation QEMU asserts at once (`kvm_buf_set_msrs: Assertion …
failed`) or a kernel hangs for ever. Only a kernel's first console line ("Linux version") proves
KVM works, so both probes boot the host's kernel with a time-out:

- `probe_qemu`: a QEMU process of our own (the boot tests' VMs, netslate.vmlab);
- `probe_libvirt`: a tiny transient domain through a libvirt connection (desktop hosts).

`hypervisor_fault` is the pure rule that tells a domain start failure caused by the hypervisor
(KVM) from one caused by the desktop (its disk, its XML), so a host can be marked degraded once
instead of its desktops being quarantined one by one.

Base layer: imports nothing of netslate; libvirt is passed in as a connection.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

BANNER = b"Linux version"
QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT = 15.0

# What QEMU/libvirt say when KVM itself fails (not the guest's disk or XML).
_FAULTS = [
    (re.compile(r"kvm_buf_set_msrs|failed to set MSR", re.I), "QEMU cannot set the vCPU's MSRs under KVM (kvm_buf_set_msrs assertion)"),
    (re.compile(r"Could not access KVM kernel module|failed to initialize kvm|/dev/kvm", re.I), "QEMU cannot open or initialise /dev/kvm"),
    (re.compile(r"kvm_init_vcpu|KVM_RUN|kvm run failed|KVM internal error|kvm_arch_|KVM: entry failed", re.I), "KVM fails to run the guest's vCPU"),
    (re.compile(r"domain type 'kvm'|no accelerator found|invalid accelerator kvm|KVM is not (available|supported)", re.I), "the host offers no working KVM"),
]


def hypervisor_fault(message: str | None) -> str | None:
    """A one-line reason when a domain's failure to start comes from the hypervisor (KVM), else None. Pure."""
    if not message:
        return None
    for pattern, reason in _FAULTS:
        if pattern.search(message):
            return reason
    return None


def find_kernel() -> Path | None:
    """The newest kernel in /boot (the probes boot it)."""
    found = sorted(glob.glob("/boot/vmlinuz-*"), key=os.path.getmtime)
    return Path(found[-1]) if found else None


def wait_for_banner(read: Callable[[], bytes], alive: Callable[[], bool], timeout: float,
                    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Poll a console until the kernel banner appears (True), the guest dies or `timeout` passes (False)."""
    deadline = clock() + timeout
    while True:
        if BANNER in read():
            return True
        if not alive() or clock() >= deadline:
            return BANNER in read()
        sleep(0.1)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def probe_qemu(timeout: float = 10.0) -> bool:
    """Boot the host's kernel in a QEMU process of our own under KVM; True if its banner appears."""
    if not os.path.exists("/dev/kvm"):
        return False
    kernel = find_kernel()
    if kernel is None or shutil.which(QEMU) is None:
        return False
    with tempfile.TemporaryDirectory(prefix="netslate-kvmprobe-") as tmp:
        log = Path(tmp) / "serial.log"
        argv = [QEMU, "-accel", "kvm", "-machine", "pc", "-m", "256", "-nodefaults", "-display", "none",
                "-no-user-config", "-no-reboot", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
                "-serial", f"file:{log}", "-monitor", "none"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            return wait_for_banner(lambda: _read(log), lambda: proc.poll() is None, timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass  # stuck in the kernel on /dev/kvm; it is killed, we do not wait forever


def probe_domain_xml(name: str, kernel: Path, serial_log: Path, domain_type: str = "kvm") -> str:
    """The tiny probe domain: the host's kernel, no disk, no network, serial console to a file. Pure."""
    return f"""<domain type='{domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel><cmdline>console=ttyS0 panic=-1</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices><serial type='file'><source path='{serial_log}'/><target port='0'/></serial></devices>
</domain>"""


def local_uri(uri: str) -> bool:
    """A libvirt URI of this machine (the probe copies the kernel into a local directory)."""
    return uri.startswith(("qemu:///", "qemu+unix:///"))


def probe_libvirt(conn, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Start a transient KVM domain booting the host's kernel through `conn` (a local libvirt
    connection); (works, one-line detail). The domain is always destroyed."""
    kernel = find_kernel()
    if kernel is None:
        return False, "no /boot/vmlinuz-* to boot a test guest"
    work = Path(tempfile.mkdtemp(prefix="netslate-kvmprobe-"))
    dom = None
    try:
        os.chmod(work, 0o755)  # QEMU runs as libvirt-qemu
        k = work / "vmlinuz"
        shutil.copyfile(kernel, k)
        os.chmod(k, 0o644)
        log = work / "serial.log"
        name = f"netslate-kvmprobe-{uuid.uuid4().hex[:12]}"
        try:
            dom = conn.createXML(probe_domain_xml(name, k, log), 0)
        except Exception as exc:  # libvirt.libvirtError: QEMU refused or died at start
            text = str(exc).strip().splitlines()
            return False, f"the test guest did not start: {hypervisor_fault(str(exc)) or (text[-1] if text else 'no message')}"[:300]

        def alive() -> bool:
            try:
                return bool(dom.isActive())
            except Exception:
                return False

        if wait_for_banner(lambda: _read(log), alive, timeout):
            return True, "a test guest booted under KVM"
        if not alive():
            return False, "the test guest died before its kernel printed anything (QEMU crashed under KVM)"
        return False, f"the test guest printed nothing within {timeout:.0f} s under KVM (hangs)"
    finally:
        if dom is not None:
            try:
                dom.destroy()
            except Exception:
                pass  # already gone
        shutil.rmtree(work, ignore_errors=True)
