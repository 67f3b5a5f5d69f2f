"""Diskless pools without a VM: domain XML (pure), validation, and the boot-store registration
(profile, tie-free active rule, inventory entry) against a real store."""

import xml.etree.ElementTree as ET

import pytest

from netslate.boot import store as bstore
from netslate.context import Context
from netslate.desktops import diskless as dl
from netslate.desktops import domainxml, hosts, pools
from netslate.errors import NotFound, UserError
from netslate.inventory import store as inventory

from desktops_fixtures import URI, ensure_libvirtd


def _spec(**kw):
    base = dict(name="ns-x-dl-1", uuid="00000000-0000-0000-0000-000000000001", vcpus=1, memory_mib=512,
                disk_path=None, mac="52:54:00:aa:bb:cc", domain_type="qemu", display="spice",
                network="bridge:br9", boot_network=True, serial_log="/tmp/x.log")
    base.update(kw)
    return domainxml.DomainSpec(**base)


@pytest.mark.parametrize("nic", ["virtio", "e1000"])
def test_domainxml_diskless_boots_from_the_network(nic):
    root = ET.fromstring(domainxml.build(_spec(nic_model=nic)))
    assert root.find("devices/disk") is None
    assert root.find("os/boot").get("dev") == "network"
    iface = root.find("devices/interface")
    assert iface.get("type") == "bridge" and iface.find("source").get("bridge") == "br9"
    assert iface.find("model").get("type") == nic and iface.find("mac").get("address") == "52:54:00:aa:bb:cc"
    assert {g.get("type") for g in root.findall("devices/graphics")} == {"spice", "vnc"}
    assert root.find("devices/serial/log").get("file") == "/tmp/x.log"
    assert root.find("devices/console/target").get("type") == "serial"


def test_domainxml_diskless_refuses_no_network_and_unknown_nic():
    with pytest.raises(ValueError):
        domainxml.build(_spec(network="none"))
    with pytest.raises(ValueError):
        domainxml.build(_spec(nic_model="rtl8139"))


def test_diskless_parse_ref():
    assert dl.parse_ref("desk@stable") == ("desk", "stable")
    assert dl.parse_ref("desk") == ("desk", "latest")
    with pytest.raises(UserError):
        dl.parse_ref("desk@")


@pytest.fixture
def ctx(tmp_path):
    c = Context(tmp_path / "data").init()
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "x").write_text("x\n")
    c.library.import_files("desk", rootfs=root, tag="stable")
    return c


def test_diskless_pool_validation_writes_nothing(ctx):
    ensure_libvirtd()
    hosts.add_host(ctx, "local", URI, "test", accel="tcg")
    common = dict(size=1, spare=0, max_=1, vcpus=1, memory_mib=256, display="vnc", usb_redirect=0, smartcard=False,
                  persistence="none", assignment="floating", ip_range="10.98.0.10-10.98.0.12", hosts="*", actor="t")
    with pytest.raises(UserError):
        pools.create_pool(ctx, "p", "gold", diskless="desk@stable", network="br9", **common)
    with pytest.raises(UserError):
        pools.create_pool(ctx, "p", None, **common)
    with pytest.raises(UserError):
        pools.create_pool(ctx, "p", None, diskless="desk@stable", network="none", **common)
    with pytest.raises(NotFound):
        pools.create_pool(ctx, "p", None, diskless="desk@nosuchtag", network="br9", **common)
    with pytest.raises(UserError):
        pools.create_pool(ctx, "p", None, diskless="desk", network="br9", **{**common, "persistence": "persistent"})
    assert pools.list_pools(ctx) == []
    p = pools.create_pool(ctx, "p", None, diskless="desk", network="br9", **common)
    assert p["diskless"] == "desk@latest" and p["network"] == "bridge:br9"
    with pytest.raises(UserError):
        pools.resize_pool(ctx, "p", "t", golden_ref="gold")


def test_diskless_boot_registration_is_tie_free_and_leaves_pending_changes_alone(ctx):
    # an operator's rule that would tie with ours at priority 1000 (one label, could overlap)
    bstore.add_profile(ctx, "other", image="desk", ref="stable")
    bstore.add_rule(ctx, "rack", {"label": {"rack": "r1"}}, "other", priority=1000)
    bstore.activate_rules(ctx)
    # and a pending (not activated) working-set change that must stay pending
    bstore.add_rule(ctx, "pending", {"label": {"role": "gpu"}}, "other", priority=5)
    dl.ensure_boot(ctx, "lab", "desk", "stable")
    active = {r["name"]: r for r in bstore.list_rules(ctx, "active")["rules"]}
    assert "pending" not in active
    mine = active["desktop-pool-lab"]
    assert mine["profile"] == "desktop-lab" and mine["priority"] == 1001, mine
    prof = bstore.show_profile(ctx, "desktop-lab")
    assert (prof["kind"], prof["image"], prof["ref"], prof["mode"], prof["console"]) == ("image", "desk", "stable", "ram", "ttyS0")
    working = {r["name"] for r in bstore.list_rules(ctx, "working")["rules"]}
    assert {"pending", "desktop-pool-lab", "rack"} <= working
    before = bstore.list_rules(ctx, "active")["active_version"]
    dl.ensure_boot(ctx, "lab", "desk", "stable")  # idempotent: nothing changes
    assert bstore.list_rules(ctx, "active")["active_version"] == before

    dl.register_machine(ctx, "lab", "ns-x-lab-1", "52:54:00:12:34:56")
    dl.register_machine(ctx, "lab", "ns-x-lab-1", "52:54:00:12:34:56")  # idempotent
    m = inventory.show_machine(ctx, "52:54:00:12:34:56")
    assert m["approved"] and m["labels"] == {"desktop-pool": "lab"}
    # a machine netslate did not register for a desktop is never removed
    inventory.add_machine(ctx, ["52:54:00:12:34:57"], name="real-pc")
    dl.unregister_machine(ctx, "52:54:00:12:34:57")
    dl.unregister_machine(ctx, "52:54:00:12:34:56")
    macs = [x for m in inventory.list_machines(ctx) for x in m["macs"]]
    assert macs == ["52:54:00:12:34:57"]
    dl.remove_boot(ctx, "lab")
    assert "desktop-pool-lab" not in {r["name"] for r in bstore.list_rules(ctx, "active")["rules"]}
    with pytest.raises(NotFound):
        bstore.show_profile(ctx, "desktop-lab")
