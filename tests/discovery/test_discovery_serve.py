"""Two real `netslate serve --site` processes over one shared store: registration, heartbeat,
dual-stack DNS, locate over real HTTP from two source addresses, the CLI, and the exports
checked by named-checkzone and by a real dnsmasq serving them."""

import subprocess
import time

import httpx
import pytest

from nstest import free_port, serve_process

DOMAIN = "fleet.test"
SRV = f"_netslate._tcp.{DOMAIN}"
NORTH, SOUTH = "127.0.0.2", "127.0.0.3"


def _serve(data_dir, *args):
    server = serve_process(data_dir, *args, timeout=30)
    return server, server.url, server.port


def dig(port, *args, source=NORTH, server="127.0.0.1"):
    out = subprocess.run(["dig", "-b", source, f"@{server}", "-p", str(port), "+time=5", "+tries=1", "+short", *args],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    return [line.split() for line in out.stdout.strip().splitlines()]


def _locate(url, source):
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=5) as c:
        r = c.get(f"{url}/api/v1/locate")
        assert r.status_code == 200
        assert r.headers["cache-control"] == f"max-age={r.json()['ttl']}"
        return r.json()


@pytest.mark.timeout(240)
def test_two_servers_share_one_store(ctx, cli, data_dir):
    from netslate.discovery import store

    store.add_site(ctx, "north")
    store.add_site(ctx, "south")
    for site, cidr in (("north", "127.0.0.2/32"), ("south", "127.0.0.3/32"), ("south", "::1/128")):
        store.add_subnet(ctx, site, cidr)
    dns_port = free_port()
    a, a_url, a_port = _serve(data_dir, "--site", "north", "--server-name", "alpha", "--advertise", "127.0.0.1",
                              "--advertise", "fe80::1", "--dns-listen", f"[::]:{dns_port}", "--dns-domain", DOMAIN)
    try:
        b, b_url, b_port = _serve(data_dir, "--site", "south", "--server-name", "beta", "--advertise", "127.0.0.1",
                                  "--advertise", "2001:db8::b")
        try:
            servers = {s["name"]: s for s in cli("server", "list", "--json").json()}
            assert servers["alpha"]["alive"] and servers["beta"]["alive"]
            assert servers["alpha"]["addresses"] == ["127.0.0.1"]  # fe80::1 was never stored
            assert servers["beta"]["port"] == b_port and servers["beta"]["site"] == "south"
            health = httpx.get(f"{a_url}/healthz").json()["checks"]
            assert health["dns"]["ok"] and health["discovery"]["server"] == "alpha"

            # DNS from alpha's responder, wait for its view to include beta (refreshed every 2 s).
            deadline = time.time() + 10
            while len(dig(dns_port, SRV, "SRV", source=SOUTH)) < 2 and time.time() < deadline:
                time.sleep(0.3)
            north = dig(dns_port, SRV, "SRV", source=NORTH)
            south = dig(dns_port, SRV, "SRV", source=SOUTH)
            assert north == [["0", "100", str(a_port), "alpha.fleet.test."], ["10", "100", str(b_port), "beta.fleet.test."]]
            assert south == [["0", "100", str(b_port), "beta.fleet.test."], ["10", "100", str(a_port), "alpha.fleet.test."]]
            # Dual-stack: the same socket answers over IPv6 (::1 is in site south).
            v6 = dig(dns_port, SRV, "SRV", source="::1", server="::1")
            assert v6[0][3] == "beta.fleet.test."
            assert dig(dns_port, "alpha.fleet.test", "AAAA") == []  # its only IPv6 was link-local
            assert dig(dns_port, "beta.fleet.test", "AAAA") == [["2001:db8::b"]]

            # Locate over real HTTP from two source addresses, asked of beta.
            ln, ls = _locate(b_url, NORTH), _locate(b_url, SOUTH)
            assert (ln["site"], [s["name"] for s in ln["servers"]]) == ("north", ["alpha", "beta"])
            assert (ls["site"], [s["name"] for s in ls["servers"]]) == ("south", ["beta", "alpha"])
            assert ls["servers"][0]["urls"] == [f"http://127.0.0.1:{b_port}", f"http://[2001:db8::b]:{b_port}"]
            unknown = httpx.get(f"{b_url}/api/v1/locate", params={"address": "192.0.2.7"}).json()
            assert unknown["site"] is None and {s["priority"] for s in unknown["servers"]} == {10}
            assert httpx.get(f"{b_url}/api/v1/locate", params={"address": "nope"}).status_code == 400
            signed = httpx.get(f"{b_url}/api/v1/locate", params={"signed": "1"}).json()
            from netslate.crypto.envelope import open_envelope
            import base64

            key = base64.b64decode(httpx.get(f"{b_url}/api/v1/keys").json()["keys"][0]["public_key"])
            assert open_envelope(signed, key)["servers"][0]["name"] in ("alpha", "beta")
        finally:
            b.stop()
        # beta stopped cleanly: not alive, and gone from alpha's DNS answers.
        servers = {s["name"]: s for s in store.list_servers(ctx)}
        assert not servers["beta"]["alive"] and servers["alpha"]["alive"]
        deadline = time.time() + 10
        while len(dig(dns_port, SRV, "SRV", source=SOUTH)) > 1 and time.time() < deadline:
            time.sleep(0.3)
        assert dig(dns_port, SRV, "SRV", source=SOUTH) == [["10", "100", str(a_port), "alpha.fleet.test."]]
    finally:
        a.stop()


