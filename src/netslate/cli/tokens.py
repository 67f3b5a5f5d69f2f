import typer

from netslate.cli.common import console, emit, state, table

app = typer.Typer(help="API tokens (admin, operator, viewer).", no_args_is_help=True)


@app.command("create")
def create(ctx: typer.Context, name: str, role: str = typer.Option("viewer", "--role"), json_: bool = typer.Option(False, "--json")):
    """Create a token; it is shown once."""
    st = state(ctx)
    if st.remote:
        data = st.api().post("/api/v1/tokens", json={"name": name, "role": role})
    else:
        from netslate.server.auth import create_token

        data = {"name": name, "role": role, "token": create_token(st.context(), name, role)}
    emit(data, json_, lambda d: console.print(d["token"]))


@app.command("list")
def list_(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """List tokens (names and roles; secrets are never stored)."""
    st = state(ctx)
    if st.remote:
        data = st.api().get("/api/v1/tokens")
    else:
        from netslate.server.auth import list_tokens

        data = list_tokens(st.context())
    emit(data, json_, lambda d: table(["name", "role", "created"], [[t["name"], t["role"], t["created_at"]] for t in d]))


@app.command("rm")
def rm(ctx: typer.Context, name: str):
    """Revoke a token."""
    st = state(ctx)
    if st.remote:
        st.api().delete(f"/api/v1/tokens/{name}")
    else:
        from netslate.server.auth import remove_token

        remove_token(st.context(), name)
    console.print(f"revoked {name}")
