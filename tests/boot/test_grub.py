"""The Secure Boot path's GRUB files: rendered from the same boot decision as the iPXE script (rule,
pin, tag → version, kernel arguments), staged into the TFTP root with the artifacts they load, and
the dnsmasq lines that hand x86-64 UEFI clients the shim. VM boots: tests/boot_e2e/test_secure_boot.py."""

import hashlib

import pytest

from netslate import inventory
from netslate.boot import dnsmasq_config as dc
from netslate.boot import grub, ipxe, secureboot
from netslate.boot import store as bstore
from netslate.boot.engine import BootEngine
from netslate.context import Context

BASE = "http://10.0.0.1:8080"
MAC = "52:54:00:5b:00:01"
MAC2 = "52:54:00:5b:00:02"
UUID = "4c4c4544-0042-3510-8052-b2c04f4e4d31"


@pytest.fixture
def world(tmp_path):
    ctx = Context(tmp_path / "data").init()
    for n in (1, 2):
        k, i = tmp_path / f"k{n}", tmp_path / f"i{n}"
        k.write_bytes(b"kernel%d" % n * 1000)
        i.write_bytes(b"initrd%d" % n * 1000)
        ctx.library.import_files("img", kernel=k, initrd=i, tag="stable" if n == 1 else None, warn=lambda m: None)
    bstore.add_profile(ctx, "ram", image="img", ref="stable", args=["quiet", "e2e.x=1"], console="ttyS0")
    bstore.add_profile(ctx, "cached", image="img", ref="stable", mode="cache")
    bstore.add_profile(ctx, "pick", kind="menu", image="img", ref="stable")
    m1 = inventory.add_machine(ctx, [MAC], name="m1", uuid=UUID)["id"]
    inventory.add_machine(ctx, [MAC2], name="m2")
    bstore.add_rule(ctx, "r1", {"mac": MAC}, "ram")
    bstore.activate_rules(ctx)
    return ctx, BootEngine(ctx), m1


def test_grub_file_is_the_ipxe_decision(world):
    ctx, engine, m1 = world
    files = secureboot.grub_files(engine, BASE)
    text = files[grub.mac_filename(MAC)]
    assert grub.mac_filename(MAC) == "grub/grub.cfg-01-52-54-00-5b-00-01"
    assert files[grub.uuid_filename(UUID)] == text  # by SMBIOS UUID too
    # the iPXE script of the same machine boots the same kernel arguments
    script = engine.explain(MAC, BASE, arch="x86_64", platform="efi")["script"]
    kline = next(line for line in script.splitlines() if line.startswith("kernel "))
    args = kline.split(" || ")[0].split()[3:]  # kernel URL initrd=initrd ARGS...
    linux = next(line.strip() for line in text.splitlines() if line.strip().startswith("linux "))
    assert linux == "linux /images/img/1/kernel " + " ".join(args)
    assert "netslate.image=img@1" in linux and "console=ttyS0" in linux and "e2e.x=1" in linux
    assert f"netslate.key={ctx.signing_key.public_b64}" in linux
    assert "  initrd /images/img/1/initrd" in text.splitlines()
    assert "set default=0" in text and "set fallback=1" in text and "reboot" in text
    # m2 matches no rule: a wait file that reads the loader again
    wait = files[grub.mac_filename(MAC2)]
    assert "sleep 30" in wait and "configfile $prefix/grub.cfg" in wait and "linux" not in wait
    assert files[grub.LOADER].startswith(grub.GENERATED_MARK)
    assert "configfile $prefix/grub.cfg-${ns_mac}" in files[grub.LOADER].splitlines()


def test_grub_follows_tags_pins_cache_mode_and_menus(world):
    ctx, engine, m1 = world
    ctx.library.set_tag("img", 2, "stable")
    assert "netslate.image=img@2" in secureboot.grub_files(engine, BASE)[grub.mac_filename(MAC)]
    bstore.pin_machine(ctx, "m1", "img@1")
    pinned = secureboot.grub_files(engine, BASE)[grub.mac_filename(MAC)]
    assert "netslate.image=img@1" in pinned and "(pinned)" in pinned
    bstore.unpin_machine(ctx, "m1")
    bstore.add_rule(ctx, "r2", {"mac": MAC2}, "cached")
    bstore.activate_rules(ctx)
    cached = secureboot.grub_files(engine, BASE)[grub.mac_filename(MAC2)]
    assert "netslate.mode=cache" in cached and 'set fallback="1 2"' in cached and "  exit" in cached
    bstore.add_rule(ctx, "r2", {"mac": MAC2}, "pick", replace=True)
    bstore.activate_rules(ctx)
    menu = secureboot.grub_files(engine, BASE)[grub.mac_filename(MAC2)]
    assert "menuentry 'img@2 [stable] *' --id ns_v2 {" in menu and "--id ns_v1 {" in menu
    assert "set default=0" in menu and "set timeout=30" in menu


