import typer

from netslate.cli.common import console, emit, state

app = typer.Typer(help="The server's signing key.", no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context, json_: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Print the signing key's fingerprint and public key."""
    data = state(ctx).services.keys.list().keys[0]
    emit(data, json_, lambda d: console.print(f"{d['fingerprint']}\n[dim]ed25519 public key:[/dim] {d['public_key']}"))
