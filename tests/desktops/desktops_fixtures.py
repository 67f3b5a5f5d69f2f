"""Helpers for the desktop integration tests: a running libvirtd, a tiny guest, a ready installation."""

import os
import re
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

from netslate.context import Context
from netslate.desktops import golden, hosts, tinyguest

URI = "qemu:///system"


def ensure_libvirtd() -> None:
    """Start virtlogd and libvirtd (as the issue says: `virtlogd -d`, `libvirtd -d`) unless they run."""
    def ok() -> bool:
        return subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, timeout=30).returncode == 0

    if ok():
        return
    if subprocess.run(["pgrep", "-x", "virtlogd"], capture_output=True).returncode != 0:
        subprocess.run(["virtlogd", "-d"], check=True)
    if subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode != 0:
        subprocess.run(["libvirtd", "-d"], check=True)
    deadline = time.time() + 30
    while not ok():
        if time.time() > deadline:
            raise RuntimeError("libvirtd did not come up")
        time.sleep(0.3)


def traversable(path: Path) -> None:
    """pytest's tmp dirs are 0700; QEMU runs as libvirt-qemu and must reach the disks."""
    for p in [path, *path.parents]:
        st = p.stat()
        if not st.st_mode & 0o001:
            os.chmod(p, st.st_mode | 0o001)


def build_guest(d: Path) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    kernel = d / "vmlinuz"
    shutil.copy(tinyguest.kernel_path(), kernel)
    initrd = tinyguest.build_initramfs(d / "initrd.gz")
    v1 = tinyguest.build_golden(d / "golden-v1.qcow2", "v1")
    v2 = tinyguest.build_golden(d / "golden-v2.img", "v2", fmt="raw")
    return {"kernel": kernel, "initrd": initrd, "v1": v1, "v2": v2}


def setup_installation(data_dir: Path, guest: dict, max_starting: int = 8) -> Context:
    traversable(data_dir)
    ctx = Context(data_dir).init()
    hosts.add_host(ctx, "local", URI, "test", accel="tcg", max_starting=max_starting)
    golden.import_disk(ctx, "tiny", guest["v1"], "test", kernel=guest["kernel"], initrd=guest["initrd"],
                       cmdline=tinyguest.CMDLINE)
    return ctx


def our_domains(prefix: str) -> set[str]:
    out = subprocess.run(["virsh", "-c", URI, "list", "--name"], capture_output=True, text=True, check=True).stdout
    return {n.strip() for n in out.splitlines() if n.strip().startswith(prefix)}


def cleanup(ctx: Context) -> None:
    """Kill every domain of this installation, whatever state the test left."""
    from netslate.desktops.actuator import installation_id

    prefix = f"ns-{installation_id(ctx)}-"
    for name in our_domains(prefix):
        subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True)


def wait_serial(ctx: Context, desktop_name: str, pattern: str, timeout: float = 120.0) -> str:
    log = ctx.data_dir / "desktops" / "logs" / f"{desktop_name}.log"
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"{desktop_name}: no {pattern!r} on the serial console within {timeout}s: {text[-500:]!r}")


# ---- a tiny RFB (VNC) client: just enough to try a password ----

def _des_key(password: str) -> bytes:
    key = password.encode()[:8].ljust(8, b"\0")
    return bytes(int(f"{b:08b}"[::-1], 2) for b in key)  # VNC reverses the bits of each key byte


def vnc_auth(host: str, port: int, password: str, timeout: float = 10.0) -> bool:
    s = vnc_session(host, port, password, timeout)
    if s is None:
        return False
    s.close()
    return True


def vnc_session(host: str, port: int, password: str, timeout: float = 10.0):
    """An authenticated, initialised RFB session (socket), or None when the password is refused."""
    s = socket.create_connection((host, port), timeout=timeout)
    if not _vnc_handshake(s, password):
        s.close()
        return None
    s.sendall(b"\x01")  # ClientInit (shared): QEMU reports the client as initialised after this
    head = _read(s, 24)
    _read(s, struct.unpack(">I", head[20:24])[0])  # desktop name
    return s


def _read(s, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _vnc_handshake(s, password: str) -> bool:
    """True when the server accepts `password` with VNC authentication (security type 2)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # older cryptography
        from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

    f = s.makefile("rwb")
    version = f.read(12)
    assert version.startswith(b"RFB "), version
    f.write(b"RFB 003.008\n")
    f.flush()
    n = f.read(1)[0]
    if n == 0:
        return False
    types = f.read(n)
    if 2 not in types:
        return False
    f.write(b"\x02")
    f.flush()
    challenge = f.read(16)
    key = _des_key(password)
    enc = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    f.write(enc.update(challenge) + enc.finalize())
    f.flush()
    result = f.read(4)
    return len(result) == 4 and struct.unpack(">I", result)[0] == 0
