"""A PXE-like DHCP client for tests: send one DHCPDISCOVER (option 93 arch, user class) and report
the offers as JSON. Cheaper than a VM for checking which boot file each architecture gets.

Run inside a lab namespace: `ip netns exec NS python -m netslate.vmlab.dhcpprobe --iface eth0 ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import struct
import sys
import time

MAGIC = b"\x63\x82\x53\x63"


def build_discover(mac: str, xid: int, arch: int | None, user_class: str | None, uuid: bytes | None = None,
                   msg_type: int = 1, ciaddr: str = "0.0.0.0", pxe43: bytes | None = None) -> bytes:
    hw = bytes.fromhex(mac.replace(":", ""))
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, socket.inet_aton(ciaddr), b"\0" * 4, b"\0" * 4,
                       b"\0" * 4, hw + b"\0" * 10, b"\0" * 64, b"\0" * 128)
    opts = bytearray(MAGIC)
    opts += bytes([53, 1, msg_type])
    if pxe43 is not None:
        opts += bytes([43, len(pxe43)]) + pxe43
    if arch is not None:
        opts += bytes([93, 2]) + struct.pack("!H", arch)
        opts += bytes([94, 3, 1, 2, 1])
        vc = f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()
        opts += bytes([60, len(vc)]) + vc
        u = uuid or secrets.token_bytes(16)
        opts += bytes([97, 17, 0]) + u
    if user_class:
        uc = user_class.encode()
        opts += bytes([77, len(uc)]) + uc
    opts += bytes([55, 6, 1, 3, 43, 60, 66, 67])
    opts += bytes([255])
    return head + bytes(opts)


def _menu_types(o43: bytes) -> list[int]:
    """Boot server types from PXE option 43 sub-option 9 (boot menu)."""
    i, types = 0, []
    while i + 1 < len(o43):
        code, ln = o43[i], o43[i + 1]
        if code == 255:
            break
        body = o43[i + 2:i + 2 + ln]
        if code == 9:
            j = 0
            while j + 3 <= len(body):
                types.append(struct.unpack("!H", body[j:j + 2])[0])
                j += 3 + body[j + 2]
        i += 2 + ln
    return types


def parse(packet: bytes) -> dict | None:
    if len(packet) < 240 or packet[236:240] != MAGIC:
        return None
    op, _htype, _hlen, _hops, xid = struct.unpack("!BBBBI", packet[:8])
    yiaddr = socket.inet_ntoa(packet[16:20])
    siaddr = socket.inet_ntoa(packet[20:24])
    sname = packet[44:108].split(b"\0")[0].decode("latin-1")
    file_ = packet[108:236].split(b"\0")[0].decode("latin-1")
    opts: dict[int, bytes] = {}
    i = 240
    while i < len(packet):
        code = packet[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        ln = packet[i + 1]
        opts[code] = opts.get(code, b"") + packet[i + 2:i + 2 + ln]
        i += 2 + ln
    out = {
        "op": op, "xid": xid, "yiaddr": yiaddr, "siaddr": siaddr, "sname": sname, "file": file_,
        "type": opts.get(53, b"\0")[0],
        "server_id": socket.inet_ntoa(opts[54]) if len(opts.get(54, b"")) == 4 else None,
        "bootfile": opts[67].split(b"\0")[0].decode("latin-1") if 67 in opts else None,
        "tftp_server": opts[66].decode("latin-1") if 66 in opts else None,
        "vendor_class": opts[60].decode("latin-1") if 60 in opts else None,
        "has_pxe_options": 43 in opts,
        "pxe_menu_types": _menu_types(opts.get(43, b"")),
    }
    return out


def probe(iface: str, mac: str, arch: int | None, user_class: str | None, timeout: float, pxe_request: bool = True,
          want: int = 0) -> list[dict]:
    """Collect offers for `timeout` seconds, or until `want` offers (0: wait the whole timeout)."""
    xid = secrets.randbits(32)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    s.bind(("0.0.0.0", 68))
    s.sendto(build_discover(mac, xid, arch, user_class), ("255.255.255.255", 67))
    offers = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, addr = s.recvfrom(4096)
        except socket.timeout:
            break
        p = parse(data)
        if p and p["op"] == 2 and p["xid"] == xid:
            p["from"] = addr[0]
            offers.append(p)
            if want and len(offers) >= want:
                break
    s.close()
    if pxe_request:
        # Proxy offers (no address) name no file: ask the proxy on port 4011, as PXE firmware does.
        for p in offers:
            if p["yiaddr"] == "0.0.0.0" and p["server_id"] and not (p["file"] or p["bootfile"]):
                p["pxe_ack"] = _pxe_request(iface, mac, arch, user_class, p, timeout)
    return offers


def _iface_ipv4(sock: socket.socket, iface: str) -> str:
    import fcntl

    req = struct.pack("256s", iface.encode()[:15])
    return socket.inet_ntoa(fcntl.ioctl(sock.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR


def _pxe_request(iface: str, mac: str, arch: int | None, user_class: str | None, offer: dict, timeout: float) -> dict | None:
    xid = secrets.randbits(32)
    item = None
    if offer["pxe_menu_types"]:
        item = bytes([71, 4]) + struct.pack("!HH", offer["pxe_menu_types"][0], 0) + b"\xff"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    s.bind(("0.0.0.0", 68))
    ciaddr = _iface_ipv4(s, iface)  # PXE firmware asks port 4011 from the address it already has
    s.sendto(build_discover(mac, xid, arch, user_class, msg_type=3, ciaddr=ciaddr, pxe43=item), (offer["server_id"], 4011))
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            s.settimeout(left)
            try:
                data, addr = s.recvfrom(4096)
            except socket.timeout:
                return None
            p = parse(data)
            if p and p["op"] == 2 and p["xid"] == xid:
                p["from"] = addr[0]
                return p
    finally:
        s.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--mac", required=True)
    ap.add_argument("--arch", type=int, default=None)
    ap.add_argument("--user-class", default=None)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--want", type=int, default=0)
    a = ap.parse_args(argv)
    json.dump(probe(a.iface, a.mac.lower(), a.arch, a.user_class, a.timeout, want=a.want), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    os._exit(main())
