import typer

from netslate.cli.common import console, emit, state, table

app = typer.Typer(help="API tokens (admin, operator, viewer).", no_args_is_help=True)


@app.command("create")
def create(ctx: typer.Context, name: str, role: str = typer.Option("viewer", "--role"), json_: bool = typer.Option(False, "--json")):
    """Create a token; it is shown once."""
    from netslate.services.tokens import TokenRequest

    data = state(ctx).services.tokens.create(TokenRequest(name=name, role=role))
    emit(data, json_, lambda d: console.print(d["token"]))


@app.command("list")
def list_(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """List tokens (names and roles; secrets are never stored)."""
    data = state(ctx).services.tokens.list()
    emit(data, json_, lambda d: table(["name", "role", "created"], [[t["name"], t["role"], t["created_at"]] for t in d]))


@app.command("rm")
def rm(ctx: typer.Context, name: str):
    """Revoke a token."""
    state(ctx).services.tokens.remove(name)
    console.print(f"revoked {name}")
