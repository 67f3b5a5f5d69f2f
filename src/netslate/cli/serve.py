"""`netslate serve`: the API, the boot endpoints and the chunk server in one process."""

from typing import Optional

import typer

from netslate.cli.common import err_console, long_running, state
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
    db_read: Optional[str] = typer.Option(None, "--db-read", help="Branch server: read through this URL, the site's PostgreSQL standby (NETSLATE_DATABASE_READ_URL; docs/sites.md)."),
    db_write: Optional[str] = typer.Option(None, "--db-write", help="Branch server: write through this URL, the central primary (same as --database-url)."),
    tls_listen: Optional[str] = typer.Option(None, "--tls-listen", help="Also serve HTTPS on HOST:PORT (the API and the agents; iPXE keeps plain HTTP on --listen)."),
    tls_cert: Optional[str] = typer.Option(None, "--tls-cert", help="PEM certificate for --tls-listen (default: a self-signed one made at first start in DATA/keys)."),
    tls_key: Optional[str] = typer.Option(None, "--tls-key", help="PEM private key for --tls-cert."),
    static: str = typer.Option("auto", "--static", envvar="NETSLATE_STATIC",
                               help="nginx: nginx on --listen serves chunks and artifacts with sendfile, the app behind it on loopback | off: the app alone | auto (default): nginx when installed."),
    static_workers: int = typer.Option(0, "--static-workers", help="nginx worker processes (default: one per core)."),
    mirror_from: Optional[str] = typer.Option(None, "--mirror-from", help="Branch server: mirror the chunks of the versions this site's machines are assigned from this server URL (or `discovery`: a registered server of another site), verified against the signed manifests (docs/sites.md, Chunk mirrors)."),
    mirror_interval: float = typer.Option(60.0, "--mirror-interval", help="Seconds between prefetch passes of --mirror-from."),
    print_site_cache_config: bool = typer.Option(False, "--print-site-cache-config", help="Print an nginx proxy_cache config for a site cache in front of this server, and exit."),
    origin: Optional[str] = typer.Option(None, "--origin", help="With --print-site-cache-config: the server URL (default http://LISTEN)."),
    cache_dir: str = typer.Option("/var/cache/netslate-site", "--cache-dir", help="With --print-site-cache-config: the cache directory."),
    cache_listen: str = typer.Option("0.0.0.0:8080", "--cache-listen", help="With --print-site-cache-config: HOST:PORT the cache listens on."),
):
    """Run the netslate server."""
    if print_site_cache_config:
        from netslate.images.frontend import render_site_cache_conf

        h, p = parse_listen(listen)
        try:
            text = render_site_cache_conf(origin or f"http://{'127.0.0.1' if h in ('0.0.0.0', '::') else h}:{p}", cache_listen, cache_dir)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        print(text, end="")
        return
    import uvicorn

    from netslate.server.app import create_app
    from netslate.server.auth import bootstrap_admin_token

    st = state(ctx)
    st.data_dir = data_dir or st.data_dir
    st.database_url = db_write or database_url or st.database_url
    if db_read:
        import os

        if not st.database_url:
            raise UserError("--db-read needs --db-write URL (the central primary)")
        os.environ["NETSLATE_DATABASE_READ_URL"] = db_read  # this process and its workers
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
    made = bootstrap_admin_token(context, server_name)
    path, created = made["path"], made["created"]
    if created:
        err_console.print(f"created admin token {made['name']!r} in {path} (mode 0600)", soft_wrap=True)
        if made["taken"]:
            err_console.print(f"left token(s) {', '.join(made['taken'])} as they are (another server's over this database, "
                              "or this data directory's earlier file): `netslate token remove NAME` revokes one nobody uses",
                              soft_wrap=True)
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
    if mirror_from:
        from netslate.images.mirror import serve_options as mirror_serve_options

        options.update(mirror_serve_options(context, mirror_from, site, mirror_interval))
        err_console.print(f"chunk mirror of {options['mirror_from']} for site {site or '(all)'}", soft_wrap=True)
    if static not in ("auto", "nginx", "off"):
        raise UserError(f"--static wants nginx, off or auto, got {static!r}")
    from netslate.images.frontend import nginx_binary

    binary = nginx_binary()
    if static == "nginx" and binary is None:
        raise UserError("--static nginx: nginx is not installed (apt-get install nginx), or use --static off")
    if static != "off" and binary is not None:
        import os
        import socket

        with socket.socket() as s:  # a free private port for the app; nginx takes the public one
            s.bind(("127.0.0.1", 0))
            upstream_port = s.getsockname()[1]
        from netslate.server.limits import JSON_LIMIT, LIMITS

        options["static_front"] = {"listen": (host, port), "upstream_port": upstream_port, "binary": binary,
                                   "workers": static_workers or os.cpu_count() or 2, "default_body_limit": JSON_LIMIT,
                                   "body_limits": [(lim.path.pattern, lim.max_bytes) for lim in LIMITS],
                                   # every limited route under /api/v1 needs a role (tests/images/test_serving_front.py checks it)
                                   "credential_required": [lim.path.pattern for lim in LIMITS if lim.path.pattern.startswith("/api/v1/")]}
        err_console.print(f"static front: nginx on {host}:{port}, the app on 127.0.0.1:{upstream_port}", soft_wrap=True)
        host, port = "127.0.0.1", upstream_port
    long_running()
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
