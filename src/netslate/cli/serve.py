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
    app = create_app(context, {"listen": (host, port)})
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
