"""`netslate site`, `netslate server` and `netslate dns`: discovery from the command line."""

import sys
from pathlib import Path
from typing import Optional

import typer

from netslate.cli.common import console, emit, state, table

site_app = typer.Typer(help="Sites and their subnets (client address → site, closest servers first).", no_args_is_help=True)
subnet_app = typer.Typer(help="Subnets of a site.", no_args_is_help=True)
site_app.add_typer(subnet_app, name="subnet")
server_app = typer.Typer(help="netslate servers registered in the store (by `netslate serve --site`).", no_args_is_help=True)
dns_app = typer.Typer(help="DNS records for sites that run their own DNS server.", no_args_is_help=True)


def _render_sites(data: list[dict]) -> None:
    table(["site", "subnets", "servers", "description"],
          [[d["name"], " ".join(d["subnets"]) or "-", " ".join(d.get("servers", [])) or "-", d["description"]] for d in data])


def _replica(d: dict) -> str:
    """A branch server's standby: read-only or the replication lag (issue 15); '-' elsewhere."""
    if d.get("read_only") is None:
        return "-"
    what = "READ-ONLY" if d["read_only"] else f'lag {d["replication_lag_s"]} s' if d.get("replication_lag_s") is not None else "standby"
    if d.get("outbox_pending"):
        what += f', outbox {d["outbox_pending"]}'
    return what + (f' ({d["status_age_s"]} s ago)' if d.get("status_age_s") else "")


def _render_servers(data: list[dict]) -> None:
    table(["server", "site", "addresses", "port", "prio", "weight", "alive", "heartbeat", "replica"],
          [[d["name"], d["site"] or "-", " ".join(d["addresses"]) or "-", d["port"], d["priority"], d["weight"],
            "yes" if d["alive"] else "no", f'{d["heartbeat_age_s"]} s ago', _replica(d)] for d in data])


@site_app.command("add")
def site_add(ctx: typer.Context, name: str, description: str = typer.Option("", "--description", "-d"),
             json_: bool = typer.Option(False, "--json")):
    """Add a site."""
    data = state(ctx).services.sites.add(name, description)
    emit(data, json_, lambda d: console.print(f"added site {d['name']}"))


@site_app.command("list")
def site_list(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """List sites with their subnets and servers."""
    emit(state(ctx).services.sites.list(), json_, _render_sites)


@site_app.command("show")
def site_show(ctx: typer.Context, name: str, json_: bool = typer.Option(False, "--json")):
    """Show one site: subnets and servers (with heartbeat state)."""

    def render(d):
        console.print(f"[bold]{d['name']}[/bold] {d['description']}")
        console.print("subnets: " + (" ".join(d["subnets"]) or "-"))
        _render_servers(d["servers"])

    emit(state(ctx).services.sites.show(name), json_, render)


@site_app.command("rm")
def site_rm(ctx: typer.Context, name: str):
    """Remove a site and its subnets (servers keep running; they answer as site-less)."""
    state(ctx).services.sites.remove(name)
    console.print(f"removed site {name}")


@subnet_app.command("add")
def subnet_add(ctx: typer.Context, site: str, cidr: str, json_: bool = typer.Option(False, "--json")):
    """Map a subnet (IPv4 or IPv6 CIDR) to a site; the longest matching prefix wins."""
    data = state(ctx).services.sites.add_subnet(site, cidr)
    emit(data, json_, lambda d: console.print(f"site {d['name']}: {' '.join(d['subnets'])}"))


@subnet_app.command("rm")
def subnet_rm(ctx: typer.Context, site: str, cidr: str, json_: bool = typer.Option(False, "--json")):
    """Remove a subnet from a site."""
    data = state(ctx).services.sites.remove_subnet(site, cidr)
    emit(data, json_, lambda d: console.print(f"site {d['name']}: {' '.join(d['subnets']) or '-'}"))


@server_app.command("list")
def server_list(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """List registered servers; those silent for longer than 45 s are not alive and not published."""
    emit(state(ctx).services.servers.list(), json_, _render_servers)


@server_app.command("rm")
def server_rm(ctx: typer.Context, name: str):
    """Forget a server (a running one registers itself again at its next heartbeat)."""
    state(ctx).services.servers.remove(name)
    console.print(f"removed server {name}")


@dns_app.command("export")
def dns_export(ctx: typer.Context,
               format: str = typer.Option(..., "--format", help="bind (a zone file) or dnsmasq (srv-host=/host-record= lines)."),
               domain: str = typer.Option(..., "--domain", help="The zone, e.g. example.org."),
               site: Optional[str] = typer.Option(None, "--site", help="Priorities as seen from this site (one file per BIND view)."),
               serial: int = typer.Option(1, "--serial", help="SOA serial (bind)."),
               output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here (atomically) instead of stdout.")):
    """Write the records the built-in responder serves, for BIND or dnsmasq."""
    text = state(ctx).services.servers.dns_export(format, domain, site, serial)
    if output is None:
        sys.stdout.write(text)
    else:
        from netslate.fsutil import atomic_write

        atomic_write(output, text.encode())
        console.print(f"wrote {output}")
