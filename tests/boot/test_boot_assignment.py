"""The image version the boot side assigns a machine travels in its signed config bundle (`image_pin`):
explicit pin, else the active rule's profile, else the site's default profile, with a tag resolved to
its version when the bundle is built. The cache-mode initramfs boots from it when no server answers."""

import base64

import httpx
import pytest

from netslate.boot import store as bstore
from netslate import inventory
from netslate.boot.engine import BootEngine
from netslate.crypto.envelope import open_envelope

MAC = "52:54:00:a5:00:01"
MAC2 = "52:54:00:a5:00:02"


class Bundles:
    def __init__(self, srv):
        self.srv = srv
        self.http = httpx.Client(base_url=srv.url, timeout=30)
        self.key = base64.b64decode(self.http.get("/api/v1/keys").json()["keys"][0]["public_key"])

    def get(self, machine, etag=None):
        r = self.http.get(f"/api/v1/machines/{machine}/bundle", headers={"If-None-Match": etag} if etag else {})
        assert r.status_code in (200, 304), r.text
        return r

    def pin(self, machine):
        r = self.get(machine)
        return open_envelope(r.json(), self.key)["image_pin"], r.headers["etag"]


@pytest.fixture
def world(live_server, tmp_path):
    """Image `img` v1 (tag stable) and v2; profile `cached` → img@stable (cache mode); machine m1 matched by rule r1."""
    ctx = live_server.ctx
    for n in (1, 2):
        k, i = tmp_path / f"k{n}", tmp_path / f"i{n}"
        k.write_bytes(b"kernel%d" % n * 100)
        i.write_bytes(b"initrd%d" % n * 100)
        ctx.library.import_files("img", kernel=k, initrd=i, tag="stable" if n == 1 else None, warn=lambda m: None)
    bstore.add_profile(ctx, "cached", image="img", ref="stable", mode="cache")
    m1 = inventory.add_machine(ctx, [MAC2, MAC], name="m1", group="/site-a")["id"]
    bstore.add_rule(ctx, "r1", {"mac": MAC}, "cached")  # MAC sorts first among m1's MACs
    bstore.activate_rules(ctx)
    return ctx, Bundles(live_server), m1


def digest(ctx, ref):
    return ctx.library.resolve("img", ref).manifest_digest


def test_rule_assigns_the_tag_version_and_a_tag_move_changes_the_bundle(world, live_server):
    ctx, b, m1 = world
    pin, etag = b.pin(m1)
    assert pin == {"name": "img", "version": 1, "digest": digest(ctx, "1"), "source": "boot rule r1"}
    assert b.get(m1, etag).status_code == 304  # nothing moved: same ETag
    ctx.library.set_tag("img", 2, "stable")
    r = b.get(m1, etag)
    assert r.status_code == 200 and r.headers["etag"] != etag
    assert open_envelope(r.json(), b.key)["image_pin"] == {
        "name": "img", "version": 2, "digest": digest(ctx, "2"), "source": "boot rule r1"}
    # what the bundle allows is what a boot of that machine is sent
    script = httpx.get(f"{live_server.url}/boot/ipxe", params={"mac": MAC, "arch": "x86_64", "platform": "pcbios"}, timeout=10).text
    assert "netslate.image=img@2 " in script and "netslate.mode=cache" in script


def test_explicit_pin_wins_over_the_rule(world):
    ctx, b, m1 = world
    ctx.library.set_tag("img", 2, "stable")
    bstore.pin_machine(ctx, "m1", "img@1")
    pin, etag = b.pin(m1)
    assert pin == {"name": "img", "version": 1, "digest": digest(ctx, "1"), "source": "boot pin"}
    bstore.unpin_machine(ctx, "m1")
    pin2, etag2 = b.pin(m1)
    assert pin2["version"] == 2 and pin2["source"] == "boot rule r1" and etag2 != etag


def test_local_profile_or_no_rule_gives_no_image_pin(world):
    ctx, b, m1 = world
    bstore.add_profile(ctx, "disk", kind="local")
    bstore.add_rule(ctx, "r1", {"mac": MAC}, "disk", replace=True)
    bstore.activate_rules(ctx)
    assert b.pin(m1)[0] is None
    other = inventory.add_machine(ctx, ["52:54:00:a5:00:09"], name="m2")["id"]
    assert b.pin(other)[0] is None  # no rule, no default profile


def test_site_default_profile_is_assigned_when_no_rule_matches(world):
    ctx, b, _m1 = world
    other = inventory.add_machine(ctx, ["52:54:00:a5:00:09"], name="m2")["id"]
    bstore.set_policy(ctx, "boot-default", default_profile="cached")
    assert b.pin(other)[0] == {"name": "img", "version": 1, "digest": digest(ctx, "1"), "source": "site default profile"}


def test_assignment_is_cached_per_snapshot_and_the_engine_is_quiet(world, live_server):
    ctx, _b, m1 = world
    parts = live_server.app.state.parts  # the server's one engine: boot scripts and bundles share it
    eng = parts.boot_engine
    assert parts.boot_engine is eng and isinstance(eng, BootEngine)
    a = eng.assignment(m1)
    assert a["version"] == 1 and eng.assignment(999_999) is None
    snap = eng.snapshot()
    assert len(snap.assignments) == 1
    a["version"] = 99  # callers get a copy
    assert eng.assignment(m1)["version"] == 1 and eng.snapshot() is snap and len(snap.assignments) == 1
    assert eng.events._thread is None  # no boot events: no writer thread, nothing written
    inventory.label_machine(ctx, "m1", {"room": "r2"}, [])  # the machine row changed: new answer, same value
    assert eng.assignment(m1)["version"] == 1
