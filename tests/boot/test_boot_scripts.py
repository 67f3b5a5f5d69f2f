"""Pure core: iPXE and pxelinux rendering refuse anything that could alter a script; query parsing."""

import pytest

from netslate.boot import ipxe, pxelinux
from netslate.boot.request import BadBootRequest, parse_boot_query

BASE = "http://10.0.0.1:8080"
BOOT = ipxe.ImageBoot(f"{BASE}/images/desk/3/kernel", f"{BASE}/images/desk/3/initrd",
                      ("netslate.server=http://10.0.0.1:8080", "netslate.image=desk@3", "console=ttyS0"), "desk@3")


def test_boot_script_has_retry_backoff_and_fallback():
    s = ipxe.boot_script(BOOT, ["hello"], ipxe.Retry(attempts=4, delay=3), jitter_s=1)
    lines = s.splitlines()
    assert lines[0] == "#!ipxe"
    assert f"kernel {BASE}/images/desk/3/kernel initrd=initrd netslate.server=http://10.0.0.1:8080 netslate.image=desk@3 console=ttyS0 || goto ns_boot_fail" in lines
    assert f"initrd --name initrd {BASE}/images/desk/3/initrd || goto ns_boot_fail" in lines
    assert "set ns_delay:int32 4" in lines and "inc ns_delay ${ns_delay}" in lines  # doubling backoff
    assert "iseq ${ns_try} 4 && goto ns_giveup ||" in lines and "reboot" in lines

    assert "sanboot" not in s  # only cache-mode profiles fall back to the local disk


def test_boot_script_cache_profile_falls_back_to_the_local_disk():
    bios = ipxe.boot_script(BOOT, [], ipxe.Retry(attempts=2), local_fallback=True, platform="pcbios").splitlines()
    giveup = bios[bios.index(":ns_giveup"):]
    # the NETSLATE disk's extlinux first (BIOS drive 0x80), then the usual fallback (reboot and retry)
    assert giveup[2] == "sanboot --no-describe --drive 0x80 ||" and "exit 1 ||" not in giveup and "reboot" in giveup
    efi = ipxe.boot_script(BOOT, [], ipxe.Retry(attempts=2), local_fallback=True, platform="efi").splitlines()
    assert "exit 1 ||" in efi and not any(line.startswith("sanboot") for line in efi)


@pytest.mark.parametrize("bad", ["a b", "x\nshell", "${net0/mac}", "a||b", "a&&b", "#x", "a;b", "'", ""])
def test_boot_unsafe_args_refused(bad):
    with pytest.raises(ipxe.UnsafeValue):
        ipxe.boot_script(ipxe.ImageBoot(BOOT.kernel_url, None, (bad,)), [])


@pytest.mark.parametrize("bad", ["http://x/../etc", "file:///etc/passwd", "http://a b/", "http://h/k?x=1", "http://h/k\nshell"])
def test_boot_unsafe_urls_refused(bad):
    with pytest.raises(ipxe.UnsafeValue):
        ipxe.boot_script(ipxe.ImageBoot(bad, None, ()), [])


@pytest.mark.parametrize("bad", ["evil\nchain http://x", "${x}", "a|b", "a&b", "a#b"])
def test_boot_unsafe_text_refused(bad):
    with pytest.raises(ipxe.UnsafeValue):
        ipxe.wait_script(BASE, [bad], 10, [])
    with pytest.raises(ipxe.UnsafeValue):
        ipxe.boot_script(BOOT, [bad])


def test_boot_base_url_checked():
    assert ipxe.base_url("http://[fd00::1]:8080/") == "http://[fd00::1]:8080"
    for bad in ("http://h:80/x", "http://h\n:80", "ftp://h", "http://h$x", "http://u@h"):
        with pytest.raises(ipxe.UnsafeValue):
            ipxe.base_url(bad)


def test_boot_chain_script_query():
    s = ipxe.chain_script(BASE)
    assert f"chain --autofree --replace {BASE}/boot/ipxe?mac=${{net0/mac}}&uuid=${{uuid}}&serial=${{serial:uristring}}" in s
    assert "arch=${buildarch}&platform=${platform}&asset=${asset:uristring}" in s
    assert "goto ns_chain" in s and "reboot" in s


