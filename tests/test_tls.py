"""Transport (issue 13 §6): `netslate serve --tls-listen` with a self-signed certificate made at first
start, its SHA-256 pinned by the machines (agent, pull client) and the CLI (`--ca sha256:...` or the
PEM file). A real server process on loopback over TLS; a wrong pin is refused before anything is
sent; plain HTTP keeps working on --listen (iPXE)."""

import ssl
import stat

import pytest

from nstest import ServeProcess, free_port, run_cli, serve_process
from netslate.agent import bootinfo, http as agent_http, locate
from netslate.boot.decide import ScriptSettings, Target, kernel_args
from netslate.boot import ipxe
from netslate.images import pull
from netslate.initramfs.bootargs import BootArgsError, parse_cmdline
from netslate.onmachine import pinning
from netslate.identity.tokens import ADMIN_TOKEN_FILE
from netslate.server.tls import pin_of_pem

WRONG = "sha256:" + "00" * 32


def _serve(data_dir, *extra) -> ServeProcess:
    return serve_process(data_dir, *extra, tls=True, env={"NETSLATE_DESKTOPS_RECONCILE": "0"})


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("tlsdata")
    server = _serve(data)
    yield data, server.url, server.tls_url
    server.stop()


def test_self_signed_certificate_made_at_first_start_and_kept(tls_server, tmp_path):
    data, plain, secure = tls_server
    keys = data / "keys"
    for f in ("tls.crt", "tls.key"):
        assert stat.S_IMODE((keys / f).stat().st_mode) == 0o600
    pin = pin_of_pem((keys / "tls.crt").read_bytes())
    # the certificate the server presents is the one on disk
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", int(secure.rsplit(":", 1)[1]))))
    assert pinning.fingerprint(der) == pin
    # a second start on the same data directory keeps it (the pin in the boot arguments stays valid)
    out = _serve(data).stop()
    assert f"pin {pin}" in out
    assert "made a self-signed" not in out


