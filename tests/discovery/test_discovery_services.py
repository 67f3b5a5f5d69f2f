"""The servers service over the data directory and over a real server on loopback give the same
answers: locate (plain and signed), the DNS exports, and the same one-line errors."""

import base64

import pytest

from netslate.cli.remote import ApiClient
from netslate.composition import Parts
from netslate.errors import NotFound, UserError
from netslate.services import Services
from netslate.services.framework import Caller


@pytest.fixture
def both(ctx, live_server):
    local = Services.local(Parts(ctx), Caller("local", "test", "admin"))
    remote = Services.remote(ApiClient(live_server.url, live_server.admin_token))
    return local, remote


def test_locate_and_exports_agree(ctx, both):
    from netslate.crypto.envelope import open_envelope
    from netslate.discovery import store

    local, remote = both
    local.sites.add("north", "Building A")
    local.sites.add_subnet("north", "10.1.0.0/16")
    store.register_server(ctx, "a1", "north", ["10.1.0.5", "fe80::5"], 8080, weight=300)
    for svc in (local, remote):
        answer = svc.servers.locate(address="10.1.7.20")
        assert answer.model_dump() == {
            "client": "10.1.7.20", "site": "north", "ttl": 300,
            "servers": [{"name": "a1", "site": "north", "addresses": ["10.1.0.5"], "port": 8080,
                         "priority": 0, "weight": 300, "urls": ["http://10.1.0.5:8080"]}]}
        assert svc.servers.locate(address="::ffff:192.0.2.1").site is None
        signed = svc.servers.locate(address="10.1.7.20", signed=True)
        key = base64.b64decode(svc.keys.list().keys[0].public_key)
        assert open_envelope(signed.model_dump(mode="json"), key)["site"] == "north"
        with pytest.raises(UserError, match="not an IP address"):
            svc.servers.locate(address="10.1.0.300")
        with pytest.raises(UserError, match="--format must be bind or dnsmasq"):
            svc.servers.dns_export("tinydns", "example.org")
        with pytest.raises(UserError, match="no such site"):
            svc.servers.dns_export("bind", "example.org", site="south")
    for fmt in ("bind", "dnsmasq"):
        assert local.servers.dns_export(fmt, "Example.org", "north", 7) == remote.servers.dns_export(fmt, "Example.org", "north", 7)
    assert "srv-host=_netslate._tcp.example.org,a1.example.org,8080,0,300" in local.servers.dns_export("dnsmasq", "example.org", "north")
    shown = remote.sites.show("north")
    assert shown.servers[0].name == "a1" and shown.servers[0].alive
    assert [s.name for s in remote.servers.list()] == ["a1"]
    remote.servers.remove("a1")
    with pytest.raises(NotFound, match="no such server"):
        local.servers.remove("a1")
    assert remote.sites.list()[0].servers == []
