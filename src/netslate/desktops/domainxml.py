"""libvirt domain XML for a desktop, built with ElementTree (never by pasting strings). Pure."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

NS = "https://netslate.dev/xmlns/desktop/1"


@dataclass
class DomainSpec:
    name: str
    uuid: str
    vcpus: int
    memory_mib: int
    disk_path: str | None  # None: diskless (boots from the network)
    mac: str
    domain_type: str = "qemu"  # "qemu" = TCG, "kvm" when the host has acceleration
    display: str = "spice"  # spice (plus VNC out of band) | vnc (VNC only)
    video: str = "qxl"  # qxl | virtio
    usb_redirect: int = 0
    smartcard: bool = False
    network: str = "none"  # bridge:NAME | network:NAME | user | none
    listen: str = "127.0.0.1"
    spice_password: str = ""
    vnc_password: str = ""
    password_valid_to: dt.datetime | None = None  # UTC; tickets are set later via libvirt
    kernel: str | None = None  # direct kernel boot (tiny test guests, images without a bootloader)
    initrd: str | None = None
    cmdline: str | None = None
    serial_log: str | None = None
    uefi_loader: str | None = None
    boot_network: bool = False  # PXE via the NIC's iPXE option ROM (diskless desktops)
    nic_model: str = "virtio"  # virtio | e1000 (both carry QEMU's iPXE ROM)
    metadata: dict[str, str] = field(default_factory=dict)
    # SMBIOS type 11 OEM strings, e.g. the one-time enrollment token netslate-enroll:nse_... (issue 13 §3):
    # only the guest reads them (/sys/firmware/dmi/entries/11-*)
    oem_strings: list[str] = field(default_factory=list)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {("type" if k == "type_" else k): str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def valid_to(when: dt.datetime) -> str:
    """libvirt's passwdValidTo format: UTC without a zone suffix."""
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") if when.tzinfo else when.strftime("%Y-%m-%dT%H:%M:%S")


def graphics_element(kind: str, listen: str, password: str, password_valid_to: dt.datetime | None, port: int | None = None) -> ET.Element:
    """One <graphics> element; also used alone with virDomainUpdateDeviceFlags to set a ticket."""
    attrs = {"type": kind, "autoport": "yes" if port is None else "no", "passwd": password}
    if port is not None:
        attrs["port"] = str(port)
    if password_valid_to is not None:
        attrs["passwdValidTo"] = valid_to(password_valid_to)
    g = ET.Element("graphics", attrs)
    ET.SubElement(g, "listen", {"type": "address", "address": listen})
    if kind == "spice":
        # a wrong password is a refused connection, never a fallback to no auth
        ET.SubElement(g, "image", {"compression": "auto_glz"})
    return g


