"""Entry point. Every sub-app is registered here; errors become one line and exit code 2."""

import os
import sys
from typing import Optional

import typer

from netslate.cli.common import CliState, err_console
from netslate.errors import UserError

app = typer.Typer(
    name="netslate",
    help="netslate: stateless fleets from versioned, signed images and layered configuration.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _global(
    ctx: typer.Context,
    data_dir: Optional[str] = typer.Option(None, "--data-dir", envvar="NETSLATE_DATA_DIR", help="Data directory (default /var/lib/netslate)."),
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="NETSLATE_DATABASE_URL", help="SQLAlchemy URL (default: SQLite in the data directory)."),
    server: Optional[str] = typer.Option(None, "--server", envvar="NETSLATE_SERVER", help="Work against a remote server's API instead of the local data directory."),
    token: Optional[str] = typer.Option(None, "--token", envvar="NETSLATE_TOKEN", help="Bearer token for --server."),
):
    ctx.obj = CliState(data_dir=data_dir, database_url=database_url, server=server, token=token)


def _register() -> None:
    from netslate.cli import images, keys, serve, tokens

    app.add_typer(images.app, name="image")
    app.add_typer(keys.app, name="key")
    app.add_typer(tokens.app, name="token")
    app.command("serve")(serve.serve)
    from netslate.cli import config as config_cli

    app.add_typer(config_cli.app, name="config")
    from netslate.cli import discovery

    app.add_typer(discovery.site_app, name="site")
    app.add_typer(discovery.server_app, name="server")
    app.add_typer(discovery.dns_app, name="dns")
    from netslate.cli import boot as boot_cli, machine as machine_cli

    app.add_typer(machine_cli.app, name="machine")
    app.add_typer(boot_cli.app, name="boot")
    from netslate.cli import desktops as desktops_cli

    app.add_typer(desktops_cli.host_app, name="host")
    app.add_typer(desktops_cli.pool_app, name="pool")
    app.add_typer(desktops_cli.desktop_app, name="desktop")
    from netslate.cli import agent as agent_cli, fleet as fleet_cli

    app.add_typer(agent_cli.app, name="agent")
    app.add_typer(fleet_cli.app, name="fleet")
    from netslate.cli import initramfs as initramfs_cli

    app.add_typer(initramfs_cli.app, name="initramfs")


_register()


def main() -> None:
    try:
        app(standalone_mode=False)
    except UserError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # usage errors and anything unexpected: one line, no traceback
        import errno

        kinds = {cls.__name__ for cls in type(exc).__mro__}  # typer vendors its own click
        if "Exit" in kinds:
            sys.exit(getattr(exc, "exit_code", 0))
        if "Abort" in kinds:
            sys.exit(130)
        if "ClickException" in kinds:
            err_console.print(f"[red]error:[/red] {exc.format_message()}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            err_console.print(f"[red]error:[/red] disk full: {exc.filename or exc.strerror}; nothing was committed", highlight=False, soft_wrap=True)
            sys.exit(2)
        if os.environ.get("NETSLATE_DEBUG"):
            raise
        err_console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
