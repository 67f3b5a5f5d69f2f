import typer

from netslate.cli.common import console, emit, state

app = typer.Typer(help="The server's signing key.", no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context, json_: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Print the signing key's fingerprint and public key."""
    st = state(ctx)
    if st.remote:
        data = st.api().get("/api/v1/keys")["keys"][0]
    else:
        key = st.context().signing_key
        data = {"algorithm": "ed25519", "fingerprint": key.fingerprint, "public_key": key.public_b64}
    emit(data, json_, lambda d: console.print(f"{d['fingerprint']}\n[dim]ed25519 public key:[/dim] {d['public_key']}"))
