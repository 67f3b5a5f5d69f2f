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
    boot_interface: Optional[str] = typer.Option(None, "--boot-interface", help="Run dnsmasq (DHCP/TFTP for PXE) on IFACE."),
    dhcp: Optional[str] = typer.Option(None, "--dhcp", help="proxy (default: next to an existing DHCP server) | full | off (TFTP only)."),
    dhcp_range: Optional[str] = typer.Option(None, "--dhcp-range", help="FIRST,LAST[,NETMASK] for --dhcp full."),
    tftp_root: Optional[str] = typer.Option(None, "--tftp-root", help="TFTP root (default DATA/tftp)."),
    config: Optional[str] = typer.Option(None, "--config", help="Server config file (YAML) with the boot settings above."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data directory (same as the global option)."),
    database_url: Optional[str] = typer.Option(None, "--database-url", help="SQLAlchemy URL, e.g. postgresql+psycopg://... (same as the global option)."),
    tls_listen: Optional[str] = typer.Option(None, "--tls-listen", help="Also serve HTTPS on HOST:PORT (the API and the agents; iPXE keeps plain HTTP on --listen)."),
    tls_cert: Optional[str] = typer.Option(None, "--tls-cert", help="PEM certificate for --tls-listen (default: a self-signed one made at first start in DATA/keys)."),
    tls_key: Optional[str] = typer.Option(None, "--tls-key", help="PEM private key for --tls-cert."),
):
    """Run the netslate server."""
    import uvicorn

    from netslate.server.app import create_app
    from netslate.server.auth import ensure_admin_token

    st = state(ctx)
    st.data_dir = data_dir or st.data_dir
    st.database_url = database_url or st.database_url
    host, port = parse_listen(listen)
    tls = None
    if tls_listen or tls_cert or tls_key:
        if not tls_listen:
            raise UserError("--tls-cert/--tls-key need --tls-listen HOST:PORT")
        from netslate.server.tls import server_files

        tls_host, tls_port = parse_listen(tls_listen)
        if (tls_host, tls_port) == (host, port):
            raise UserError("--tls-listen must differ from --listen")
        if workers > 1:
            raise UserError("--tls-listen runs with --workers 1")
    context = st.own_context()  # the server is this machine, even when NETSLATE_SERVER is set
    path, created = ensure_admin_token(context)
    if created:
        err_console.print(f"created admin token in {path} (mode 0600)", soft_wrap=True)
    else:
        err_console.print(f"admin token: {path}", soft_wrap=True)
    err_console.print(f"signing key {context.signing_key.fingerprint}", soft_wrap=True)
    from netslate.discovery.runtime import serve_options

    options = {"listen": (host, port)}
    if tls_listen:
        from netslate.server.tls import server_files

        tls, made = server_files(context.data_dir / "keys", tls_cert, tls_key)
        what = "made a self-signed TLS certificate" if made else "TLS certificate"
        err_console.print(f"{what} {tls.cert}, pin {tls.pin}", soft_wrap=True)
        options["tls"] = {"listen": [tls_host, tls_port], "pin": tls.pin}
    options.update(serve_options(context, site, advertise, server_name, dns_listen, dns_domain, srv_priority, srv_weight))
    from netslate.boot.serve_options import serve_options as boot_serve_options

    options.update(boot_serve_options(config, boot_interface, dhcp, dhcp_range, tftp_root))
    if workers > 1:
        # Several processes: each worker builds the app from the same settings (stateless over the store).
        import json
        import os

        os.environ["NETSLATE_SERVE_SETTINGS"] = json.dumps(
            {"data_dir": str(context.data_dir), "database_url": context.database_url, "options": options}, default=list)
        uvicorn.run("netslate.server.app:app_from_environment", factory=True, host=host, port=port,
                    workers=workers, log_level=log_level, access_log=False)
        return
    app = create_app(context, options)
    if tls is None:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
        return
    from netslate.server.tls import run_both

    run_both(app, (host, port), (tls_host, tls_port), tls, log_level)
