"""People: local users, LDAP/AD directories and entitlements (`netslate user|directory|entitlement`)."""

import sys
from typing import Optional

import typer

from netslate.cli.common import console, emit, state, table
from netslate.errors import UserError

user_app = typer.Typer(help="Local users (break-glass admins) and what any person resolves to.", no_args_is_help=True)
directory_app = typer.Typer(help="LDAP / Active Directory servers people log in through.", no_args_is_help=True)
entitlement_app = typer.Typer(help="Roles and desktop pools granted to directory groups or users.", no_args_is_help=True)


def _secret(what: str, from_stdin: bool) -> str:
    """A password from stdin (--password-stdin, or stdin is not a terminal) or a hidden prompt."""
    if from_stdin or not sys.stdin.isatty():
        value = sys.stdin.readline().rstrip("\r\n")
    else:
        value = typer.prompt(what, hide_input=True, confirmation_prompt=True)
    if not value:
        raise UserError(f"no {what.lower()} given")
    return value


# ---------------------------------------------------------------- user


@user_app.command("add")
def user_add(ctx: typer.Context, name: str, role: Optional[str] = typer.Option(None, "--role", help="admin, operator or viewer (default: none)"),
             password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
             json_: bool = typer.Option(False, "--json")):
    """Add a local user (the password is asked for, or read from stdin)."""
    from netslate.services.users import UserCreate

    data = state(ctx).services.users.add(UserCreate(name=name, password=_secret("Password", password_stdin), role=role))
    emit(data, json_, lambda d: console.print(f"added local user {d['name']} (role {d['role'] or 'none'})"))