def test_serve_refuses_bad_discovery_options(ctx, cli):
    r = cli("serve", "--listen", f"127.0.0.1:{free_port()}", "--site", "nowhere")
    assert r.code == 2 and "no such site 'nowhere'" in r.stderr and "Traceback" not in r.stderr
    r = cli("serve", "--listen", f"127.0.0.1:{free_port()}", "--dns-listen", "127.0.0.1:5353")
    assert r.code == 2 and "--dns-domain" in r.stderr
    from netslate.discovery.runtime import serve_options
    from netslate.errors import UserError

    with pytest.raises(UserError, match="not an IP address"):
        serve_options(ctx, None, ["10.0.0.300"], None, None, None)
    with pytest.raises(UserError, match="invalid server name"):
        serve_options(ctx, None, None, "bad_name", None, None)
    with pytest.raises(UserError, match="--dns-listen wants"):
        serve_options(ctx, None, None, None, "127.0.0.1:fifty", "x.test")
    with pytest.raises(UserError, match="--srv-priority"):
        serve_options(ctx, None, None, None, None, None, srv_priority=10)
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        with pytest.raises(UserError, match=r"--dns-listen 127.0.0.1:\d+ \(udp\): Address already in use"):
            serve_options(ctx, None, None, None, f"127.0.0.1:{taken}", "x.test")


def test_site_cli_and_bad_input(ctx, cli):
    from netslate.discovery import store
    from netslate.errors import Conflict, NotFound

    assert cli("site", "add", "lab", "-d", "Lab one").code == 0
    r = cli("site", "add", "lab")
    assert r.code == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    r = cli("site", "subnet", "add", "lab", "10.9.0.1/16")
    assert r.code == 2 and "did you mean 10.9.0.0/16" in r.stderr
    assert cli("site", "subnet", "add", "lab", "10.9.0.0/16").code == 0
    store.add_subnet(ctx, "lab", "2001:DB8:9::/48")
    store.add_site(ctx, "other")
    with pytest.raises(NotFound, match="no such site"):
        store.add_subnet(ctx, "nowhere", "10.8.0.0/16")
    with pytest.raises(Conflict, match="already belongs to site 'lab'"):
        store.add_subnet(ctx, "other", "10.9.0.0/16")
    shown = cli("site", "show", "lab", "--json").json()
    assert shown["subnets"] == ["10.9.0.0/16", "2001:db8:9::/48"] and shown["description"] == "Lab one"
    assert [s["name"] for s in cli("site", "list", "--json").json()] == ["lab", "other"]
    assert cli("site", "subnet", "rm", "lab", "10.9.0.0/16", "--json").json()["subnets"] == ["2001:db8:9::/48"]
    with pytest.raises(NotFound, match="has no subnet"):
        store.remove_subnet(ctx, "lab", "10.9.0.0/16")
    store.remove_site(ctx, "other")
    assert cli("server", "list", "--json").json() == []