def test_menu_and_local_render():
    e1 = grub.GrubEntry("ns_v2", "img@2 [stable] *", "/images/img/2/kernel", "/images/img/2/initrd", ("quiet",))
    e2 = grub.GrubEntry("ns_v1", "img@1", "/images/img/1/kernel", None, ())
    m = grub.render_menu("img - choose a version", [e1, e2], "ns_v1", timeout_s=20)
    assert "set default=1" in m and "set timeout=20" in m and "menuentry 'img@1' --id ns_v1 {" in m
    assert "--id local" in m and "set fallback=3" in m
    assert "exit" in grub.render_local(["x"])


@pytest.mark.parametrize("bad", ["a b", "x\nreboot", "${net_default_mac}", "a;b", "'", "{", "}", "#x", ""])
def test_unsafe_kernel_args_refused(bad):
    with pytest.raises(ipxe.UnsafeValue):
        grub.render_boot(grub.GrubEntry("ns_boot", "t", "/images/a/1/kernel", None, (bad,)), [])


@pytest.mark.parametrize("bad", ["it's", "a\nb", "${x}", "a;b", "{"])
def test_unsafe_titles_refused(bad):
    with pytest.raises(ipxe.UnsafeValue):
        grub.render_boot(grub.GrubEntry("ns_boot", bad, "/images/a/1/kernel", None, ()), [])


@pytest.mark.parametrize("bad", ["/images/../etc/passwd", "images/a", "/a b", "/a;b", "/$x"])
def test_unsafe_paths_refused(bad):
    with pytest.raises(ipxe.UnsafeValue):
        grub.render_boot(grub.GrubEntry("ns_boot", "t", bad, None, ()), [])


def test_filenames_round_trip():
    assert grub.machine_of_filename(grub.mac_filename(MAC)) == (MAC, None)
    assert grub.machine_of_filename(grub.uuid_filename(UUID.upper())) == (None, UUID)
    assert grub.machine_of_filename("grub/grub.cfg") == (None, None)
    with pytest.raises(ipxe.UnsafeValue):
        grub.mac_filename("52:54:00:5b:00:0g")


def test_stage_writes_loaders_files_and_artifacts_then_cleans_up(world, tmp_path):
    ctx, engine, m1 = world
    root = tmp_path / "tftp"
    (root / "grub").mkdir(parents=True)
    (root / "grub" / "operator.cfg").write_text("# mine\n")
    out = secureboot.stage(root, engine, BASE)
    assert set(out["loaders"]) == {"shimx64.efi", "grubx64.efi"}
    assert (root / "shimx64.efi").read_bytes() == secureboot.SOURCES["shimx64.efi"].read_bytes()
    assert (root / "grub" / "grub.cfg-01-52-54-00-5b-00-01").exists()
    kernel = (root / "images/img/1/kernel").read_bytes()
    assert kernel == b"kernel1" * 1000
    assert hashlib.sha256((root / "images/img/1/initrd").read_bytes()).hexdigest() == \
        ctx.library.artifact_record("img", "1", "initrd")[1]["sha256"]
    again = secureboot.stage(root, engine, BASE)
    assert again == {"loaders": [], "grub": [], "artifacts": []}  # nothing rewritten
    ctx.library.set_tag("img", 2, "stable")
    out = secureboot.stage(root, engine, BASE)
    assert "/images/img/2/kernel" in out["artifacts"] and "/images/img/1/kernel" in out["artifacts"]
    assert not (root / "images/img/1").exists() and (root / "images/img/2/kernel").exists()
    assert (root / "grub" / "operator.cfg").read_text() == "# mine\n"  # never an operator's file


def test_dnsmasq_hands_uefi_clients_the_shim(tmp_path):
    paths = dc.Paths(*(str(tmp_path / n) for n in ("c", "h", "l", "p")))
    common = dict(interface="br0", server_ip="10.0.0.1", boot_url=f"{BASE}/boot.ipxe", tftp_root=str(tmp_path),
                  efi_binary="shimx64.efi")
    full = dc.render_config(dc.DhcpSettings(mode="full", dhcp_range="10.0.0.100,10.0.0.150", **common), paths)
    assert "dhcp-boot=tag:!ipxe,tag:efi64,shimx64.efi,,10.0.0.1" in full
    assert "dhcp-match=set:efi64,option:client-arch,7" in full and "dhcp-match=set:efi64,option:client-arch,9" in full
    assert "dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe,,10.0.0.1" in full  # BIOS unchanged
    proxy = dc.render_config(dc.DhcpSettings(mode="proxy", **common), paths)
    assert 'pxe-service=tag:!ipxe,X86-64_EFI,"netslate (UEFI Secure Boot)",shimx64.efi,10.0.0.1' in proxy
    assert 'pxe-service=tag:!ipxe,BC_EFI,"netslate (UEFI Secure Boot)",shimx64.efi,10.0.0.1' in proxy
    # the default stays iPXE for UEFI
    assert dc.DhcpSettings().efi_binary == "snponly.efi"
    with pytest.raises(dc.DhcpConfigError):
        dc.render_config(dc.DhcpSettings(mode="proxy", **dict(common, efi_binary="grubx64.efi")), paths)