def build(spec: DomainSpec) -> str:
    if spec.domain_type not in ("qemu", "kvm"):
        raise ValueError(f"domain type {spec.domain_type!r}")
    if spec.display not in ("spice", "vnc"):
        raise ValueError(f"display {spec.display!r}")
    if spec.video not in ("qxl", "virtio"):
        raise ValueError(f"video {spec.video!r}")
    dom = ET.Element("domain", {"type": spec.domain_type})
    _sub(dom, "name", spec.name)
    _sub(dom, "uuid", spec.uuid)
    if spec.metadata:
        ET.register_namespace("netslate", NS)
        md = _sub(dom, "metadata")
        ET.SubElement(md, f"{{{NS}}}desktop", {k: str(v) for k, v in sorted(spec.metadata.items())})
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    if spec.oem_strings:
        oem = _sub(_sub(dom, "sysinfo", type_="smbios"), "oemStrings")
        for entry in spec.oem_strings:
            _sub(oem, "entry", entry)
    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="q35")
    if spec.oem_strings:
        _sub(os_, "smbios", mode="sysinfo")
    if spec.uefi_loader:
        _sub(os_, "loader", spec.uefi_loader, readonly="yes", type_="pflash")
    if spec.kernel:
        _sub(os_, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_, "initrd", spec.initrd)
        if spec.cmdline:
            _sub(os_, "cmdline", spec.cmdline)
    elif spec.boot_network:
        _sub(os_, "boot", dev="network")
    else:
        _sub(os_, "boot", dev="hd")
    feats = _sub(dom, "features")
    _sub(feats, "acpi")
    _sub(feats, "apic")
    if spec.domain_type == "kvm":
        _sub(dom, "cpu", mode="host-passthrough")  # TCG keeps QEMU's default CPU model
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    dev = _sub(dom, "devices")

    if spec.disk_path:
        disk = _sub(dev, "disk", type_="file", device="disk")
        _sub(disk, "driver", name="qemu", type_="qcow2", cache="none", discard="unmap")
        _sub(disk, "source", file=spec.disk_path)
        _sub(disk, "target", dev="vda", bus="virtio")
    if spec.nic_model not in ("virtio", "e1000"):
        raise ValueError(f"nic model {spec.nic_model!r}")
    if spec.boot_network and spec.network in ("none", "user"):
        raise ValueError("a network boot needs a bridge or a libvirt network")

    if spec.network != "none":
        kind, _, value = spec.network.partition(":")
        if kind == "bridge":
            iface = _sub(dev, "interface", type_="bridge")
            _sub(iface, "source", bridge=value)
        elif kind == "network":
            iface = _sub(dev, "interface", type_="network")
            _sub(iface, "source", network=value)
        elif kind == "user":
            iface = _sub(dev, "interface", type_="user")
        else:
            raise ValueError(f"network {spec.network!r}")
        _sub(iface, "mac", address=spec.mac)
        _sub(iface, "model", type_=spec.nic_model)

    # USB: an xHCI controller; with SPICE, N spicevmc redirection channels
    _sub(dev, "controller", type_="usb", model="qemu-xhci", ports="15")
    _sub(dev, "input", type_="tablet", bus="usb")
    if spec.display == "spice":
        for _ in range(spec.usb_redirect):
            _sub(dev, "redirdev", bus="usb", type_="spicevmc")
        if spec.smartcard:
            _sub(dev, "smartcard", mode="passthrough", type_="spicevmc")
        ch = _sub(dev, "channel", type_="spicevmc")
        _sub(ch, "target", type_="virtio", name="com.redhat.spice.0")
        dev.append(graphics_element("spice", spec.listen, spec.spice_password, spec.password_valid_to))
    # VNC is always there: the out-of-band console for when the guest OS does not come up
    dev.append(graphics_element("vnc", spec.listen, spec.vnc_password, spec.password_valid_to))

    video = _sub(dev, "video")
    if spec.video == "qxl":
        _sub(video, "model", type_="qxl", ram="65536", vram="65536", vgamem="16384", heads="1")
    else:
        _sub(video, "model", type_="virtio", heads="1")

    serial = _sub(dev, "serial", type_="pty")
    if spec.serial_log:
        _sub(serial, "log", file=spec.serial_log, append="off")
    _sub(serial, "target", port="0")
    con = _sub(dev, "console", type_="pty")
    _sub(con, "target", type_="serial", port="0")
    _sub(dev, "memballoon", model="virtio")
    return ET.tostring(dom, encoding="unicode")


def parse_metadata(xml: str) -> dict[str, str]:
    """The netslate attributes of a domain's metadata (empty when the domain is not ours)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    el = root.find(f"metadata/{{{NS}}}desktop")
    return dict(el.attrib) if el is not None else {}


def graphics_ports(xml: str) -> dict[str, int]:
    """Live ports libvirt chose ({'spice': 5901, 'vnc': 5900}); -1 until the domain runs."""
    root = ET.fromstring(xml)
    out = {}
    for g in root.findall("devices/graphics"):
        try:
            out[g.get("type")] = int(g.get("port", "-1"))
        except ValueError:
            out[g.get("type")] = -1
    return out


def disk_source(xml: str) -> str | None:
    root = ET.fromstring(xml)
    src = root.find("devices/disk/source")
    return src.get("file") if src is not None else None
