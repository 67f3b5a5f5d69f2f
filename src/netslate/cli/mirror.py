"""`netslate mirror`: a branch server's verified chunk mirror (issue 15 §2, docs/sites.md)."""

import typer

from netslate.cli.common import byte_progress, console, emit, human_bytes, state, table

app = typer.Typer(help="Chunk mirror of a branch server (serve --mirror-from): status and prefetch.", no_args_is_help=True)


def _render_status(d: dict) -> None:
    if not d["configured"]:
        console.print("this server mirrors nothing (start it with `netslate serve --site SITE --mirror-from URL`)")
        return
    console.print(f"upstream {d['upstream']}, site {d['site'] or '(all)'}; last pass {d['last_pass'] or 'never'}"
                  + (f" ({d['last_pass_seconds']} s)" if d["last_pass_seconds"] is not None else "")
                  + (", a pass is running" if d["pass_running"] else ""), soft_wrap=True)
    rows = [[f"{v['name']}@{v['version']}", "yes" if v["complete"] else "no", f"{v['chunks_present']}/{v['chunks_total']}",
             human_bytes(v["bytes_missing"]), v["last_sync"] or "-", v["reasons"][0] if v["reasons"] else ""]
            for v in d["versions"]]
    table(["version", "complete", "chunks", "missing", "last sync", "why"], rows)
    for v in d["versions"]:
        if v["last_error"]:
            console.print(f"{v['name']}@{v['version']}: {v['last_error']}", soft_wrap=True)
    for e in d["last_pass_errors"][:5]:
        console.print(f"error: {e}", soft_wrap=True)


@app.command("status")
def status(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """Per version this site's machines are assigned: chunks present and missing, bytes, last sync, errors."""
    emit(state(ctx).services.mirror.status(), json_, _render_status)


@app.command("sync")
def sync(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """Run one prefetch pass now (waits for a running one first); a progress bar on a terminal."""
    with byte_progress("mirror sync", None, enabled=not json_) as bar:
        task = bar.add_task("mirror sync: prefetching", total=None)
        data = state(ctx).services.mirror.sync_with_progress(lambda done, total: bar.update(task, completed=done, total=total or None))
    emit(data, json_,
         lambda d: console.print(f"{d['versions']} versions, fetched {human_bytes(d['bytes_fetched'])} in {d['seconds']} s"
                                 + "".join(f"\nerror: {e}" for e in d["errors"][:10]), soft_wrap=True))
