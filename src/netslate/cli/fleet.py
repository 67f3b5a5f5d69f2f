"""`netslate fleet status`: every machine's state, image, config generation, health and flags."""

from typing import Optional

import typer

from netslate.cli.common import console, emit, state, table

app = typer.Typer(help="Fleet status: what every machine booted, applied and reported.", no_args_is_help=True)


def _render(data: dict) -> None:
    rows = []
    for m in data["machines"]:
        img = f"{m['image']}@{m['version']}" if m["image"] else ""
        if img and m["image_source"] == "cache":
            img += " (cache)"
        gen = "" if m["generation"] is None else str(m["generation"])
        if gen and m["config_source"] == "cache":
            gen += " (cache)"
        health = "" if m["healthy"] is None else ("ok" if m["healthy"] else "FAILED")
        rows.append([m["id"], m["name"] or m["hostname"] or "", m["state"], m.get("trust", "none"), img, gen, health,
                     ", ".join(m["flags"]), m["last_report"] or ""])
    table(["id", "name", "state", "trust", "image", "generation", "health", "flags", "last report"], rows, title="fleet")
    s = data["summary"]
    console.print(" ".join(f"{k}={v}" for k, v in s["states"].items()) + f"  flagged={s['flagged']}", highlight=False)
    b = data.get("branch")
    if b:  # a branch server over its site's standby (issue 15)
        if b["read_only"]:
            console.print(f"READ-ONLY since {b['read_only_since']}: central site unreachable; "
                          f"{b['outbox_pending']} events wait in the outbox", highlight=False)
        else:
            console.print(f"branch standby: replication lag {b['replication_lag_s']} s, outbox {b['outbox_pending']}", highlight=False)


@app.command("status")
def status(ctx: typer.Context, state_: Optional[str] = typer.Option(None, "--state", help="Only machines in this state."),
           json_: bool = typer.Option(False, "--json")):
    """The fleet table (state: discovered, booting, configured, degraded, offline)."""
    emit(state(ctx).services.fleet.status(state_), json_, _render)
