"""`netslate config ...`: edit the working copy, review the diff, publish, roll back, explain."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from netslate.cli import ippools as ippools_cli
from netslate.cli.common import console, emit, state, table
from netslate.errors import UserError

app = typer.Typer(help="Layered configuration: tree, working copy, generations, bundles.", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON.")


app.add_typer(ippools_cli.app, name="ippool")


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"value is not valid YAML: {str(exc).splitlines()[0]}") from None


def _load_yaml_file(path: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def _config(ctx: typer.Context):
    return state(ctx).services.config


@app.command("set")
def set_(ctx: typer.Context, path: str, key: str, value: str, json_: bool = JSON):
    """Set KEY (dotted; brackets keep dots: sysctl\\[vm.swappiness]) at node PATH to a YAML VALUE."""
    data = _config(ctx).set_value(path, key, _yaml_value(value))
    emit(data, json_, lambda d: console.print(f"{d['path']}: set {key} (working copy revision {d['revision']})"))


@app.command("unset")
def unset(ctx: typer.Context, path: str, key: str, json_: bool = JSON):
    """Remove KEY from node PATH's document (the value is inherited again)."""
    data = _config(ctx).unset(path, key)
    emit(data, json_, lambda d: console.print(f"{d['path']}: unset {key}"))


@app.command("apply")
def apply(ctx: typer.Context, path: str, file: str, json_: bool = JSON):
    """Replace node PATH's working document with FILE.yaml (validated first; nothing is written on error)."""
    doc = _load_yaml_file(file)
    data = _config(ctx).put_node(path, doc if doc is not None else {})
    emit(data, json_, lambda d: console.print(f"{d['path']}: applied {file} (working copy revision {d['revision']})"))


@app.command("edit")
def edit(ctx: typer.Context, path: str):
    """Edit node PATH's working document in $EDITOR. Secrets must be set with `config set` when editing remotely."""
    config = _config(ctx)
    node = config.node_for_edit(path)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    text = yaml.safe_dump(node.document or {}, sort_keys=True, default_flow_style=False)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="netslate-config-", delete=False) as f:
        f.write(f"# {node.path} ({node.level}), working copy revision {node.revision or 0}\n" + text)
        tmp = f.name
    try:
        os.chmod(tmp, 0o600)
        subprocess.run([*shlex.split(editor), tmp], check=True)
        doc = _load_yaml_file(tmp)
    except subprocess.CalledProcessError:
        raise UserError("the editor failed; nothing was changed") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    if (doc or {}) == (node.document or {}):
        console.print("no changes")
        return
    data = config.put_node(path, doc or {}, expect_revision=node.revision or 0)
    console.print(f"{data.path}: saved (working copy revision {data.revision})")


@app.command("show")
def show(
    ctx: typer.Context,
    path: str,
    generation: Optional[int] = typer.Option(None, "--generation", "-g", help="Show a published generation instead of the working copy."),
    json_: bool = JSON,
):
    """Show node PATH's document (working copy, or --generation N). Secret values are redacted."""
    data = _config(ctx).node(path, generation)
    emit(data, json_, lambda d: console.print(f"[dim]# {d['path']} ({d['level']}) from {d['source']}[/dim]\n"
                                               + yaml.safe_dump(d["document"] or {}, sort_keys=True).rstrip(), highlight=False))


@app.command("diff")
def diff(ctx: typer.Context, json_: bool = JSON, machines: bool = typer.Option(True, "--machines/--no-machines", help="Also compute the per-machine effect.")):
    """What publishing the working copy would change: per node, and per machine."""
    data = _config(ctx).diff(machines)

    def render(d):
        if d["stale"]:
            console.print(f"[yellow]working copy is based on generation {d['working_base']}, but {d['latest']} is the newest[/yellow]")
        if not d["nodes"]:
            console.print("no pending changes")
            return
        for n in d["nodes"]:
            console.print(f"[bold]{n['node']}[/bold] ({n['state']})")
            for c in n["changes"]:
                console.print(f"  {c['key']}: {json.dumps(c['old'])} → {json.dumps(c['new'])}", highlight=False)
        eff = d.get("effect")
        if eff:
            console.print(f"machines changed: {eff['machines_changed']} of {eff['machines_total']}")
            for m in eff["machines"][:50]:
                console.print(f"  {m['name'] or m['id']} ({m['tree_path']}): " + ", ".join(c["key"] for c in m["changes"]), highlight=False)

    emit(data, json_, render)


