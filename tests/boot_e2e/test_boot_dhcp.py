"""dnsmasq config renderer (pure) and the real dnsmasq it drives, probed by a PXE-like DHCP client
in a namespace the test builds. No VMs here: see test_boot_vms.py for real firmware."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netslate.boot import dnsmasq_config as D
from netslate.boot.dnsmasq_supervisor import DnsmasqSupervisor
from netslate.boot.serve_options import serve_options
from netslate.boot import tftp
from netslate.vmlab import LabNetwork

from nstest import run_cli


def _settings(mode, **kw):
    base = dict(mode=mode, interface="br0", server_ip="10.9.0.1", boot_url="http://10.9.0.1:8080/boot.ipxe",
                tftp_root="/srv/tftp")
    base.update(kw)
    return D.DhcpSettings(**base)


PATHS = D.Paths("/d/dnsmasq.conf", "/d/reservations", "/d/leases", "/d/pid")


# ----------------------------------------------------------------------------- pure renderer


def test_boot_dhcp_render_full():
    text = D.render_config(_settings("full", dhcp_range="10.9.0.100,10.9.0.150,255.255.255.0"), PATHS)
    lines = text.splitlines()
    assert "port=0" in lines and "interface=br0" in lines and "enable-tftp" in lines
    assert "dhcp-range=10.9.0.100,10.9.0.150,255.255.255.0,1h" in lines
    assert "dhcp-hostsfile=/d/reservations" in lines
    assert "dhcp-match=set:efi64,option:client-arch,7" in lines
    assert "dhcp-match=set:efi64,option:client-arch,9" in lines
    assert "dhcp-userclass=set:ipxe,iPXE" in lines
    assert "dhcp-boot=tag:ipxe,http://10.9.0.1:8080/boot.ipxe" in lines
    assert "dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe,,10.9.0.1" in lines
    assert "dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi,,10.9.0.1" in lines
    assert not any(line.startswith("pxe-service") for line in lines)


def test_boot_dhcp_render_proxy_and_off():
    proxy = D.render_config(_settings("proxy", efi_binary="ipxe.efi"), PATHS, prefixlen=24).splitlines()
    assert "dhcp-range=10.9.0.0,proxy" in proxy
    assert 'pxe-service=tag:!ipxe,x86PC,"netslate (BIOS)",undionly.kpxe,10.9.0.1' in proxy
    assert 'pxe-service=tag:!ipxe,X86-64_EFI,"netslate (UEFI)",ipxe.efi,10.9.0.1' in proxy
    assert 'pxe-service=tag:!ipxe,BC_EFI,"netslate (UEFI)",ipxe.efi,10.9.0.1' in proxy
    assert not any(line.startswith("dhcp-range") and "proxy" not in line for line in proxy)
    off = D.render_config(_settings("off"), PATHS).splitlines()
    assert "enable-tftp" in off and not any(line.startswith(("dhcp-", "pxe-")) for line in off)


@pytest.mark.parametrize("field,value", [
    ("interface", "br0\ndhcp-range=1.2.3.4,proxy"),
    ("interface", "a" * 16),
    ("server_ip", "10.9.0.1\nfoo"),
    ("boot_url", "http://10.9.0.1/boot.ipxe\nconf-file=/etc/shadow"),
    ("boot_url", "http://10.9.0.1/a,b"),
    ("tftp_root", "/srv/tftp\nenable-ra"),
    ("tftp_root", "relative/dir"),
    ("dhcp_range", "10.9.0.150,10.9.0.100"),
    ("dhcp_range", "10.9.0.100"),
    ("mode", "both"),
    ("lease_time", "1h\nx"),
])
def test_boot_dhcp_render_refuses_injection(field, value):
    kw = {"dhcp_range": "10.9.0.100,10.9.0.150"}
    kw[field] = value
    with pytest.raises(D.DhcpConfigError):
        D.render_config(_settings("full", **{k: v for k, v in kw.items() if k != "mode"}) if field != "mode"
                        else _settings(value, dhcp_range="10.9.0.100,10.9.0.150"), PATHS)


def test_boot_dhcp_hosts_file():
    text = D.render_hosts([D.Reservation("52:54:00:AA:00:02", "10.9.0.12", "lab-2"),
                           D.Reservation("52-54-00-aa-00-01", "10.9.0.11")])
    assert text.splitlines()[1:] == ["52:54:00:aa:00:01,10.9.0.11", "52:54:00:aa:00:02,10.9.0.12,lab-2"]
    for bad in (D.Reservation("52:54:00:aa:00:01", "10.9.0.11", "x,y"),
                D.Reservation("52:54:00:aa:00:01", "10.9.0.11", "a\nb"),
                D.Reservation("52:54:00:aa:00:0", "10.9.0.11"),
                D.Reservation("52:54:00:aa:00:01", "10.9.0.256")):
        with pytest.raises(D.DhcpConfigError):
            D.render_hosts([bad])
    # one machine's two NICs share its address on one line; two machines may not share one
    two_nics = D.render_hosts([D.Reservation("52:54:00:aa:00:02", "10.9.0.11", "n1", owner="m1"),
                               D.Reservation("52:54:00:aa:00:01", "10.9.0.11", "n1", owner="m1")])
    assert two_nics.splitlines()[1:] == ["52:54:00:aa:00:01,52:54:00:aa:00:02,10.9.0.11,n1"]
    with pytest.raises(D.DhcpConfigError, match="two reservations"):
        D.render_hosts([D.Reservation("52:54:00:aa:00:01", "10.9.0.11"), D.Reservation("52:54:00:aa:00:01", "10.9.0.12")])
    with pytest.raises(D.DhcpConfigError, match="reserved twice"):
        D.render_hosts([D.Reservation("52:54:00:aa:00:01", "10.9.0.11"), D.Reservation("52:54:00:aa:00:02", "10.9.0.11")])


# ----------------------------------------------------------------------------- real dnsmasq


def _probe(host, mac, arch=None, user_class=None, timeout=8, want=1):
    argv = [sys.executable, "-m", "netslate.vmlab.dhcpprobe", "--iface", host.interface, "--mac", mac,
            "--timeout", str(timeout), "--want", str(want)]
    if arch is not None:
        argv += ["--arch", str(arch)]
    if user_class:
        argv += ["--user-class", user_class]
    return json.loads(host.run(argv, timeout=30).stdout)


def _boot_file(offer):
    ack = offer.get("pxe_ack") or {}
    return offer["file"] or offer["bootfile"] or ack.get("file") or ack.get("bootfile") or ""


@pytest.fixture(scope="module")
def lab():
    with LabNetwork() as net:
        yield net


def _supervisor(lab, tmp_path, mode, reservations, **kw):
    root = tmp_path / "tftp"
    tftp.install_binaries(root)
    s = D.DhcpSettings(mode=mode, interface=lab.bridge, server_ip=lab.address,
                       boot_url=f"http://{lab.address}:8080/boot.ipxe", tftp_root=str(root), **kw)
    sup = DnsmasqSupervisor(s, tmp_path / "dnsmasq", lab.prefixlen, reservations=lambda: list(reservations),
                              watch_interval=0, command_prefix=lab.argv([]))
    return sup


def _wait_up(sup, lab, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = sup.health()
        if h["ok"] and "started" in "".join(sup.log_tail(50)):
            return h
        time.sleep(0.1)
    raise AssertionError(f"dnsmasq not up: {sup.health()} {sup.log_tail()}")


def test_boot_dhcp_full_mode_real_dnsmasq(lab, tmp_path):
    reservations = [D.Reservation("52:54:00:00:10:09", lab.host_ip(9), "fixed-9")]
    sup = _supervisor(lab, tmp_path, "full", reservations, dhcp_range=f"{lab.host_ip(100)},{lab.host_ip(150)},255.255.255.0")
    client = lab.add_host()
    sup.start()
    try:
        _wait_up(sup, lab)
        # option 93 picks the binary; iPXE's user class gets the HTTP chain script
        cases = [("52:54:00:00:10:01", 0, None, "undionly.kpxe"), ("52:54:00:00:10:02", 7, None, "snponly.efi"),
                 ("52:54:00:00:10:03", 9, None, "snponly.efi"),
                 ("52:54:00:00:10:04", 0, "iPXE", f"http://{lab.address}:8080/boot.ipxe"),
                 ("52:54:00:00:10:05", 7, "iPXE", f"http://{lab.address}:8080/boot.ipxe"),
                 ("52:54:00:00:10:06", 11, None, "")]  # arm64: not served, address only
        for mac, arch, uc, want in cases:
            offers = _probe(client, mac, arch, uc)
            assert len(offers) == 1, (mac, offers)
            assert offers[0]["server_id"] == lab.address
            assert _boot_file(offers[0]) == want, (mac, arch, uc, offers[0])
            assert lab.network.overlaps(__import__("ipaddress").ip_network(offers[0]["yiaddr"] + "/32"))
        # a reservation
        offers = _probe(client, "52:54:00:00:10:09", 0)
        assert offers[0]["yiaddr"] == lab.host_ip(9)
        # reservations change: SIGHUP, not a restart (same pid)
        pid = sup.health()["pid"]
        reservations.append(D.Reservation("52:54:00:00:10:0a", lab.host_ip(10), "fixed-10"))
        assert sup.reload() == "reloaded"
        assert sup.reload() == "unchanged"
        time.sleep(0.5)
        assert _probe(client, "52:54:00:00:10:0a", 7)[0]["yiaddr"] == lab.host_ip(10)
        assert sup.health()["pid"] == pid
        # a bad reservation keeps the last good file and says so
        reservations.append(D.Reservation("52:54:00:00:10:0b", lab.host_ip(10)))
        assert sup.reload() == "unchanged"
        assert "reserved twice" in sup.health()["error"]
        assert "52:54:00:00:10:0a" in Path(sup.paths.hosts).read_text()
        reservations.pop()
        # TFTP serves the exact Debian binaries
        for name in ("undionly.kpxe", "snponly.efi", "ipxe.efi", "lpxelinux.0", "ldlinux.c32"):
            out = tmp_path / f"got-{name}"
            client.run(["curl", "-s", "-S", "--max-time", "20", "-o", str(out), f"tftp://{lab.address}/{name}"], timeout=30)
            assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(tftp.SOURCES[name].read_bytes()).digest()
        # no path traversal out of the TFTP root
        bad = client.run(["curl", "-s", "--max-time", "10", "-o", str(tmp_path / "x"), f"tftp://{lab.address}/../dnsmasq/dnsmasq.conf"],
                         timeout=20, check=False)
        assert bad.returncode != 0 or not (tmp_path / "x").exists() or (tmp_path / "x").stat().st_size == 0
    finally:
        sup.stop()
    assert not sup.health()["ok"]


def test_boot_dhcp_supervisor_restarts_dead_dnsmasq(lab, tmp_path):
    sup = _supervisor(lab, tmp_path, "off", [])
    sup.start()
    try:
        first = _wait_up(sup, lab)["pid"]
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            h = sup.health()
            if h["ok"] and h["pid"] != first:
                break
            time.sleep(0.1)
        h = sup.health()
        assert h["ok"] and h["pid"] != first and h["restarts"] == 1 and h["last_exit"] == -9
        # a config change restarts at once (mode off → full needs a range)
        assert sup.reload(sup.with_settings(mode="full", dhcp_range=f"{lab.host_ip(100)},{lab.host_ip(110)}")) == "restarted"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (sup.health()["ok"] and sup.health()["pid"] != h["pid"]):
            time.sleep(0.1)
        assert sup.health()["ok"] and sup.health()["mode"] == "full" and sup.health()["restarts"] == 1
        assert "dhcp-range=" in Path(sup.paths.conf).read_text()
    finally:
        sup.stop()


def test_boot_dhcp_proxy_mode_next_to_plain_dhcp(lab, tmp_path):
    plain = lab.add_host()
    plain.popen(["dnsmasq", "--keep-in-foreground", "--port=0", "--interface=eth0", "--bind-interfaces",
                 f"--dhcp-range={lab.host_ip(50)},{lab.host_ip(60)},1h", f"--dhcp-leasefile={tmp_path}/plain.leases",
                 f"--pid-file={tmp_path}/plain.pid", "--log-facility=-"],
                stdout=open(tmp_path / "plain.log", "w"), stderr=subprocess.STDOUT)
    sup = _supervisor(lab, tmp_path, "proxy", [])
    client = lab.add_host()
    sup.start()
    try:
        _wait_up(sup, lab)
        time.sleep(0.5)
        for mac, arch, uc, want in [("52:54:00:00:20:01", 0, None, "undionly.kpxe"), ("52:54:00:00:20:02", 7, None, "snponly.efi"),
                                    ("52:54:00:00:20:03", 9, None, "snponly.efi"),
                                    ("52:54:00:00:20:04", 0, "iPXE", f"http://{lab.address}:8080/boot.ipxe"),
                                    ("52:54:00:00:20:05", 11, None, "")]:
            offers = {o["server_id"]: o for o in _probe(client, mac, arch, uc, want=2)}
            assert set(offers) == {lab.address, plain.address}, offers
            assert offers[lab.address]["yiaddr"] == "0.0.0.0"  # proxy: never an address
            assert offers[plain.address]["yiaddr"] != "0.0.0.0"
            assert _boot_file(offers[lab.address]) == want, (arch, uc, offers[lab.address])
            assert _boot_file(offers[plain.address]) == ""
        # a non-PXE client gets no answer from the proxy at all
        offers = _probe(client, "52:54:00:00:20:06", timeout=6, want=0)
        assert [o["server_id"] for o in offers] == [plain.address]
    finally:
        sup.stop()


def test_boot_dhcp_serve_option_errors(tmp_path):
    cfg = tmp_path / "server.yaml"
    cfg.write_text("boot-interface: eth0\nlisten_port: 80\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("dhcp: [full\n")
    cases = [
        ((None, "lo0", "full", None, None), "--dhcp full needs --dhcp-range"),
        ((None, "eth0", "bogus", None, None), "--dhcp must be one of"),
        ((None, "eth0\nx", None, None, None), "invalid interface name"),
        ((None, None, "full", "10.0.0.10,10.0.0.20", None), "need --boot-interface"),
        ((None, "eth0", "full", "10.0.0.20,10.0.0.10", None), "is after its end"),
        ((None, "eth0", "full", "10.0.0.10,10.0.0.20,255.0.255.0", None), "invalid netmask"),
        ((str(cfg), None, None, None, None), "unknown setting 'listen_port'"),
        ((str(bad_yaml), None, None, None, None), "not valid YAML"),
        ((str(tmp_path / "missing.yaml"), None, None, None, None), "no such file"),
    ]
    for args, msg in cases:
        with pytest.raises(D.UserError, match=re.escape(msg)):
            serve_options(*args)
    # flags win over the file; YAML's bare `off` means off
    cfg.write_text("boot_interface: eth0\ndhcp: off\n")
    assert serve_options(str(cfg), None, None, None, None)["dhcp"] == "off"
    assert serve_options(str(cfg), "br7", "full", "10.0.0.10,10.0.0.20", None)["boot_interface"] == "br7"
    # the real command: one line, exit code 2, nothing started
    data = tmp_path / "data"
    for args, msg in [(["--boot-interface", "eth0", "--dhcp", "full"], "--dhcp full needs --dhcp-range"),
                      (["--boot-interface", "nslab-nonexistent0"[:15]], "nslab-nonexiste")]:
        r = run_cli("serve", "--listen", "127.0.0.1:0", *args, data_dir=data, timeout=60)
        assert r.code == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert [line for line in r.stderr.splitlines() if line.startswith("error")] == [r.stderr.strip().splitlines()[-1]]


def test_boot_dhcp_serve_config_file_and_healthz(lab, tmp_path):
    """The real `netslate serve --config FILE` in the namespace: dnsmasq runs, /healthz reports it,
    a killed dnsmasq comes back, and stopping the server stops dnsmasq."""
    from netslate.vmlab import NetslateServer

    cfg = tmp_path / "server.yaml"
    cfg.write_text(f"boot-interface: {lab.bridge}\ndhcp: off\ntftp_root: {tmp_path / 'tftp-root'}\n")
    srv = NetslateServer(lab, tmp_path / "data", ["--config", str(cfg)], port=8091, log_path=tmp_path / "serve.log")
    with srv:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not srv.health().get("checks", {}).get("dnsmasq", {}).get("ok"):
            time.sleep(0.2)
        h = srv.health()["checks"]["dnsmasq"]
        assert h["ok"] and h["mode"] == "off" and h["interface"] == lab.bridge, h
        assert (tmp_path / "tftp-root" / "snponly.efi").exists()
        assert (tmp_path / "tftp-root" / "pxelinux.cfg" / "default").read_text().startswith("# netslate: generated")
        conf = (tmp_path / "data" / "dnsmasq" / "dnsmasq.conf").read_text()
        assert f"tftp-root={tmp_path / 'tftp-root'}" in conf and "dhcp-range" not in conf
        os.kill(h["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 20
        h2 = h
        while time.monotonic() < deadline:
            h2 = srv.health()["checks"]["dnsmasq"]
            if h2["ok"] and h2["pid"] != h["pid"]:
                break
            time.sleep(0.2)
        assert h2["ok"] and h2["pid"] != h["pid"] and h2["restarts"] == 1, h2
        pid = h2["pid"]
    assert srv.proc is None
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
