"""`netslate machine ...`: the machine inventory (list, show, add, approve, label, rm, pin, unpin)."""

from typing import Optional

import typer

from netslate.cli.common import console, emit, state, table
from netslate.errors import UserError

app = typer.Typer(help="Machines: inventory, approval, labels, pins.", no_args_is_help=True)


def _kv(items: list[str], what: str = "label") -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UserError(f"{what} {item!r} wants KEY=VALUE")
        out[k] = v
    return out


def _render_list(rows: list[dict]) -> None:
    table(
        ["id", "name", "state", "trust", "macs", "uuid", "labels", "pin", "last seen"],
        [[m["id"], m["name"], m["state"], m.get("trust", "none"), " ".join(m["macs"]), m["uuid"],
          ",".join(f"{k}={v}" for k, v in sorted(m["labels"].items())),
          f"{m['pin']['image']}@{m['pin']['version']}" if m["pin"] else "", m["last_seen"]] for m in rows],
    )


def _render_one(m: dict) -> None:
    for key in ("id", "name", "state", "approved", "trust", "macs", "uuid", "serial", "manufacturer", "product", "hostname",
                "labels", "group", "pin", "first_seen", "last_seen"):
        console.print(f"[bold]{key}[/bold]: {m.get(key)}", highlight=False)
    if m.get("boots"):
        table(["at", "kind", "rule", "profile", "image"], [[e["at"], e["kind"], e["rule"], e["profile"],
              f"{e['image']}@{e['version']}" if e["image"] else ""] for e in m["boots"]], title="recent boots")


@app.command("list")
def list_(ctx: typer.Context, state_: Optional[str] = typer.Option(None, "--state", help="Only machines in this state (discovered, approved, ...)."),
          json_: bool = typer.Option(False, "--json")):
    """List machines."""
    emit(state(ctx).services.machines.list(state_), json_, _render_list)


IDENT_HELP = "Id, name, MAC, SMBIOS UUID or serial (prefix id:, name:, mac:, uuid:, serial: to pick one reading)."


@app.command("show")
def show(ctx: typer.Context, ident: str = typer.Argument(..., help=IDENT_HELP), json_: bool = typer.Option(False, "--json")):
    """Show one machine and its recent boots."""
    emit(state(ctx).services.machines.show(ident), json_, _render_one)


@app.command("add")
def add(
    ctx: typer.Context,
    mac: list[str] = typer.Option([], "--mac", help="A MAC address (repeat for several NICs)."),
    uuid: Optional[str] = typer.Option(None, "--uuid", help="SMBIOS UUID."),
    serial: Optional[str] = typer.Option(None, "--serial"),
    name: Optional[str] = typer.Option(None, "--name"),
    hostname: Optional[str] = typer.Option(None, "--hostname"),
    label: list[str] = typer.Option([], "--label", help="KEY=VALUE (repeatable)."),
    group: Optional[str] = typer.Option(None, "--group", help="Tree path, e.g. /lab/pool1."),
    json_: bool = typer.Option(False, "--json"),
):
    """Register a machine (approved at once)."""
    from netslate.services.machines import MachineCreate

    request = MachineCreate(macs=mac, uuid=uuid, serial=serial, name=name, hostname=hostname, labels=_kv(label), group=group)
    data = state(ctx).services.machines.add(request)
    emit(data, json_, lambda d: console.print(f"added machine {d['id']}"))


@app.command("approve")
def approve(ctx: typer.Context, ident: str = typer.Argument(..., help=IDENT_HELP),
            enrollment: Optional[int] = typer.Option(None, "--enrollment", help="The TPM enrollment to approve when several wait (machine enrollments)."),
            json_: bool = typer.Option(False, "--json")):
    """Approve a discovered (held) machine and its TPM enrollment waiting, if any; its next boot attempt gets its script."""
    if enrollment is not None:
        from netslate.services.enrollment import EnrollmentApproval  # lazy: CLI start-up time

        data = state(ctx).services.enrollment.approve(ident, EnrollmentApproval(enrollment=enrollment))
        emit(data, json_, lambda d: console.print(f"approved TPM enrollment {d['id']} of machine {d['machine_id']}"))
        return
    data = state(ctx).services.machines.approve(ident)
    emit(data, json_, lambda d: console.print(f"approved machine {d['id']}"))


@app.command("label")
def label_(
    ctx: typer.Context,
    ident: str = typer.Argument(..., help=IDENT_HELP),
    labels: list[str] = typer.Argument(None, help="KEY=VALUE to set."),
    rm: list[str] = typer.Option([], "--rm", help="Label key to remove (repeatable)."),
    hostname: Optional[str] = typer.Option(None, "--hostname"),
    group: Optional[str] = typer.Option(None, "--group"),
    name: Optional[str] = typer.Option(None, "--name"),
    json_: bool = typer.Option(False, "--json"),
):
    """Set or remove labels (and hostname, group, name)."""
    from netslate.services.machines import LabelChange

    change = LabelChange(set=_kv(labels or []), remove=rm, hostname=hostname, group=group, name=name)
    data = state(ctx).services.machines.label(ident, change)
    emit(data, json_, lambda d: console.print(f"machine {d['id']} labels: {d['labels']}", highlight=False))


