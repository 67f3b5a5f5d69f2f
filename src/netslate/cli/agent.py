"""`netslate agent ...`: build the on-machine agent as a zipapp."""

from pathlib import Path

import typer

from netslate.cli.common import console, emit, human_bytes

app = typer.Typer(help="The on-machine agent (netslate-agent).", no_args_is_help=True)


@app.command("zipapp")
def zipapp_(output: Path = typer.Option(Path("netslate-agent.pyz"), "--output", "-o", help="Where to write the .pyz."),
            json_: bool = typer.Option(False, "--json")):
    """Build netslate-agent.pyz (stdlib only; runs with any python3 ≥ 3.9)."""
    from netslate.agent.install import build_zipapp

    info = build_zipapp(output)
    emit(info, json_, lambda d: console.print(f"wrote {d['output']} ({human_bytes(d['size'])}, {len(d['files'])} modules)", highlight=False))
