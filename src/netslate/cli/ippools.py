"""`netslate config ippool ...`: named IP pools that `network.mode: pool` leases addresses from."""

from __future__ import annotations

from typing import Optional

import typer

from netslate.cli.common import console, emit, state, table

app = typer.Typer(help="Named IP pools for `network.mode: pool` (one stable address per machine).", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON.")


def _actor() -> str:
    from netslate.audit import default_actor

    return default_actor()


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
    st = state(ctx)
    if st.remote:
        data = st.api().post("/api/v1/ippools", json={"name": name, "range": range_, "prefix": prefix, "gateway": gateway, "dns": dns or []})
    else:
        from netslate.config import ippools

        data = ippools.add_pool(st.context(), name, range_, prefix, gateway, dns or [], _actor())
    emit(data, json_, lambda d: console.print(f"IP pool {d['name']}: {d['range']} in {d['subnet']}, {d['size']} addresses"))


@app.command("list")
def list_(ctx: typer.Context, json_: bool = JSON):
    """List pools with their use."""
    st = state(ctx)
    if st.remote:
        data = st.api().get("/api/v1/ippools")
    else:
        from netslate.config import ippools

        data = ippools.list_pools(st.context())
    emit(data, json_, lambda rows: table(["name", "range", "subnet", "gateway", "dns", "leased", "free"],
                                         [[r["name"], r["range"], r["subnet"], r["gateway"], ",".join(r["dns"]), r["leased"], r["free"]] for r in rows]))


@app.command("show")
def show(ctx: typer.Context, name: str, json_: bool = JSON):
    """Show pool NAME and every lease in it."""
    st = state(ctx)
    if st.remote:
        data = st.api().get(f"/api/v1/ippools/{name}")
    else:
        from netslate.config import ippools

        data = ippools.show_pool(st.context(), name)

    def render(d):
        console.print(f"{d['name']}: {d['range']} in {d['subnet']} gateway {d['gateway'] or '-'} dns {','.join(d['dns']) or '-'} "
                      f"({d['leased']} leased, {d['free']} free)")
        table(["address", "machine", "leased at"], [[x["address"], x["machine"] or x["machine_id"], x["leased_at"]] for x in d["leases"]])

    emit(data, json_, render)


@app.command("rm")
def rm(ctx: typer.Context, name: str, force: bool = typer.Option(False, "--force", help="Also drop its leases."), json_: bool = JSON):
    """Remove pool NAME (refused while it has leases, unless --force)."""
    st = state(ctx)
    if st.remote:
        data = st.api().delete(f"/api/v1/ippools/{name}", params={"force": force})
    else:
        from netslate.config import ippools

        data = ippools.remove_pool(st.context(), name, _actor(), force)
    emit(data, json_, lambda d: console.print(f"IP pool {d['name']} removed ({d['released']} lease(s) released)"))


@app.command("release")
def release(ctx: typer.Context, name: str, machine: str, json_: bool = JSON):
    """Free MACHINE's address in pool NAME (its next bundle leases the lowest free one again)."""
    st = state(ctx)
    if st.remote:
        data = st.api().delete(f"/api/v1/ippools/{name}/leases/{machine}")
    else:
        from netslate.config import ippools

        data = ippools.release(st.context(), name, machine, _actor())
    emit(data, json_, lambda d: console.print(f"released {d['address']} from {d['machine'] or d['machine_id']} (pool {d['pool']})"))
