"""Shared CLI plumbing: global options, local-or-remote selection, JSON/table output, progress."""

import gc
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from netslate.errors import UserError

console = Console()
err_console = Console(stderr=True)


@dataclass
class CliState:
    data_dir: str | None = None
    database_url: str | None = None
    server: str | None = None
    token: str | None = None
    ca: str | None = None  # https --server: sha256:HEX pin or a PEM file
    _ctx: Any = field(default=None, repr=False)
    _services: Any = field(default=None, repr=False)

    @property
    def remote(self) -> bool:
        return bool(self.server)

    def context(self):
        """The local installation (data dir + database); the database opens on first use."""
        if self.remote:
            raise UserError("this command works on the local data directory only; drop --server")
        return self.own_context()

    def own_context(self):
        """This machine's data directory whatever --server says: for `serve` itself."""
        if self._ctx is None:
            from netslate.context import Context

            self._ctx = Context(self.data_dir, self.database_url).init(lazily=True)
        return self._ctx

    def api(self):
        from netslate.cli.remote import ApiClient

        return ApiClient(self.server, self.token, ca=self.ca)

    @property
    def services(self):
        """The services, local or over --server, chosen once here; commands never branch on it."""
        if self._services is None:
            from netslate.services import Services

            if self.server:
                from netslate.services.framework import ANONYMOUS

                self._services = Services.remote(self.api(), ANONYMOUS)
            else:
                from netslate.composition import Parts
                from netslate.identity.caller import local_principal  # not server.auth: it loads FastAPI (start-up)

                self._services = Services.local(Parts(self.context()), local_principal())
        return self._services


def long_running() -> None:
    """This command runs for good (`serve`): what start-up made leaves the collector's view
    (gc.freeze) and cyclic garbage collection is back on (cli/main.py turns it off)."""
    gc.freeze()
    gc.enable()


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if obj is None:
        obj = CliState()
        ctx.find_root().obj = obj
    return obj


def emit(data: Any, as_json: bool, render: Callable[[Any], None] | None = None) -> None:
    """Print `data` as JSON with --json, else through `render` (Rich)."""
    from netslate.services.framework import plain

    data = plain(data)
    if as_json or render is None:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    else:
        render(data)


def table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    console.print(t)


def human_bytes(n: int | float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def byte_progress(description: str, total: int | None, enabled: bool = True) -> Progress:
    """A Rich progress bar for byte-sized work; silent when stdout is not a terminal or with --json."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not enabled or not err_console.is_terminal or os.environ.get("CI") == "true",
        transient=True,
    )
