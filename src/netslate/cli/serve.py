"""`netslate serve`: the API, the boot endpoints and the chunk server in one process."""

from typing import Optional

import typer

from netslate.cli.common import err_console, state
from netslate.errors import UserError


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--listen wants HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def serve(
    ctx: typer.Context,
    listen: str = typer.Option("0.0.0.0:8080", "--listen", help="HOST:PORT to listen on ([::]:PORT for dual-stack)."),
    workers: int = typer.Option(1, "--workers", help="uvicorn worker processes."),
    log_level: str = typer.Option("info", "--log-level"),
    site: Optional[str] = typer.Option(None, "--site", help="Register this server in discovery as part of SITE (see `netslate site`)."),
    advertise: Optional[list[str]] = typer.Option(None, "--advertise", help="Address clients should use (repeatable; default: the listen address or the host's global addresses)."),
    server_name: Optional[str] = typer.Option(None, "--server-name", help="This server's name in discovery (default: short hostname)."),
    srv_priority: int = typer.Option(0, "--srv-priority", help="Preference within its tier, 0-9 (lower first)."),
    srv_weight: int = typer.Option(100, "--srv-weight", help="RFC 2782 weight among equal priorities."),
    dns_listen: Optional[str] = typer.Option(None, "--dns-listen", help="Run the DNS responder on HOST:PORT (udp+tcp; [::]:53 is dual-stack)."),
    dns_domain: Optional[str] = typer.Option(None, "--dns-domain", help="Domain the DNS responder answers _netslate._tcp.DOMAIN SRV for."),
):
    """Run the netslate server."""
    import uvicorn

    from netslate.server.app import create_app
    from netslate.server.auth import ensure_admin_token

    st = state(ctx)
    host, port = parse_listen(listen)
    context = st.context()
    path, created = ensure_admin_token(context)
    if created:
        err_console.print(f"created admin token in {path} (mode 0600)")
    else:
        err_console.print(f"admin token: {path}")
    err_console.print(f"signing key {context.signing_key.fingerprint}")
    from netslate.discovery.service import serve_options

    options = {"listen": (host, port)}
    options.update(serve_options(context, site, advertise, server_name, dns_listen, dns_domain, srv_priority, srv_weight))
    app = create_app(context, options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
