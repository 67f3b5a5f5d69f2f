"""QEMU VMs for boot tests: TCG unless KVM really works, SeaBIOS or OVMF, virtio-net or e1000.

The guest's serial port goes to a file that `SerialLog` reads. With `-machine graphics=off`
SeaBIOS mirrors its text console (and so the legacy iPXE option ROM's output) to the serial
port; OVMF's console includes the serial port anyway.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from netslate.kvmcheck import find_kernel, probe_qemu as _probe_kvm  # noqa: F401  (the one KVM probe, shared with desktops)
from netslate.vmlab.console import SerialLog
from netslate.vmlab.net import LabNetwork

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Secure Boot enforced: Debian's OVMF with Microsoft's keys enrolled (needs SMM: q35,smm=on).
OVMF_CODE_SB = Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
OVMF_VARS_SB = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
IPXE_ROM_DIR = Path("/usr/lib/ipxe/qemu")  # Debian ipxe-qemu: legacy + EFI iPXE option ROMs
NICS = {"virtio": ("virtio-net-pci", "efi-virtio.rom"), "e1000": ("e1000", "efi-e1000.rom")}
FIRMWARES = ("bios", "uefi", "uefi-sb")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")

_kvm_result: bool | None = None
_kvm_lock = threading.Lock()


def kvm_available(timeout: float = 10.0) -> bool:
    """True if KVM boots a kernel here. Probed once per process (bounded by `timeout`), then cached.

    NETSLATE_VMLAB_ACCEL=tcg|kvm overrides the probe.
    """
    global _kvm_result
    forced = os.environ.get("NETSLATE_VMLAB_ACCEL")
    if forced in ("tcg", "kvm"):
        return forced == "kvm"
    with _kvm_lock:
        if _kvm_result is None:
            _kvm_result = _probe_kvm(timeout)
        return _kvm_result


def qemu_command(
    *,
    name: str,
    mac: str,
    tap: str,
    serial_path: Path,
    firmware: str = "bios",
    nic: str = "virtio",
    memory_mb: int = 512,
    accel: str = "tcg",
    vars_path: Path | None = None,
    extra: list[str] | tuple[str, ...] = (),
    option_rom: bool = True,
) -> list[str]:
    """The QEMU command line for a network-booting VM (pure; no I/O)."""
    if firmware not in FIRMWARES:
        raise ValueError(f"firmware must be one of {FIRMWARES}")
    if nic not in NICS:
        raise ValueError(f"nic must be one of {sorted(NICS)}")
    if not _MAC.match(mac):
        raise ValueError(f"bad MAC {mac!r}")
    device, _rom = NICS[nic]
    argv = [
        QEMU, "-name", name, "-accel", accel,
        "-machine", {"uefi": "q35", "uefi-sb": "q35,smm=on"}.get(firmware, "pc") + ",graphics=off",
        "-m", str(memory_mb), "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        # The serial port is a unix socket (send_keys) that also logs everything to serial_path.
        "-chardev", f"socket,id=ser0,path={serial_path}.sock,server=on,wait=off,logfile={serial_path}",
        "-serial", "chardev:ser0", "-monitor", "none",
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        # No romfile=: QEMU's default for these NICs is Debian ipxe-qemu's efi-*.rom (found in
        # /usr/lib/ipxe/qemu), and an explicit absolute romfile= was not run by SeaBIOS here.
        # option_rom=False (romfile=): no iPXE on the NIC, so UEFI uses OVMF's own PXE stack and
        # fetches the iPXE binary over TFTP, like most physical machines.
        "-device", f"{device},netdev=n0,mac={mac},bootindex=1" + ("" if option_rom else ",romfile="),
    ]
    if firmware in ("uefi", "uefi-sb"):
        if vars_path is None:
            raise ValueError("UEFI needs a per-VM copy of OVMF_VARS")
        if firmware == "uefi-sb":  # the variable store is writable only from SMM: Secure Boot holds
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE_SB if firmware == 'uefi-sb' else OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_path}",
        ]
    else:
        argv += ["-boot", "order=n"]
    return argv + list(extra)


class VM:
    """One QEMU VM on a LabNetwork; `with VM(...) as vm:` starts it and always stops it."""

    def __init__(
        self,
        lab: LabNetwork,
        workdir: Path,
        name: str,
        mac: str,
        firmware: str = "bios",
        nic: str = "virtio",
        memory_mb: int = 512,
        accel: str | None = None,
        extra: list[str] | tuple[str, ...] = (),
        option_rom: bool = True,
        tpm: bool = False,
        qmp: bool = False,
    ) -> None:
        self.option_rom = option_rom
        # qmp: a QMP socket beside the serial log, for dump_memory (tests that look into a VM's RAM)
        self.qmp = qmp
        self.qmp_path = Path(workdir) / f"{name}.qmp"
        # A TPM 2.0 (swtpm, QEMU `-tpmdev emulator`): its state directory outlives restarts, so the
        # VM keeps its EK (and the AK derived from it) across boots, like a real machine's TPM.
        self.tpm = tpm
        self.tpm_dir = Path(workdir) / f"{name}.tpm"
        self.swtpm: subprocess.Popen | None = None
        self.lab = lab
        self.workdir = Path(workdir)
        self.name = name
        self.mac = mac.lower()
        self.firmware = firmware
        self.nic = nic
        self.memory_mb = memory_mb
        self.accel = accel or ("kvm" if kvm_available() else "tcg")
        self.extra = list(extra)
        self.serial_path = self.workdir / f"{name}.serial.log"
        self.qemu_log = self.workdir / f"{name}.qemu.log"
        self.console = SerialLog(self.serial_path)
        self.proc: subprocess.Popen | None = None
        self.tap: str | None = None
        self.started_at: float | None = None

    def command(self) -> list[str]:
        vars_path = self.workdir / f"{self.name}.OVMF_VARS.fd" if self.firmware != "bios" else None
        tpm = ["-chardev", f"socket,id=chrtpm,path={self.tpm_dir / 'swtpm.sock'}",
               "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"] if self.tpm else []
        qmp = ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"] if self.qmp else []
        return qemu_command(
            name=self.name, mac=self.mac, tap=self.tap or "tap?", serial_path=self.serial_path,
            firmware=self.firmware, nic=self.nic, memory_mb=self.memory_mb, accel=self.accel,
            vars_path=vars_path, extra=tpm + qmp + self.extra, option_rom=self.option_rom,
        )

    def _start_swtpm(self) -> None:
        """swtpm for this VM (manufactured once with an EK and its certificate), on a unix socket
        QEMU connects to; it ends when QEMU closes the connection (--terminate)."""
        d = self.tpm_dir
        if not (d / "tpm2-00.permall").exists():
            d.mkdir(parents=True, exist_ok=True)
            subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", str(d), "--createek", "--create-ek-cert", "--overwrite"],
                           check=True, capture_output=True, timeout=120)
        sock = d / "swtpm.sock"
        sock.unlink(missing_ok=True)
        self.swtpm = subprocess.Popen(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={d}", "--ctrl",
                                       f"type=unixio,path={sock}", "--terminate"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or self.swtpm.poll() is not None:
                raise RuntimeError(f"swtpm for {self.name} did not start")
            time.sleep(0.05)

    def start(self) -> "VM":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tap is None:
            self.tap = self.lab.add_tap()
        if self.firmware != "bios":
            shutil.copyfile(OVMF_VARS_SB if self.firmware == "uefi-sb" else OVMF_VARS, self.workdir / f"{self.name}.OVMF_VARS.fd")
        self.serial_path.unlink(missing_ok=True)
        if self.tpm:
            self._start_swtpm()
        log = open(self.qemu_log, "ab")
        try:
            self.proc = self.lab.popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        self.started_at = time.monotonic()
        return self

    def send_keys(self, data: bytes | str, pause: float = 0.3) -> None:
        """Type on the serial console (e.g. b"\\x1b[B" arrow down, b"\\r" enter), one key at a time."""
        import socket

        raw = data.encode() if isinstance(data, str) else data
        keys = re.findall(rb"\x1b\[[A-Z]|.", raw, re.S)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(f"{self.serial_path}.sock")
            for k in keys:
                s.sendall(k)
                time.sleep(pause)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def dump_memory(self, path: Path, timeout: float = 300.0) -> Path:
        """Write the running guest's whole RAM to `path` (QMP dump-guest-memory, an ELF core): a test
        can then look for bytes anywhere in the machine's memory. Needs `qmp=True`."""
        import json
        import socket

        if not self.qmp or not self.alive():
            raise RuntimeError(f"{self.name}: dump_memory needs a running VM started with qmp=True")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.qmp_path))
            f = s.makefile("rwb")

            def call(cmd: str, args: dict | None = None):
                f.write(json.dumps({"execute": cmd, **({"arguments": args} if args else {})}).encode() + b"\n")
                f.flush()
                for _ in range(1000):  # events (e.g. DUMP_COMPLETED) may come before the answer
                    line = f.readline()
                    if not line:
                        raise RuntimeError(f"{self.name}: QMP closed during {cmd}")
                    msg = json.loads(line)
                    if "error" in msg:
                        raise RuntimeError(f"{self.name}: QMP {cmd}: {msg['error'].get('desc')}")
                    if "return" in msg:
                        return msg["return"]
                raise RuntimeError(f"{self.name}: QMP {cmd}: no answer")

            f.readline()  # the greeting
            call("qmp_capabilities")
            call("dump-guest-memory", {"paging": False, "protocol": f"file:{Path(path).resolve()}"})
        return Path(path)

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> re.Match:
        return self.console.wait_for(pattern, timeout, since=since, alive=self.alive)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc, timeout=5)
        if self.swtpm is not None:
            if self.swtpm.poll() is None:
                self.swtpm.terminate()
                try:
                    self.swtpm.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.swtpm.kill()
                    self.swtpm.wait()
            self.swtpm = None

    def restart(self) -> "VM":
        """Power-cycle on the same tap and MAC (a "next boot")."""
        self.stop()
        return self.start()

    def __enter__(self) -> "VM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