@app.command("rm")
def rm(ctx: typer.Context, ident: str = typer.Argument(..., help=IDENT_HELP)):
    """Forget a machine (its boot history stays, without the link)."""
    data = state(ctx).services.machines.remove(ident)
    console.print(f"removed machine {data.id}")


@app.command("pin")
def pin(ctx: typer.Context, ident: str = typer.Argument(..., help=IDENT_HELP),
        image: str = typer.Argument(..., help="IMAGE@VERSION (a tag is resolved now)."), json_: bool = typer.Option(False, "--json")):
    """Pin one machine to one image version, whatever the rules say (rollback of one machine)."""
    data = state(ctx).services.machines.pin(ident, image)
    emit(data, json_, lambda d: console.print(f"machine {d['id']} pinned to {d['pin']['image']}@{d['pin']['version']}"))


@app.command("unpin")
def unpin(ctx: typer.Context, ident: str = typer.Argument(..., help=IDENT_HELP)):
    """Remove a machine's pin; the rules decide again."""
    data = state(ctx).services.machines.unpin(ident)
    console.print(f"machine {data.id} unpinned")


@app.command("enroll")
def enroll(ctx: typer.Context, ident: str = typer.Argument(..., help=IDENT_HELP),
           ttl: Optional[int] = typer.Option(None, "--ttl", help="Seconds the token stays valid (default 3600)."),
           json_: bool = typer.Option(False, "--json")):
    """Print a one-time enrollment token for a machine without a TPM (shown once): enter it on the
    machine's console, or put it in netslate-enroll.token on its NETSLATE disk or ESP."""
    from netslate.services.enrollment import EnrollTokenCreate  # lazy: CLI start-up time

    data = state(ctx).services.enrollment.create_token(EnrollTokenCreate(machine=ident, ttl_seconds=ttl))
    emit(data, json_, lambda d: console.print(d["token"], highlight=False, soft_wrap=True))


@app.command("enrollments")
def enrollments(ctx: typer.Context, ident: Optional[str] = typer.Argument(None, help="Only this machine's. " + IDENT_HELP),
                status: Optional[str] = typer.Option(None, "--status", help="pending, approved or revoked."),
                json_: bool = typer.Option(False, "--json")):
    """TPM enrollments: which EK/AK claims which machine, their status and flags."""
    rows = state(ctx).services.enrollment.list(ident, status)
    emit(rows, json_, lambda rs: table(
        ["id", "machine", "status", "flags", "EK sha256", "EK cert", "activated", "approved by", "last attested"],
        [[r["id"], r["machine_id"], r["status"], ",".join(r["flags"]), r["ek_sha256"][:16], "yes" if r["ek_cert"] else "no",
          "yes" if r["activated"] else "no", r["approved_by"] or "", r["last_attested_at"] or ""] for r in rs]))


@app.command("revoke")
def revoke(ctx: typer.Context, ident: str = typer.Argument(..., help=IDENT_HELP), json_: bool = typer.Option(False, "--json")):
    """Revoke a machine's TPM enrollments and every credential it holds; its TPM is refused from now on."""
    data = state(ctx).services.enrollment.revoke(ident)
    emit(data, json_, lambda d: console.print(
        f"machine {d['machine_id']}: {d['enrollments_revoked']} TPM enrollment(s) and {d['credentials_revoked']} credential(s) revoked"))


policy_app = typer.Typer(help="Site policies that approve a TPM without an admin: EK fingerprint, serial, subnet.",
                         no_args_is_help=True)
app.add_typer(policy_app, name="enrollment-policy")


@policy_app.command("list")
def policy_list(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """The site policies."""
    rows = state(ctx).services.enrollment.policies()
    emit(rows, json_, lambda rs: table(["id", "kind", "value", "by", "at"],
                                       [[p["id"], p["kind"], p["value"], p["created_by"], p["created_at"]] for p in rs]))


@policy_app.command("add")
def policy_add(ctx: typer.Context, kind: str = typer.Argument(..., help="ek (EK SHA-256), serial or subnet."),
               value: str = typer.Argument(..., help="The EK fingerprint, serial or CIDR subnet."),
               json_: bool = typer.Option(False, "--json")):
    """Approve TPMs whose EK, serial or request subnet matches (EK is the strong one: serials and addresses can be claimed)."""
    from netslate.services.enrollment import EnrollmentPolicyCreate  # lazy: CLI start-up time

    data = state(ctx).services.enrollment.add_policy(EnrollmentPolicyCreate(kind=kind, value=value))
    emit(data, json_, lambda d: console.print(f"policy {d['id']}: approve TPMs with {d['kind']} {d['value']}", highlight=False))


@policy_app.command("rm")
def policy_rm(ctx: typer.Context, policy_id: int = typer.Argument(...)):
    """Remove a site policy."""
    data = state(ctx).services.enrollment.remove_policy(policy_id)
    console.print(f"removed policy {data.id}")
