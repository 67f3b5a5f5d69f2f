import typer

from netslate.cli.common import console, emit, state

app = typer.Typer(help="The server's signing key, and the key that seals secrets at rest.", no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context, json_: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Print the signing key's fingerprint and public key."""
    data = state(ctx).services.keys.list().keys[0]
    emit(data, json_, lambda d: console.print(f"{d['fingerprint']}\n[dim]ed25519 public key:[/dim] {d['public_key']}"))


@app.command("rewrap")
def rewrap(ctx: typer.Context, json_: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Rotate the key-encryption key: a new key, every stored secret re-wrapped, the old key deleted (admin)."""
    data = state(ctx).services.keys.rewrap()
    emit(data, json_, lambda d: console.print(
        f"key {d['key_id']} is current: {d['rewrapped']} sealed values re-wrapped"
        + (f"; retired {', '.join(d['retired'])}" if d["retired"] else "")))