@app.command("publish")
def publish(
    ctx: typer.Context,
    message: str = typer.Option(..., "-m", "--message", help="Why (recorded in the history and audit log)."),
    canary: Optional[str] = typer.Option(None, "--canary", help="Only machines under this subtree get the new generation until `promote`."),
    expect_base: Optional[int] = typer.Option(None, "--expect-base", help="Refuse unless the newest generation is still N (the one your diff was against)."),
    json_: bool = JSON,
):
    """Turn the working copy into the next generation, atomically."""
    config = _config(ctx)
    if expect_base is None:
        expect_base = config.status().working_base
    data = config.publish(message, canary, expect_base)
    emit(data, json_, lambda d: console.print(
        f"published generation {d['generation']}" + (f" as a canary on {d['canary']['path']}" if d["canary"] else "")))


@app.command("promote")
def promote(ctx: typer.Context, json_: bool = JSON):
    """Make the canary generation effective for every machine."""
    data = _config(ctx).promote()
    emit(data, json_, lambda d: console.print(f"generation {d['generation']} is now effective everywhere"))


@app.command("rollback")
def rollback(ctx: typer.Context, generation: int, message: str = typer.Option(..., "-m", "--message"), json_: bool = JSON):
    """Publish a new generation whose content equals GENERATION."""
    data = _config(ctx).rollback(generation, message)
    emit(data, json_, lambda d: console.print(
        f"published generation {d['generation']} = content of generation {d['rollback_of']}"
        + ("" if d["working_copy_followed"] else " (the working copy had pending edits and was left alone; it is now stale)")))


@app.command("reset")
def reset(ctx: typer.Context, json_: bool = JSON):
    """Discard the working copy's pending edits and restart from the newest generation."""
    data = _config(ctx).reset()
    emit(data, json_, lambda d: console.print(f"working copy reset to generation {d['working_base']}"))


@app.command("history")
def history(ctx: typer.Context, limit: int = typer.Option(50, "--limit"), json_: bool = JSON):
    """Published generations, newest first."""
    data = _config(ctx).history(limit)

    def flag(g):
        return "current" if g["current"] else f"canary {g['canary_path']}" if g["canary"] else ""

    emit(data, json_, lambda d: table(
        ["gen", "when", "author", "kind", "nodes", "state", "message"],
        [[g["generation"], g["created_at"], g["author"], g["kind"] + (f" of {g['rollback_of']}" if g["kind"] == "rollback" else ""),
          g["nodes_changed"], flag(g), g["message"]] for g in d]))


@app.command("status")
def status(ctx: typer.Context, json_: bool = JSON):
    """Current, newest and canary generations, and whether the working copy is stale."""
    data = _config(ctx).status()
    emit(data, json_, lambda d: console.print(
        f"current {d['current']}, newest {d['latest']}"
        + (f", canary {d['canary']['generation']} on {d['canary']['path']}" if d["canary"] else "")
        + (", working copy STALE" if d["stale"] else "")))


@app.command("explain")
def explain(ctx: typer.Context, machine: str, generation: Optional[int] = typer.Option(None, "--generation", "-g"), json_: bool = JSON):
    """The machine's resolved document and, for every leaf, the node it came from."""
    data = _config(ctx).explain(machine, generation)

    def render(d):
        from netslate.config.merge import get_pointer  # lazy: CLI start-up time

        console.print(f"machine {d['machine']['name'] or d['machine']['id']} at {d['machine']['tree_path']}, generation {d['generation']}")
        console.print("chain: " + " → ".join(c["node"] for c in d["chain"]))
        for ptr, src in d["sources"].items():
            console.print(f"  {ptr} = {json.dumps(get_pointer(d['document'], ptr))}  [dim]({src})[/dim]", highlight=False)
        lease = d.get("ip_lease")
        if lease:
            console.print(f"IP pool {lease.get('pool')}: " + (lease.get("cidr") or lease.get("error") or lease.get("note", "")), highlight=False)

    emit(data, json_, render)


@app.command("place")
def place(ctx: typer.Context, machine: str, path: str, json_: bool = JSON):
    """Put MACHINE at tree PATH (for example /site-a/cluster-1/pool-x)."""
    data = _config(ctx).place(machine, path)
    emit(data, json_, lambda d: console.print(f"machine {d['name'] or d['id']}: {d['previous']} → {d['tree_path']}"))


@app.command("enroll")
def enroll(ctx: typer.Context, machine: str, json_: bool = JSON):
    """Issue MACHINE a new credential (shown once) that unlocks its secrets in its bundle."""
    data = _config(ctx).enroll(machine)
    emit(data, json_, lambda d: console.print(d["credential"]))


@app.command("bundle")
def bundle(ctx: typer.Context, machine: str, credential: Optional[str] = typer.Option(None, "--credential", envvar="NETSLATE_MACHINE_CREDENTIAL")):
    """Print MACHINE's signed bundle (JSON), as the machine would receive it."""
    emit(_config(ctx).bundle(machine, credential), True)
