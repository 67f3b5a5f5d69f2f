"""Regression (found by the fleet e2e): boot profiles accept every netslate initramfs mode, and the
boot script carries it; an unknown mode is still refused."""

import httpx
import pytest

from netslate.boot import store
from netslate import inventory
from netslate.errors import UserError
from netslate.initramfs import stage

MAC = "52:54:00:de:0f:01"


def test_fleet_boot_profile_modes_match_the_initramfs_modes(live_server, tmp_path):
    ctx = live_server.ctx
    assert set(store.MODES) == set(stage.MODES)
    k, i = tmp_path / "k", tmp_path / "i"
    k.write_bytes(b"kernel" * 100)
    i.write_bytes(b"initrd" * 100)
    ctx.library.import_files("img", kernel=k, initrd=i, tag="stable", warn=lambda m: None)
    store.add_profile(ctx, "cached", image="img", ref="stable", mode="cache", args=["netslate.disk=allow"])
    with pytest.raises(UserError, match="unknown boot mode"):
        store.add_profile(ctx, "bad", image="img", ref="stable", mode="nbd")
    inventory.add_machine(ctx, [MAC], name="m1")
    store.add_rule(ctx, "r1", {"mac": MAC}, "cached")
    store.activate_rules(ctx)
    r = httpx.get(f"{live_server.url}/boot/ipxe", params={"mac": MAC, "arch": "x86_64", "platform": "pcbios"}, timeout=10)
    assert r.status_code == 200, r.text
    kernel = next(line for line in r.text.splitlines() if line.startswith("kernel "))
    assert " netslate.mode=cache " in kernel + " " and " netslate.disk=allow" in kernel
