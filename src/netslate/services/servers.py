"""Registered netslate servers (self-registered by `netslate serve --site`), the locate answer and
the DNS exports for sites that run their own BIND or dnsmasq.

`locate` and `dns_export` have hand-written routes (server/routers/discovery.py): locate answers
for the TCP peer with a Cache-Control header, and the export is text/plain. Their HTTP client is
`HttpServers` below; the rest is generated from the contract.
"""

from __future__ import annotations

from pydantic import BaseModel, model_serializer

from netslate.discovery import core, store
from netslate.errors import UserError
from netslate.store import outbox
from netslate.services.framework import Service, http_client, op

EXPORT_FORMATS = ("bind", "dnsmasq")
MAX_SERIAL = 4294967295


class Server(BaseModel):
    name: str
    site: str | None
    addresses: list[str]
    port: int
    priority: int
    weight: int
    tls_port: int | None = None  # its HTTPS listener (`serve --tls-listen`) and certificate pin
    tls_pin: str | None = None
    started_at: str
    last_heartbeat: str
    heartbeat_age_s: float
    alive: bool
    # a branch server over a standby (issue 15): its read-only state, replication lag and outbox as it
    # last reported them (status_age_s ago; the answering server's own are live); None elsewhere
    read_only: bool | None = None
    replication_lag_s: float | None = None
    outbox_pending: int | None = None
    status_age_s: float | None = None


class LocateServer(BaseModel):
    """One server as the asking client should see it: SRV priority (site tier + own) and weight."""

    name: str
    site: str | None
    addresses: list[str]
    port: int
    priority: int
    weight: int
    urls: list[str]
    https_urls: list[str] = []  # a server with TLS: where machines that pin its certificate go
    pin: str | None = None  # its certificate's pin (sha256:HEX)

    @model_serializer(mode="wrap")
    def _without_tls(self, handler):
        # a server without TLS keeps the shape it had (and the signed payload its bytes)
        return _drop(handler(self), https_urls=[], pin=None)


class LocateTls(BaseModel):
    """The answering server's own TLS listener: https://<the host the client asked>:port, this pin."""

    port: int
    pin: str


class LocateAnswer(BaseModel):
    client: str | None
    site: str | None
    ttl: int
    servers: list[LocateServer]
    tls: LocateTls | None = None  # None: the answering server has no TLS listener

    @model_serializer(mode="wrap")
    def _without_tls(self, handler):
        return _drop(handler(self), tls=None)


def _drop(d: dict, **empty) -> dict:
    """`d` without the keys whose value is the given empty one (fields that did not exist before TLS)."""
    return {k: v for k, v in d.items() if not (k in empty and v == empty[k])}


class SignedLocate(BaseModel):
    """`?signed=1`: the answer in an envelope signed with the server's ed25519 key."""

    payload: LocateAnswer
    signature: str
    key: str
    chain: list[dict] | None = None  # [root-signed site certificate] when a site key signed (issue 15 §3)
    revocations: dict | None = None  # the newest root-signed revocation statement


class ServersService(Service):
    noun = "servers"

    @op("GET", "/api/v1/servers")
    def list(self) -> list[Server]:
        """Registered servers; those silent for longer than 45 s are not alive and not published."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/servers/{name}", role="operator", status=204)
    def remove(self, name: str) -> None:
        """Forget a server (a running one registers itself again at its next heartbeat)."""
        raise NotImplementedError

    # Hand-written routes (GET /api/v1/locate, GET /api/v1/dns/export): see HttpServers.

    def locate(self, address: str | None = None, signed: bool = False) -> LocateAnswer | SignedLocate:
        """The servers a client at `address` should use, closest first (same site, then RFC 2782)."""
        raise NotImplementedError

    def dns_export(self, format: str, domain: str, site: str | None = None, serial: int = 1) -> str:
        """The records the responder serves, as a BIND zone or dnsmasq lines."""
        raise NotImplementedError


def _check_export(format: str, serial: int) -> None:
    if format not in EXPORT_FORMATS:
        raise UserError(f"--format must be bind or dnsmasq, got {format!r}")
    if not 0 <= serial <= MAX_SERIAL:
        raise UserError(f"--serial must be 0..{MAX_SERIAL}, got {serial}")


class LocalServers(ServersService):
    def list(self) -> list[Server]:
        ctx = self.parts.ctx
        states = outbox.server_states(ctx) if ctx.db.url.startswith("postgresql") else {}
        me = self.parts.outbox_replayer
        if me is not None:
            states[me.name] = me.live_status()
        return [Server(**s, **states.get(s["name"], {})) for s in store.list_servers(ctx)]

    def remove(self, name: str) -> None:
        store.remove_server(self.parts.ctx, name, actor=self.actor)

    def locate(self, address: str | None = None, signed: bool = False, *, peer: str | None = None) -> LocateAnswer | SignedLocate:
        """`address` is checked (a user asked for it); without it the answer is for `peer`, the TCP
        peer the route saw (IPv4-mapped IPv6 counts as IPv4)."""
        if address is not None:
            try:
                core.parse_address(address)
            except core.DiscoveryInputError as exc:
                raise UserError(str(exc)) from None
        client = address if address is not None else peer
        if client is not None and client.startswith("::ffff:"):
            client = client[7:]
        answer = core.locate_answer(store.load_view(self.parts.ctx), client)
        tls = self.parts.options.get("tls")
        if tls:  # without TLS the answer is as before (no key)
            answer["tls"] = {"port": int(tls["listen"][1]), "pin": tls["pin"]}
        if signed:
            return SignedLocate(**self.parts.ctx.signing_key.sign_site(answer, answer["site"]))
        return LocateAnswer(**answer)

    def dns_export(self, format: str, domain: str, site: str | None = None, serial: int = 1) -> str:
        _check_export(format, serial)
        view = store.load_view(self.parts.ctx)
        try:
            if format == "bind":
                return core.render_bind(view, domain, site=site, serial=serial)
            return core.render_dnsmasq(view, domain, site=site)
        except core.DiscoveryInputError as exc:
            raise UserError(str(exc)) from None


class HttpServers(http_client(ServersService)):
    def locate(self, address: str | None = None, signed: bool = False) -> LocateAnswer | SignedLocate:
        params: dict = {"signed": "true" if signed else "false"}
        if address is not None:
            params["address"] = address
        data = self.api.request("GET", "/api/v1/locate", params=params).json()
        return SignedLocate(**data) if signed else LocateAnswer(**data)

    def dns_export(self, format: str, domain: str, site: str | None = None, serial: int = 1) -> str:
        _check_export(format, serial)
        params: dict = {"format": format, "domain": domain, "serial": serial}
        if site is not None:
            params["site"] = site
        return self.api.request("GET", "/api/v1/dns/export", params=params).text


HTTP_CLASS = "HttpServers"
