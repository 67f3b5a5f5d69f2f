"""The TFTP root's table (bootfiles.ROWS), the loop-free BIOS loader it writes, and `netslate boot files`."""

import hashlib

import pytest

from netslate.boot import bootfiles, ipxe, tftp


def test_bootfiles_loader_script_server_order():
    s = bootfiles.loader_script("http://10.9.8.7:8080")
    lines = s.splitlines()
    # built-in first, then option 66, then next-server: later lines win in iPXE
    i_baked = lines.index("set ns_host 10.9.8.7")
    i_66 = lines.index("isset ${66:string} && set ns_host ${66:uristring} ||")
    i_ns = lines.index("isset ${next-server} && set ns_host ${next-server} ||")
    assert i_baked < i_66 < i_ns
    assert "chain --autofree --replace http://${ns_host}:8080/boot.ipxe ||" in lines
    # it chains a script over HTTP only: no TFTP, no iPXE binary, so no loop
    assert not any(x in s for x in ("tftp://", ".kpxe", ".efi", ".lkrn", "autoboot"))
    assert s.count("goto ns_chain") == 1 and "reboot" in s  # bounded retries, then reboot
    assert "clear ns_host" in bootfiles.loader_script(None) and ":80/boot.ipxe" in bootfiles.loader_script(None)
    assert ":443/boot.ipxe" in bootfiles.loader_script("https://boot.example.org")
    for bad in ("http://10.0.0.1:8080/x", "http://a b", "http://x\n#"):
        with pytest.raises(ipxe.UnsafeValue):
            bootfiles.loader_script(bad)


def test_bootfiles_site_loader_tries_servers_in_order():
    """A site's own first stage (docs/sites.md): the branch server, then central, each round; bounded."""
    s = bootfiles.loader_script(None, servers=["http://10.78.1.1:8080", "http://10.77.0.1:8080/"])
    lines = s.splitlines()
    b = lines.index("chain --autofree --replace http://10.78.1.1:8080/boot.ipxe || echo netslate: boot server "
                    "http://10.78.1.1:8080 did not answer")
    c = lines.index("chain --autofree --replace http://10.77.0.1:8080/boot.ipxe || echo netslate: boot server "
                    "http://10.77.0.1:8080 did not answer")
    assert b < c and "iseq ${ns_try} 6 && goto ns_giveup ||" in lines and lines.count("goto ns_round") == 1
    assert "next-server" not in s and not any(x in s for x in ("tftp://", ".kpxe", ".efi", ".lkrn", "autoboot"))
    for bad in (["http://10.0.0.1:8080/x"], ["http://a b"]):
        with pytest.raises(ipxe.UnsafeValue):
            bootfiles.loader_script(None, servers=bad)


def test_bootfiles_install_and_listing(tmp_path):
    root = tmp_path / "tftp"
    written = tftp.install_binaries(root, "http://10.9.8.7:8080/boot.ipxe")
    assert "ipxe-bios/lpxelinux.0" in written and "ipxe-bios/netslate.ipxe" in written
    assert "set ns_host 10.9.8.7" in (root / "ipxe-bios" / "netslate.ipxe").read_text()
    cfg = (root / "ipxe-bios" / "pxelinux.cfg" / "default").read_text()
    assert "KERNEL ipxe.lkrn" in cfg and "INITRD netslate.ipxe" in cfg and "TIMEOUT 0" in cfg
    assert (root / "ipxe-bios" / "ipxe.lkrn").read_bytes() == bootfiles.IPXE_DIR.joinpath("ipxe.lkrn").read_bytes()
    assert tftp.install_binaries(root, "http://10.9.8.7:8080/boot.ipxe") == []  # unchanged: nothing written
    (root / "pxelinux.cfg").mkdir()
    (root / "pxelinux.cfg" / "01-52-54-00-aa-00-01").write_text("# netslate: generated\n")
    d = tftp.listing(root)
    by = {f["path"]: f for f in d["files"]}
    assert set(by) >= {r.path for r in bootfiles.ROWS} | {r.path for r in bootfiles.PATTERNS}
    lk = by["ipxe-bios/lpxelinux.0"]
    assert lk["present"] and lk["option67"] and not lk["loops_with_plain_dhcp"] and lk["firmware"] == "bios"
    assert lk["sha256"] == hashlib.sha256((root / "ipxe-bios" / "lpxelinux.0").read_bytes()).hexdigest()
    assert by["undionly.kpxe"]["loops_with_plain_dhcp"] and by["snponly.efi"]["firmware"] == "uefi"
    assert not by["pxelinux.cfg/default"]["present"]  # written by the boot engine, not install_binaries
    assert d["per_machine"] == ["pxelinux.cfg/01-52-54-00-aa-00-01"]


