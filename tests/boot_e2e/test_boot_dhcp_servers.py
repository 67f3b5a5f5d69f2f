"""`--dhcp off`: the ISC dhcpd, Kea and dnsmasq snippets in docs/boot-dhcp.md, run as written next
to netslate's TFTP-only dnsmasq, answer BIOS, UEFI and iPXE clients as documented."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netslate.boot import dnsmasq_config as D
from netslate.boot.dnsmasq_supervisor import DnsmasqSupervisor
from netslate.boot import tftp
from netslate.vmlab import LabNetwork

DOC = Path(__file__).resolve().parents[2] / "docs" / "boot-dhcp.md"
SERVER = "10.0.0.1"  # the address the snippets name for the netslate server
URL = f"http://{SERVER}:8080/boot.ipxe"


def snippet(kind: str) -> str:
    m = re.search(rf"```{re.escape(kind)}\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"no ```{kind} block in {DOC}"
    return m.group(1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dhcp-off")
    with LabNetwork(subnet="10.0.0.0/24") as net:
        assert net.address == SERVER
        root = tmp / "tftp"
        tftp.install_binaries(root)
        s = D.DhcpSettings(mode="off", interface=net.bridge, server_ip=SERVER, boot_url=URL, tftp_root=str(root))
        sup = DnsmasqSupervisor(s, tmp / "dnsmasq", net.prefixlen, watch_interval=0, command_prefix=net.argv([]))
        sup.start()
        server_host = net.add_host("10.0.0.2")
        client = net.add_host("10.0.0.3")
        yield {"net": net, "sup": sup, "server": server_host, "client": client, "tmp": tmp}
        sup.stop()


def _probe(client, mac, arch=None, user_class=None):
    argv = [sys.executable, "-m", "netslate.vmlab.dhcpprobe", "--iface", client.interface, "--mac", mac,
            "--timeout", "10", "--want", "1"]
    if arch is not None:
        argv += ["--arch", str(arch)]
    if user_class:
        argv += ["--user-class", user_class]
    offers = json.loads(client.run(argv, timeout=30).stdout)
    assert len(offers) == 1, offers
    return offers[0]


def _check_answers(lab, prefix):
    client = lab["client"]
    for i, (arch, uc, want_file) in enumerate([(0, None, "undionly.kpxe"), (7, None, "snponly.efi"), (9, None, "snponly.efi"),
                                               (0, "iPXE", URL), (7, "iPXE", URL)]):
        o = _probe(client, f"52:54:00:{prefix}:00:{i:02x}", arch, uc)
        assert o["server_id"] == "10.0.0.2" and o["yiaddr"].startswith("10.0.0.1"), o
        assert (o["file"] or o["bootfile"]) == want_file, (arch, uc, o)
        if uc is None:
            assert o["siaddr"] == SERVER, o  # next-server / option 66: netslate's TFTP
    # netslate (off mode) serves the file the DHCP server named; it never answers DHCP itself
    out = lab["tmp"] / f"{prefix}-undionly.kpxe"
    client.run(["curl", "-s", "-S", "--max-time", "20", "-o", str(out), f"tftp://{SERVER}/undionly.kpxe"], timeout=30)
    assert out.read_bytes() == tftp.SOURCES["undionly.kpxe"].read_bytes()
    assert lab["sup"].health()["ok"] and lab["sup"].health()["mode"] == "off"


def _run_server(lab, argv, name):
    log = open(lab["tmp"] / f"{name}.log", "w")
    proc = lab["server"].popen(argv, stdout=log, stderr=subprocess.STDOUT)
    time.sleep(1.5)
    assert proc.poll() is None, (lab["tmp"] / f"{name}.log").read_text()
    return proc


def test_boot_dhcp_off_isc_dhcpd_snippet(lab):
    conf = lab["tmp"] / "dhcpd.conf"
    conf.write_text(snippet("isc-dhcpd"))
    leases = lab["tmp"] / "dhcpd.leases"
    leases.write_text("")
    proc = _run_server(lab, ["dhcpd", "-f", "-4", "-cf", str(conf), "-lf", str(leases), "-pf", str(lab["tmp"] / "dhcpd.pid"),
                             "eth0"], "dhcpd")
    try:
        _check_answers(lab, "a1")
    finally:
        lab["server"].stop(proc)


def test_boot_dhcp_off_kea_snippet(lab):
    cfg = json.loads(snippet("kea-json"))
    # test-only change: keep leases in memory instead of /var/lib/kea
    cfg["Dhcp4"]["lease-database"] = {"type": "memfile", "persist": False}
    conf = lab["tmp"] / "kea-dhcp4.conf"
    conf.write_text(json.dumps(cfg))
    env_dir = lab["tmp"] / "kea-run"
    env_dir.mkdir(exist_ok=True)
    argv = ["env", f"KEA_PIDFILE_DIR={env_dir}", "KEA_LOCKFILE_DIR=none",
            "kea-dhcp4", "-c", str(conf)]
    proc = _run_server(lab, argv, "kea")
    try:
        _check_answers(lab, "a2")
    finally:
        lab["server"].stop(proc)


def test_boot_dhcp_off_dnsmasq_snippet(lab):
    conf = lab["tmp"] / "site-dnsmasq.conf"
    conf.write_text(snippet("dnsmasq-conf"))
    argv = ["dnsmasq", "--keep-in-foreground", "--port=0", "--interface=eth0", "--bind-interfaces",
            "--dhcp-range=10.0.0.100,10.0.0.150,1h", f"--dhcp-leasefile={lab['tmp']}/site.leases",
            f"--pid-file={lab['tmp']}/site.pid", "--log-facility=-", f"--conf-file={conf}"]
    proc = _run_server(lab, argv, "site-dnsmasq")
    try:
        _check_answers(lab, "a3")
    finally:
        lab["server"].stop(proc)