def test_boot_menu_newest_first_tag_marked():
    entries = tuple(ipxe.MenuEntry(v, ("stable",) if v == 2 else (), "2026-11-22",
                                   ipxe.ImageBoot(f"{BASE}/images/desk/{v}/kernel", None, (), f"desk@{v}")) for v in (3, 2, 1))
    s = ipxe.menu_script(ipxe.Menu("desk", entries, 2, "stable"))
    items = [line for line in s.splitlines() if line.startswith("item ns_v")]
    assert [i.split()[1] for i in items] == ["ns_v3", "ns_v2", "ns_v1"]
    assert "[stable]" in items[1] and items[1].endswith("*")
    assert "item --gap current stable: version 2" in s
    assert "choose --default ns_v2 --timeout 30000 ns_target && goto ${ns_target} || goto ns_v2" in s
    assert ":ns_v1_try" in s and "goto ns_v3_fail" in s


def test_boot_local_script():
    assert "sanboot --no-describe --drive 0x80 ||" in ipxe.local_script([], "pcbios")
    assert "sanboot" not in ipxe.local_script([], "efi") and "exit 0 ||" in ipxe.local_script([], "efi")


def test_boot_pxelinux_render():
    assert pxelinux.mac_filename("52:54:00:AB:CD:EF") == "01-52-54-00-ab-cd-ef"
    e = pxelinux.PxeEntry("netslate", "desk@3", BOOT.kernel_url, BOOT.initrd_url, BOOT.args)
    m = pxelinux.render_machine(e)
    assert "DEFAULT netslate" in m and f"  KERNEL {BOOT.kernel_url}" in m and "  APPEND netslate.server=" in m
    menu = pxelinux.render_menu([e])
    assert "UI menu.c32" in menu and "DEFAULT local" in menu and "LOCALBOOT 0" in menu
    with pytest.raises(ipxe.UnsafeValue):
        pxelinux.render_machine(pxelinux.PxeEntry("x", "t", BOOT.kernel_url, None, ("a\nAPPEND evil",)))
    with pytest.raises(ipxe.UnsafeValue):
        pxelinux.mac_filename("../../x")


def test_boot_query_ok():
    q = parse_boot_query(b"mac=52:54:00:AB:cd:01&uuid=&serial=ABC%20123&manufacturer=QEMU&product=Standard%20PC%20(i440FX%20%2B%20PIIX%2C%201996)&arch=x86_64&platform=pcbios&asset=")
    assert q["mac"] == "52:54:00:ab:cd:01" and q["uuid"] is None and q["serial"] == "ABC 123"
    assert q["product"] == "Standard PC (i440FX + PIIX, 1996)"


@pytest.mark.parametrize("raw,status", [
    (b"mac=52:54:00:00:00:01&serial=" + b"A" * 3000, 414),
    (b"mac=52:54:00:00:00:01&serial=\xff\xfe", 400),
    (b"mac=52:54:00:00:00:01&serial=%ff%fe", 400),
    (b"mac=52:54:00:00:00:01&serial=x%0Achain%20http://evil/", 400),
    (b"mac=52:54:00:00:00:01&product=%24%7Bnet0/ip%7D", 400),
    (b"mac=../../../etc/passwd", 400),
    (b"mac=52:54:00:00:00:01&arch=../../x", 400),
    (b"mac=52:54:00:00:00:01&mac=52:54:00:00:00:02", 400),
    (b"mac=52:54:00:00:00:01&file=/etc/passwd", 400),
    (b"mac=52:54:00:00:00:01&platform=sh", 400),
    (b"uuid=", 400),
    (b"mac=52:54:00:00:00:01&serial=a%7C%7Cshell", 400),
])
def test_boot_query_hostile(raw, status):
    with pytest.raises(BadBootRequest) as info:
        parse_boot_query(raw)
    assert info.value.status == status


def test_boot_advertised_urls():
    from netslate.boot.engine import advertised_urls

    opts = {"listen": ("0.0.0.0", 8081), "advertise": ["10.0.0.5", "fd00::5", "http://boot.example:80", "bad host", "10.0.0.5"]}
    assert advertised_urls(opts) == ["http://10.0.0.5:8081", "http://[fd00::5]:8081", "http://boot.example:80"]