def test_agent_http_pinned_and_refused_on_a_wrong_pin(tls_server):
    data, plain, secure = tls_server
    pin = pin_of_pem((data / "keys" / "tls.crt").read_bytes())
    r = agent_http.request("GET", f"{secure}/api/v1/locate", pin=pin)
    assert r.status == 200 and isinstance(r.json()["servers"], list)
    with pytest.raises(agent_http.HttpError, match="not the pinned"):
        agent_http.request("GET", f"{secure}/api/v1/locate", pin=WRONG)
    # without a pin an https URL is checked against the system CAs: a self-signed one fails
    with pytest.raises(agent_http.HttpError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        agent_http.request("GET", f"{secure}/api/v1/locate", pin=None)
    # plain HTTP keeps working where it is configured (iPXE, old agents)
    assert agent_http.request("GET", f"{plain}/api/v1/locate", pin=WRONG).status == 200
    # the module-wide pin (set by the agent from netslate.pin= or its locate cache)
    try:
        agent_http.set_pin(pin)
        assert locate.probe(secure, 5)["servers"] is not None
        agent_http.set_pin(WRONG)
        with pytest.raises(agent_http.HttpError, match="not the pinned"):
            locate.probe(secure, 5)
    finally:
        agent_http.set_pin(None)


def test_pull_client_pins(tls_server):
    data, plain, secure = tls_server
    pin = pin_of_pem((data / "keys" / "tls.crt").read_bytes())
    status, _h, body = pull._Http(secure, 5, pin).get("/healthz", limit=1024)
    assert status == 200
    with pytest.raises(pull.PullError, match="not the pinned"):
        pull._Http(secure, 5, WRONG).get("/healthz", limit=1024)


def test_cli_over_https_with_pin_or_pem(tls_server):
    data, plain, secure = tls_server
    token = (data / ADMIN_TOKEN_FILE).read_text().strip()
    pin = pin_of_pem((data / "keys" / "tls.crt").read_bytes())
    env = {"NETSLATE_SERVER": secure, "NETSLATE_TOKEN": token}
    ok = run_cli("machine", "list", "--json", env={**env, "NETSLATE_CA": pin})
    assert ok.code == 0, ok.stderr
    assert ok.json() == []
    ok = run_cli("--ca", str(data / "keys" / "tls.crt"), "machine", "list", "--json", env=env)
    assert ok.code == 0, ok.stderr
    bad = run_cli("--ca", WRONG, "machine", "list", env=env)
    assert bad.code == 2
    assert "not the pinned" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    nopin = run_cli("machine", "list", env=env)
    assert nopin.code == 2 and "Traceback" not in nopin.stderr


def test_pin_in_boot_arguments_and_parsed_on_the_machine():
    pin = "sha256:" + "ab" * 32
    cfg = ScriptSettings((), ipxe.Retry(), "A" * 43 + "=", tls_port=8443, tls_pin=pin)
    args = kernel_args(cfg, Target("img", 3, "sha256:" + "cd" * 32), {"mode": "ram"}, "http://10.0.0.1:8080")
    assert "netslate.server=https://10.0.0.1:8443" in args
    assert f"netslate.pin={pin}" in args
    assert ipxe.arg(f"netslate.pin={pin}")  # safe in an iPXE script
    assert ScriptSettings(("http://[fd00::1]:8080", "https://x:9"), ipxe.Retry(), "k", 8443, pin).servers("b") == \
        ["https://[fd00::1]:8443", "https://x:9"]
    # without TLS nothing changes
    plain = ScriptSettings((), ipxe.Retry(), "k")
    assert plain.servers("http://h:8080") == ["http://h:8080"]
    assert not any(a.startswith("netslate.pin=") for a in kernel_args(plain, Target("i", 1, "sha256:" + "cd" * 32), {}, "http://h"))
    # the initramfs' parser
    line = f"netslate.server=https://10.0.0.1:8443 netslate.image=img@3 netslate.key={'A' * 43}= netslate.pin={pin.upper().replace('SHA256', 'sha256')}"
    assert parse_cmdline(line).pin == pin
    with pytest.raises(BootArgsError, match="netslate.pin"):
        parse_cmdline(line.replace(pin.upper().replace("SHA256", "sha256"), "md5:abc"))
    # the agent's
    info = bootinfo.combine({"pin": pin}, {}, {})
    assert info.pin == pin and not info.problems
    info = bootinfo.combine({"pin": "sha256:zz"}, {"pin": pin}, {})
    assert info.pin == pin and info.problems


def test_locate_cache_keeps_the_pin(tmp_path):
    pin = "sha256:" + "ef" * 32
    path = tmp_path / "locate.json"
    locate.save_cache(path, {"servers": [{"urls": ["https://a:8443"]}]}, "https://a:8443", pin)
    assert locate.cached_pin(path) == pin
    assert locate.load_cache(path) == ["https://a:8443"]
    locate.save_cache(path, {"servers": []}, "x")
    assert locate.cached_pin(path) is None


def test_serve_refuses_half_tls_options(tmp_path):
    r = run_cli("serve", "--listen", f"127.0.0.1:{free_port()}", "--tls-cert", "/nonexistent", data_dir=tmp_path)
    assert r.code == 2 and "--tls-listen" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("serve", "--listen", f"127.0.0.1:{free_port()}", "--tls-listen", f"127.0.0.1:{free_port()}",
                "--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", str(tmp_path / "nope.key"), data_dir=tmp_path)
    assert r.code == 2 and "no such file" in r.stderr


def test_enrollment_token_refused_over_plain_http_when_tls_is_on(tls_server, tmp_path):
    """Issue 13 §6 follow-up: the credential is never issued in clear when the server has a TLS
    listener; the token, which crossed the network in clear, is spent. Kept last in this module:
    the exchange over HTTPS registers a machine (test_cli_over_https lists none)."""
    from netslate.agent import enroll_token
    from netslate.context import Context
    from netslate.enrollment import tokens

    data, plain, secure = tls_server
    ctx = Context(data)
    uuid = "5c0f8a4e-0000-4000-8000-00000000beef"
    facts = {"dmi": {"product_uuid": uuid}, "nics": [{"mac": "52:54:00:be:ef:01", "physical": True}]}
    first = tokens.create(ctx, "local:test", domain_uuid=uuid, kind="host")["token"]
    pin = pin_of_pem((data / "keys" / "tls.crt").read_bytes())
    with pytest.raises(enroll_token.EnrollTokenRefused) as refused:
        enroll_token.exchange(plain, first, facts)
    said = str(refused.value)
    assert "only over HTTPS" in said and "spent" in said and "\n" not in said
    try:
        agent_http.set_pin(pin)
        # whoever saw it in clear cannot trade it over TLS
        with pytest.raises(enroll_token.EnrollTokenRefused, match="used already"):
            enroll_token.exchange(secure, first, facts)
        second = tokens.create(ctx, "local:test", domain_uuid=uuid, kind="host")["token"]
        answer = enroll_token.exchange(secure, second, facts)
        # an agent that pins the certificate never sends its token to a plain URL: kept, not spent
        root = tmp_path / "machine"
        (root / "etc/netslate").mkdir(parents=True)
        (root / "etc/netslate" / enroll_token.TOKEN_FILE).write_text(tokens.create(ctx, "local:test", domain_uuid=uuid, kind="host")["token"])
        with pytest.raises(agent_http.HttpError, match="plain HTTP and this machine pins"):
            enroll_token.enroll_with_token(plain, facts, root)
        assert (root / "etc/netslate" / enroll_token.TOKEN_FILE).exists()
        third = enroll_token.enroll_with_token(secure, facts, root)
    finally:
        agent_http.set_pin(None)
    assert answer["credential"].startswith("nsm_") and answer["trust"] == "host"
    assert third["credential"].startswith("nsm_") and not (root / "etc/netslate" / enroll_token.TOKEN_FILE).exists()
    from netslate import audit

    with ctx.db.session() as s:
        total, rows = audit.entries(s, action="enrollment.token.refused.plain-http")
    assert total == 1 and first not in repr(rows)


# ---------------------------------------------------------------- locate over TLS (the agent's credential never in clear)


class _PlainRecorder:
    """A TCP forwarder on loopback in front of a server's plain listener that keeps every byte the
    client sent: what crossed the network in clear, seen on the wire (not the agent's own claim)."""

    def __init__(self, target_port: int):
        import socket
        import threading

        self.target_port, self.sent, self._lock = target_port, bytearray(), threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        import socket
        import threading

        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            s = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
            threading.Thread(target=self._pipe, args=(c, s, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(s, c, False), daemon=True).start()

    def _pipe(self, src, dst, record):
        src.settimeout(60)
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for x in (src, dst):
                try:
                    x.shutdown(2)
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def tls_registered(tmp_path_factory):
    """A TLS server registered in discovery. It advertises 127.0.0.2 while listening on 127.0.0.1
    only, so the plain URLs its locate answer lists are unreachable: the only plain way to it is the
    test's recorder."""
    data = tmp_path_factory.mktemp("tlsreg")
    server = _serve(data, "--advertise", "127.0.0.2", "--server-name", "tlsbox")
    yield data, server
    server.stop()


def test_locate_over_a_tls_server_lists_its_https_url_and_pin(tls_registered):
    import httpx

    from netslate.context import Context

    data, server = tls_registered
    pin = pin_of_pem((data / "keys" / "tls.crt").read_bytes())
    tport = int(server.tls_url.rsplit(":", 1)[1])
    answer = httpx.get(f"{server.url}/api/v1/locate", timeout=10).json()
    assert answer["tls"] == {"port": tport, "pin": pin}
    (entry,) = [s for s in answer["servers"] if s["name"] == "tlsbox"]
    assert entry["urls"] == [f"http://127.0.0.2:{server.port}"]
    assert entry["https_urls"] == [f"https://127.0.0.2:{tport}"] and entry["pin"] == pin
    # the signed answer carries them too, and verifies with the signing key the machines pin
    key = Context(data).signing_key.public_bytes
    signed = locate.probe(server.url, 5, key)
    assert signed["tls"] == {"port": tport, "pin": pin}
    assert [s["https_urls"] for s in signed["servers"]] == [[f"https://127.0.0.2:{tport}"]]
    # what the agent makes of it: the https URL of the host it asked, with that pin
    assert locate.tls_of(signed, server.url) == (server.tls_url, pin)


def test_agent_given_the_plain_url_of_a_tls_server_sends_its_credential_over_https(tls_registered, tmp_path):
    """An agent booted with only the plain URL (no netslate.pin=) locates over it, adopts the pin
    of the signed answer and sends everything credentialed over HTTPS: the recorder in front of the
    plain listener sees the locate request and no credential, while the server has the token spent
    and the machine's reports."""
    from netslate import inventory
    from netslate.agent import enroll_token
    from netslate.agent.runner import Agent, Options
    from netslate.config import generations, workingcopy
    from netslate.context import Context
    from netslate.enrollment import tokens
    from netslate.config import credentials

    data, server = tls_registered
    ctx = Context(data)
    pin = pin_of_pem((data / "keys" / "tls.crt").read_bytes())
    mid = inventory.add_machine(ctx, ["52:54:00:00:77:01"], name="pinpc", actor="local:test")["id"]
    workingcopy.put_node(ctx, "/", {"sysctl": {"vm.swappiness": 10}}, "test")
    generations.publish(ctx, "tls test", "test")
    root = tmp_path / "root"
    (root / "etc/netslate").mkdir(parents=True)
    (root / "etc/netslate" / enroll_token.TOKEN_FILE).write_text(tokens.create(ctx, "local:test", machine=mid)["token"])
    recorder = _PlainRecorder(server.port)
    try:
        agent = Agent(Options(root=root, servers=[recorder.url], key=ctx.signing_key.public_b64, machine="pinpc",
                              timeout=5, lkg_dir="/netslate/lkg", live=False))
        assert agent.pin is None  # nothing pinned at the start
        out = agent.run_once()
        agent.report("heartbeat")
    finally:
        agent_http.set_pin(None)
        recorder.close()
    clear = bytes(recorder.sent).lower()
    assert b"get /api/v1/locate" in clear  # it did come in through the plain URL
    for never in (b"authorization:", b"/bundle", b"/reports", b"/enroll/token", b"nsm_", b"nse_"):
        assert never not in clear, never
    # server side: the token was spent (credential issued), the machine reported and fetched its bundle
    cred = (root / "netslate/lkg/credential").read_text().strip()
    assert credentials.authenticate(ctx, cred).machine_id == mid
    shown = inventory.show_machine(ctx, mid)
    assert shown["state"] == "configured" and shown["trust"] == "token", shown  # its configured report arrived
    assert out.report["config_source"] == "server" and out.url == server.tls_url
    assert locate.cached_pin(agent.locate_cache) == pin  # kept for boots that carry no pin
    # a machine that pins another certificate (say, a stale one) and holds a credential: the https
    # URL fails the pin, and the plain one of that server is not used instead
    other = tmp_path / "other"
    (other / "netslate/lkg").mkdir(parents=True)
    (other / "netslate/lkg/credential").write_text(cred)
    locate.save_cache(other / "netslate/lkg/locate.json", {"servers": []}, "earlier", WRONG)
    recorder = _PlainRecorder(server.port)
    try:
        stale = Agent(Options(root=other, servers=[recorder.url], key=ctx.signing_key.public_b64, machine="pinpc",
                              timeout=5, lkg_dir="/netslate/lkg", live=False))
        assert stale.pin == WRONG
        out = stale.run_once()
    finally:
        agent_http.set_pin(None)
        recorder.close()
    clear = bytes(recorder.sent).lower()
    assert b"get /api/v1/locate" in clear
    for never in (b"authorization:", b"/bundle", b"/reports", b"/fleet/identify", b"nsm_"):
        assert never not in clear, never
    assert out.url is None and out.report["config_source"] == "none"
    assert any("not the pinned" in p and "not go over plain HTTP" in p for p in out.report["problems"]), out.report["problems"]


def test_tpm_quote_refused_over_plain_http_when_tls_is_on(tls_server):
    import httpx

    data, plain, secure = tls_server
    body = {"challenge": "x" * 20, "attest": "AAAA", "signature": "AAAA"}
    r = httpx.post(f"{plain}/api/v1/enroll/tpm/quote", json=body, timeout=10)
    assert r.status_code == 426 and "only over HTTPS" in r.json()["detail"]
    # over the TLS listener the same request reaches the quote check (refused for its own reasons)
    r = httpx.post(f"{secure}/api/v1/enroll/tpm/quote", json=body, timeout=10, verify=False)
    assert r.status_code not in (426, 200) and r.status_code < 500, r.text
