"""`netslate config ippool ...`: named IP pools that `network.mode: pool` leases addresses from."""

from __future__ import annotations

from typing import Optional

import typer

from netslate.cli.common import console, emit, state, table

app = typer.Typer(help="Named IP pools for `network.mode: pool` (one stable address per machine).", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON.")


@app.command("add")
def add(
    ctx: typer.Context,
    name: str,
    range_: str = typer.Option(..., "--range", help="FIRST-LAST, e.g. 10.0.5.10-10.0.5.200"),
    prefix: int = typer.Option(..., "--prefix", help="Subnet prefix length, e.g. 24"),
    gateway: Optional[str] = typer.Option(None, "--gateway", help="Default gateway (inside the subnet; never leased)."),
    dns: Optional[list[str]] = typer.Option(None, "--dns", help="DNS server for leased machines (repeatable)."),
    json_: bool = JSON,
):
    """Create pool NAME."""
    from netslate.services.ippools import IpPoolRequest  # lazy: CLI start-up time

    data = state(ctx).services.ippools.add(IpPoolRequest(name=name, range=range_, prefix=prefix, gateway=gateway, dns=dns or []))
    emit(data, json_, lambda d: console.print(f"IP pool {d['name']}: {d['range']} in {d['subnet']}, {d['size']} addresses"))


@app.command("list")
def list_(ctx: typer.Context, json_: bool = JSON):
    """List pools with their use."""
    data = state(ctx).services.ippools.list()
    emit(data, json_, lambda rows: table(["name", "range", "subnet", "gateway", "dns", "leased", "free"],
                                         [[r["name"], r["range"], r["subnet"], r["gateway"], ",".join(r["dns"]), r["leased"], r["free"]] for r in rows]))


@app.command("show")
def show(ctx: typer.Context, name: str, json_: bool = JSON):
    """Show pool NAME and every lease in it."""
    data = state(ctx).services.ippools.show(name)

    def render(d):
        console.print(f"{d['name']}: {d['range']} in {d['subnet']} gateway {d['gateway'] or '-'} dns {','.join(d['dns']) or '-'} "
                      f"({d['leased']} leased, {d['free']} free)")
        table(["address", "machine", "leased at"], [[x["address"], x["machine"] or x["machine_id"], x["leased_at"]] for x in d["leases"]])

    emit(data, json_, render)


@app.command("rm")
def rm(ctx: typer.Context, name: str, force: bool = typer.Option(False, "--force", help="Also drop its leases."), json_: bool = JSON):
    """Remove pool NAME (refused while it has leases, unless --force)."""
    data = state(ctx).services.ippools.remove(name, force)
    emit(data, json_, lambda d: console.print(f"IP pool {d['name']} removed ({d['released']} lease(s) released)"))


@app.command("release")
def release(ctx: typer.Context, name: str, machine: str, json_: bool = JSON):
    """Free MACHINE's address in pool NAME (its next bundle leases the lowest free one again)."""
    data = state(ctx).services.ippools.release(name, machine)
    emit(data, json_, lambda d: console.print(f"released {d['address']} from {d['machine'] or d['machine_id']} (pool {d['pool']})"))