def test_bootfiles_cli(cli, data_dir):
    tftp.install_binaries(data_dir / "tftp", "http://10.9.8.7:8080/boot.ipxe")
    d = cli("boot", "files", "--json").json()
    assert d["root"] == str(data_dir / "tftp")
    by = {f["path"]: f for f in d["files"]}
    assert by["ipxe-bios/netslate.ipxe"]["present"] and by["ipxe-bios/netslate.ipxe"]["package"] == "netslate"
    r = cli("boot", "files")
    assert r.code == 0 and "ipxe-bios/lpxelinux.0  [bios, pxelinux, ok]  option 67" in r.stdout


def test_bootfiles_boot_path_from_tftp_log():
    mac = "52:54:00:aa:00:01"
    sent = [("undionly.kpxe", "10.0.0.9"),  # someone else
            ("lpxelinux.0", "10.0.0.5"), ("ldlinux.c32", "10.0.0.5"), ("pxelinux.cfg/01-52-54-00-aa-00-01", "10.0.0.5"),
            ("snponly.efi", "10.0.0.7")]
    mine = bootfiles.machine_files(sent, [mac], None, set())
    assert mine == sent[1:4]  # tied by the file named after its MAC, then by address
    assert bootfiles.boot_path(mine, None)["path"] == "pxelinux"
    # a boot script request ties the address: the loader, then UEFI iPXE
    assert bootfiles.boot_path(bootfiles.machine_files(sent + [("ipxe-bios/lpxelinux.0", "10.0.0.6")], [mac], None,
                                                       {"10.0.0.6"}), {"at": "x"})["path"] == "ipxe-bios"
    assert bootfiles.boot_path(bootfiles.machine_files(sent, [mac], None, {"10.0.0.7"}), {"at": "x"})["label"] == "iPXE UEFI"
    # the Secure Boot chain: shim (sent twice by OVMF's PXE) then GRUB is one boot that started at shim
    sb = [("shimx64.efi", "10.0.0.8"), ("shimx64.efi", "10.0.0.8"), ("grubx64.efi", "10.0.0.8"),
          ("grub/grub.cfg-01-52-54-00-aa-00-01", "10.0.0.8")]
    got = bootfiles.boot_path(bootfiles.machine_files(sb, [mac], None, set()), None)
    assert (got["path"], got["first_file"]) == ("grub", "shimx64.efi")
    assert bootfiles.boot_path([("grubx64.efi", "10.0.0.8")], None)["first_file"] == "grubx64.efi"  # named by DHCP itself
    # only a boot script request, no TFTP: the NIC's own iPXE; nothing at all: none seen
    assert bootfiles.boot_path([], {"at": "x"})["path"] == "ipxe-rom"
    assert bootfiles.boot_path([], None) == {"path": None, "label": "none seen", "first_file": None, "tftp_files": []}


def test_bootfiles_sent_files_parses_dnsmasq_log(tmp_path):
    root = tmp_path / "tftp"
    root.mkdir()
    log = tmp_path / "dnsmasq.log"
    log.write_text(f"dnsmasq-dhcp: something\ndnsmasq-tftp[12]: sent {root.resolve()}/ipxe-bios/lpxelinux.0 to 10.0.0.5\n"
                   f"dnsmasq-tftp: sent {root.resolve()}/pxelinux.cfg/01-52-54-00-aa-00-01 to 10.0.0.5\n"
                   f"dnsmasq-tftp[12]: file {root.resolve()}/x not found\n")
    assert tftp.sent_files(log, root) == [("ipxe-bios/lpxelinux.0", "10.0.0.5"), ("pxelinux.cfg/01-52-54-00-aa-00-01", "10.0.0.5")]
    assert tftp.sent_files(tmp_path / "none.log", root) == []