@pytest.mark.timeout(120)
def test_exports_load_in_bind_and_dnsmasq(ctx, cli, tmp_path):
    from netslate.discovery import store

    store.add_site(ctx, "north")
    store.add_subnet(ctx, "north", "127.0.0.2/32")
    store.register_server(ctx, "alpha", "north", ["127.0.1.1", "2001:db8::1", "fe80::1"], 8080)
    store.register_server(ctx, "beta", None, ["127.0.1.2"], 8081, weight=50)
    zone = tmp_path / "fleet.zone"
    r = cli("dns", "export", "--format", "bind", "--domain", DOMAIN, "--site", "north", "--serial", "42", "-o", str(zone))
    assert r.code == 0, r.stderr
    text = zone.read_text()
    assert "fe80" not in text
    check = subprocess.run(["named-checkzone", DOMAIN, str(zone)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "loaded serial 42" in check.stdout, check.stdout + check.stderr

    conf = tmp_path / "netslate.conf"
    r = cli("dns", "export", "--format", "dnsmasq", "--domain", DOMAIN, "--site", "north")
    assert r.code == 0, r.stderr
    conf.write_text(r.stdout)
    port = free_port()
    proc = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--no-daemon", "--conf-file=" + str(conf), "--no-resolv",
                             "--no-hosts", "--port", str(port), "--listen-address=127.0.0.1", "--bind-interfaces",
                             "--pid-file=", "--user=root"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 10
        rows = []
        while time.time() < deadline:
            out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=1", "+tries=1", SRV, "SRV"],
                                 capture_output=True, text=True, timeout=10)
            rows = sorted(out.stdout.split("\n")) if out.returncode == 0 else []
            if any(rows):
                break
            time.sleep(0.2)
        assert [r for r in rows if r] == ["0 100 8080 alpha.fleet.test.", "10 50 8081 beta.fleet.test."]
        out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+short", "alpha.fleet.test", "AAAA"],
                             capture_output=True, text=True, timeout=10)
        assert out.stdout.split() == ["2001:db8::1"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_remote_cli_and_api_auth(live_server, cli):
    env = {"NETSLATE_SERVER": live_server.url, "NETSLATE_TOKEN": live_server.admin_token}
    r = cli("site", "add", "remote-site", "--json", env=env)
    assert r.code == 0 and r.json()["name"] == "remote-site", r.stderr
    assert cli("site", "subnet", "add", "remote-site", "10.7.0.0/16", env=env).code == 0
    r = cli("site", "subnet", "add", "remote-site", "10.7.0.1/16", env=env)
    assert r.code == 2 and "did you mean" in r.stderr
    assert cli("site", "list", "--json", env=env).json()[0]["subnets"] == ["10.7.0.0/16"]
    from netslate.discovery import store

    store.register_server(live_server.ctx, "r1", "remote-site", ["10.7.0.5", "fe80::5"], 8080)
    assert [x["name"] for x in cli("server", "list", "--json", env=env).json()] == ["r1"]
    r = cli("dns", "export", "--format", "dnsmasq", "--domain", "Remote.Test", env=env)
    assert r.code == 0 and "srv-host=_netslate._tcp.remote.test,r1.remote.test,8080,10,100" in r.stdout
    assert "host-record=r1.remote.test,10.7.0.5\n" in r.stdout
    r = cli("dns", "export", "--format", "bind", "--domain", "remote.test", "--site", "nowhere", env=env)
    assert r.code == 2 and "no such site" in r.stderr
    # Without a token, reads work and changes are refused.
    assert httpx.get(f"{live_server.url}/api/v1/sites").status_code == 200
    assert httpx.post(f"{live_server.url}/api/v1/sites", json={"name": "x"}).status_code == 401
    # The change went into the audit log in the same store.
    from sqlalchemy import select

    from netslate.store.models import AuditEntry

    with live_server.ctx.db.session() as s:
        actions = [e.action for e in s.scalars(select(AuditEntry)).all()]
    assert "site.add" in actions and "site.subnet.add" in actions