@user_app.command("list")
def user_list(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """List local users (directory users are not listed: see `user explain`)."""
    data = state(ctx).services.users.list()
    emit(data, json_, lambda d: table(["name", "role", "created", "password changed"],
                                      [[u["name"], u["role"] or "-", u["created_at"], u["password_changed_at"]] for u in d]))


@user_app.command("rm")
def user_rm(ctx: typer.Context, name: str):
    """Remove a local user and end their sessions."""
    state(ctx).services.users.remove(name)
    console.print(f"removed local user {name}")


@user_app.command("passwd")
def user_passwd(ctx: typer.Context, name: str, password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin.")):
    """Set a local user's password (their open sessions end)."""
    state(ctx).services.users.passwd(name, _secret("New password", password_stdin))
    console.print(f"password of {name} changed; their sessions ended")


@user_app.command("role")
def user_role(ctx: typer.Context, name: str, role: str = typer.Argument(..., help="admin, operator, viewer or none"),
              json_: bool = typer.Option(False, "--json")):
    """Set a local user's role."""
    data = state(ctx).services.users.set_role(name, None if role == "none" else role)
    emit(data, json_, lambda d: console.print(f"{d['name']}: role {d['role'] or 'none'}"))


def _render_explain(d: dict) -> None:
    console.print(f"[bold]{d['user']}[/bold]: found in {d['found_in'] or 'no directory that answered'}"
                  + (f" as {d['dn']}" if d.get("dn") else ""), highlight=False)
    if d.get("refused"):
        console.print(f"[red]refused at login:[/red] {d['refused']}", highlight=False)
    console.print(f"role: {d['role'] or 'none'}", highlight=False)
    console.print(f"pools: {', '.join(d['pools']) or 'none'}", highlight=False)
    if d["groups"]:
        table(["group", "DN", "via", "counts", "gives"],
              [[g["name"], g["dn"] or "", "nested" if g["nested"] else "direct", "yes" if g["registered"] else "ignored",
                ", ".join(g["grants"]) or "-"] for g in d["groups"]], title="groups found")
    console.print("why:", highlight=False)
    for r in d["reasons"]:
        console.print(f"  - {r}", highlight=False, soft_wrap=True)
    for u in d.get("unavailable") or []:
        console.print(f"[yellow]not asked:[/yellow] {u}", highlight=False, soft_wrap=True)


@user_app.command("explain")
def user_explain(ctx: typer.Context, name: str, json_: bool = typer.Option(False, "--json")):
    """What a person resolves to: groups found, role, pools, and which entitlement gave what (or why not)."""
    emit(state(ctx).services.users.explain(name), json_, _render_explain)


# ---------------------------------------------------------------- directory


@directory_app.command("add")
def directory_add(
    ctx: typer.Context,
    name: str,
    uri: str = typer.Option(..., "--uri", help="ldaps://HOST[:PORT], or ldap://HOST[:PORT] with StartTLS"),
    base_dn: str = typer.Option(..., "--base-dn"),
    bind_dn: str = typer.Option(..., "--bind-dn", help="The service account that searches for users."),
    ca_file: str = typer.Option(..., "--ca-file", help="PEM file of the CA that signed the directory's certificate."),
    kind: str = typer.Option("ldap", "--kind", help="ldap (OpenLDAP and others) or ad (Active Directory)"),
    tls: Optional[str] = typer.Option(None, "--tls", help="ldaps or starttls (default: from the URI)"),
    user_filter: Optional[str] = typer.Option(None, "--user-filter", help="LDAP filter with {username}; default per kind."),
    group_attribute: Optional[str] = typer.Option(None, "--group-attribute", help="member, uniqueMember or memberUid"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the bind password from stdin."),
    json_: bool = typer.Option(False, "--json"),
):
    """Add a directory. The bind password is asked for (or read from stdin) and never shown again."""
    from pathlib import Path

    from netslate.services.directories import DirectoryCreate

    try:
        ca_pem = Path(ca_file).read_text()
    except OSError as exc:
        raise UserError(f"cannot read the CA file {ca_file}: {exc.strerror}") from None
    request = DirectoryCreate(name=name, kind=kind, uri=uri, base_dn=base_dn, bind_dn=bind_dn, ca_pem=ca_pem, tls=tls,
                              user_filter=user_filter, group_attribute=group_attribute,
                              bind_password=_secret("Bind password", password_stdin))
    data = state(ctx).services.directories.add(request)
    emit(data, json_, lambda d: console.print(f"added directory {d['name']} ({d['kind']}, {d['uri']}, {d['tls']})", highlight=False))


def _render_directory(d: dict) -> None:
    for key in ("name", "kind", "uri", "tls", "base_dn", "bind_dn", "user_filter", "group_attribute", "ca_subject", "position"):
        console.print(f"{key}: {d[key]}", highlight=False)
    console.print("bind password: set (never shown)" if d["bind_password_set"] else "bind password: not set", highlight=False)


@directory_app.command("list")
def directory_list(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """List directories in the order logins try them."""
    data = state(ctx).services.directories.list()
    emit(data, json_, lambda d: table(["#", "name", "kind", "uri", "tls", "base DN"],
                                      [[x["position"], x["name"], x["kind"], x["uri"], x["tls"], x["base_dn"]] for x in d]))


@directory_app.command("show")
def directory_show(ctx: typer.Context, name: str, json_: bool = typer.Option(False, "--json")):
    """Show a directory's settings (never its bind password)."""
    emit(state(ctx).services.directories.show(name), json_, _render_directory)


@directory_app.command("test")
def directory_test(ctx: typer.Context, name: str, user: Optional[str] = typer.Option(None, "--user", help="Also find this user and their groups."),
                   json_: bool = typer.Option(False, "--json")):
    """Connect with TLS, bind as the service account and read the base DN (and find --user)."""

    def render(d: dict) -> None:
        console.print(f"ok: {d['directory']} at {d['uri']} ({d['tls']}, {d['tls_version']}), bound as {d['bind_dn']}, "
                      f"base {d['base_dn']} readable; connect+bind {d['connect_bind_ms']} ms, total {d['total_ms']} ms", highlight=False)
        if d.get("user_found") is False:
            console.print(f"user {user}: not found", highlight=False)
        elif d.get("user"):
            u = d["user"]
            console.print(f"user {user}: {u['dn']}" + (f" — refused: {u['refused']}" if u["refused"] else ""), highlight=False)
            for g in u["groups"]:
                console.print(f"  group {g['name']} ({'nested' if g['nested'] else 'direct'}): {g['dn']}", highlight=False)

    emit(state(ctx).services.directories.test(name, user), json_, render)


@directory_app.command("rm")
def directory_rm(ctx: typer.Context, name: str):
    """Remove a directory (its users can no longer log in)."""
    state(ctx).services.directories.remove(name)
    console.print(f"removed directory {name}")


# ---------------------------------------------------------------- entitlement


@entitlement_app.command("add")
def entitlement_add(ctx: typer.Context, group: Optional[str] = typer.Option(None, "--group", help="Directory group: its name (cn) or DN."),
                    user: Optional[str] = typer.Option(None, "--user", help="A single user."),
                    role: Optional[str] = typer.Option(None, "--role", help="admin, operator or viewer"),
                    pool: Optional[str] = typer.Option(None, "--pool", help="A desktop pool."),
                    json_: bool = typer.Option(False, "--json")):
    """Grant a role or a desktop pool to a group or a user (the group becomes registered)."""
    from netslate.services.entitlements import EntitlementCreate

    if (group is None) == (user is None):
        raise UserError("give exactly one of --group and --user")
    if (role is None) == (pool is None):
        raise UserError("give exactly one of --role and --pool")
    request = EntitlementCreate(subject_kind="group" if group is not None else "user", subject=group if group is not None else user,
                                grant="role" if role is not None else "pool", value=role if role is not None else pool)
    data = state(ctx).services.entitlements.add(request)
    emit(data, json_, lambda d: console.print(f"#{d['id']}: {d['subject_kind']} {d['subject']} → {d['grant']} {d['value']}", highlight=False))


@entitlement_app.command("list")
def entitlement_list(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """List entitlements."""
    data = state(ctx).services.entitlements.list()
    emit(data, json_, lambda d: table(["#", "subject", "grant"], [[e["id"], f"{e['subject_kind']} {e['subject']}", f"{e['grant']} {e['value']}"] for e in d]))


@entitlement_app.command("rm")
def entitlement_rm(ctx: typer.Context, ident: int = typer.Argument(..., help="The entitlement's number (see `entitlement list`).")):
    """Remove an entitlement."""
    d = state(ctx).services.entitlements.remove(ident)
    console.print(f"removed #{d.id}: {d.subject_kind} {d.subject} → {d.grant} {d.value}", highlight=False)
