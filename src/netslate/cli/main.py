"""Entry point. Every sub-app is registered here; errors become one line and exit code 2."""

import atexit
import gc
import os
import sys
from typing import Optional

# No cyclic garbage collection in a CLI command: its start-up makes ~300 000 long-lived objects
# (modules, classes, functions) and the collector's passes over them were ~10 % of a short
# command. Commands are bounded batch work whose garbage goes by reference counting; `serve`, the
# one that runs for good, turns collection back on (cli.common.long_running). At exit the
# interpreter's own last passes over the same objects took ~0.1 s (a quarter of `image list`):
# frozen first, they are skipped (atexit runs before them; files are closed by `with`, not by GC).
gc.disable()
atexit.register(gc.freeze)

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
    ca: Optional[str] = typer.Option(None, "--ca", envvar="NETSLATE_CA", help="For an https --server: the certificate's pin (sha256:HEX, as `netslate serve` prints) or a PEM file (the server's certificate or its CA)."),
):
    ctx.obj = CliState(data_dir=data_dir, database_url=database_url, server=server, token=token, ca=ca)


# command name -> (module, attribute, is a sub-app). Only the invoked command's module is imported,
# so `netslate image pull` does not pay for importing libvirt, SQLAlchemy models of every part, etc.
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "image": ("netslate.cli.images", "app", True),
    "key": ("netslate.cli.keys", "app", True),
    "token": ("netslate.cli.tokens", "app", True),
    "user": ("netslate.cli.users", "user_app", True),
    "directory": ("netslate.cli.users", "directory_app", True),
    "entitlement": ("netslate.cli.users", "entitlement_app", True),
    "serve": ("netslate.cli.serve", "serve", False),
    "config": ("netslate.cli.config", "app", True),
    "site": ("netslate.cli.discovery", "site_app", True),
    "server": ("netslate.cli.discovery", "server_app", True),
    "dns": ("netslate.cli.discovery", "dns_app", True),
    "machine": ("netslate.cli.machine", "app", True),
    "boot": ("netslate.cli.boot", "app", True),
    "host": ("netslate.cli.desktops", "host_app", True),
    "pool": ("netslate.cli.desktops", "pool_app", True),
    "desktop": ("netslate.cli.desktops", "desktop_app", True),
    "agent": ("netslate.cli.agent", "app", True),
    "fleet": ("netslate.cli.fleet", "app", True),
    "initramfs": ("netslate.cli.initramfs", "app", True),
    "mirror": ("netslate.cli.mirror", "app", True),
}
_GLOBAL_OPTIONS_WITH_VALUE = {"--data-dir", "--database-url", "--server", "--token", "--ca"}


def _invoked(argv: list[str]) -> str | None:
    """The command word in argv (after global options), or None."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _GLOBAL_OPTIONS_WITH_VALUE:
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        return word
    return None


def _register(argv: list[str] | None = None) -> None:
    import importlib

    wanted = _invoked(list(sys.argv[1:] if argv is None else argv))
    names = [wanted] if wanted in COMMANDS else list(COMMANDS)  # help or a typo: list them all
    for name in names:
        module, attr, is_group = COMMANDS[name]
        obj = getattr(importlib.import_module(module), attr)
        if is_group:
            app.add_typer(obj, name=name)
        else:
            app.command(name)(obj)


_register()


def _error(message: str) -> None:
    """One line on stderr. The message is text, not Rich markup: "http[s]://" or a name with
    brackets in it would otherwise lose the bracketed part."""
    from rich.markup import escape

    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def main() -> None:
    try:
        app(standalone_mode=False)
    except UserError as exc:
        _error(str(exc))
        sys.exit(exc.exit_code)
    except Exception as exc:  # usage errors and anything unexpected: one line, no traceback
        import errno

        kinds = {cls.__name__ for cls in type(exc).__mro__}  # typer vendors its own click
        if "Exit" in kinds:
            sys.exit(getattr(exc, "exit_code", 0))
        if "Abort" in kinds:
            sys.exit(130)
        if "ClickException" in kinds:
            _error(exc.format_message())
            sys.exit(2)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _error(f"disk full: {exc.filename or exc.strerror}; nothing was committed")
            sys.exit(2)
        if os.environ.get("NETSLATE_DEBUG"):
            raise
        _error(f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
