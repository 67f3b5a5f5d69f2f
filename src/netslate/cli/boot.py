"""`netslate boot ...`: profiles, rules (working/active), policies, events, explain."""

import json
from typing import Optional

import typer

from netslate.cli.common import console, emit, state, table
from netslate.errors import UserError

app = typer.Typer(help="Network boot: profiles, rules, policies, events, explain.", no_args_is_help=True)
profile_app = typer.Typer(help="Boot profiles: image + version or tag + mode + kernel arguments; or local / menu.", no_args_is_help=True)
rules_app = typer.Typer(help="Boot rules: edit the working set, diff, activate.", no_args_is_help=True)
policy_app = typer.Typer(help="What happens to machines nobody approved yet, per site.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")
app.add_typer(rules_app, name="rules")
app.add_typer(policy_app, name="policy")


# ------------------------------------------------------------------ profiles


def _render_profiles(rows: list[dict]) -> None:
    table(["name", "kind", "image", "ref", "mode", "console", "args"],
          [[p["name"], p["kind"], p["image"], p["ref"], p["mode"], p["console"], " ".join(p["args"])] for p in rows])


@profile_app.command("add")
def profile_add(
    ctx: typer.Context,
    name: str,
    kind: str = typer.Option("image", "--kind", help="image, local (boot the local disk) or menu (pick a version)."),
    image: Optional[str] = typer.Option(None, "--image"),
    ref: Optional[str] = typer.Option(None, "--ref", help="Version number or tag (for menu: the tag to mark)."),
    mode: str = typer.Option("ram", "--mode"),
    arg: list[str] = typer.Option([], "--arg", help="Extra kernel argument (repeatable)."),
    console_: Optional[str] = typer.Option(None, "--console", help="Adds console=VALUE, e.g. ttyS0,115200n8."),
    note: str = typer.Option("", "--note"),
    replace: bool = typer.Option(False, "--replace", help="Change an existing profile."),
    json_: bool = typer.Option(False, "--json"),
):
    """Add a boot profile."""
    from netslate.services.boot import ProfileRequest

    data = state(ctx).services.boot.add_profile(ProfileRequest(name=name, kind=kind, image=image, ref=ref, mode=mode, args=arg,
                                                               console=console_, note=note, replace=replace))
    emit(data, json_, lambda d: console.print(f"profile {d['name']} saved"))


@profile_app.command("list")
def profile_list(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """List profiles."""
    data = state(ctx).services.boot.list_profiles()
    emit(data, json_, _render_profiles)


@profile_app.command("show")
def profile_show(ctx: typer.Context, name: str, json_: bool = typer.Option(False, "--json")):
    """Show one profile and the rules that use it."""
    data = state(ctx).services.boot.show_profile(name)
    emit(data, json_, lambda d: (_render_profiles([d]), console.print(f"used by: {', '.join(d['used_by']) or '-'}")))


@profile_app.command("rm")
def profile_rm(ctx: typer.Context, name: str):
    """Remove a profile (refused while a rule or policy uses it)."""
    state(ctx).services.boot.remove_profile(name)
    console.print(f"removed profile {name}")


# ------------------------------------------------------------------ rules


def _render_rules(d: dict) -> None:
    table(["name", "priority", "specificity", "selectors", "profile"],
          [[r["name"], r["priority"], r["specificity"], json.dumps(r["selectors"], sort_keys=True), r["profile"]] for r in d["rules"]],
          title=f"{d['ruleset']} rule set (active version {d['active_version']})")


@rules_app.command("add")
def rules_add(
    ctx: typer.Context,
    name: str,
    selectors: list[str] = typer.Argument(None, help="KEY=VALUE: mac, uuid, serial, manufacturer, product, arch, platform, group, label=K=V."),
    profile: str = typer.Option(..., "--profile"),
    priority: int = typer.Option(0, "--priority", help="Higher wins; then the more specific rule."),
    replace: bool = typer.Option(False, "--replace"),
    json_: bool = typer.Option(False, "--json"),
):
    """Add a rule to the working set (a tie with another rule is refused)."""
    from netslate.boot.rules import parse_selector_args
    from netslate.services.boot import RuleRequest

    sel = parse_selector_args(selectors or [])
    data = state(ctx).services.boot.add_rule(RuleRequest(name=name, profile=profile, priority=priority, selectors=sel, replace=replace))
    emit(data, json_, lambda d: console.print(f"rule {d['name']} saved in the working set (run: netslate boot rules activate)"))


@rules_app.command("rm")
def rules_rm(ctx: typer.Context, name: str):
    """Remove a rule from the working set."""
    state(ctx).services.boot.remove_rule(name)
    console.print(f"removed rule {name} from the working set")


@rules_app.command("list")
def rules_list(
    ctx: typer.Context,
    working: bool = typer.Option(False, "--working", help="The working set (default)."),
    active: bool = typer.Option(False, "--active", help="The active set (what boots use)."),
    json_: bool = typer.Option(False, "--json"),
):
    """List the working or active rule set, in evaluation order."""
    if working and active:
        raise UserError("give --working or --active, not both")
    ruleset = "active" if active else "working"
    data = state(ctx).services.boot.list_rules(ruleset)
    emit(data, json_, _render_rules)


@rules_app.command("diff")
def rules_diff(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """What `activate` would change: active → working."""
    data = state(ctx).services.boot.diff_rules()

    def render(d):
        if not d["changed_count"]:
            console.print("no changes: the working set equals the active set")
        for r in d["added"]:
            console.print(f"[green]+ {r['name']}[/green] priority {r['priority']} {json.dumps(r['selectors'], sort_keys=True)} → {r['profile']}", highlight=False)
        for r in d["removed"]:
            console.print(f"[red]- {r['name']}[/red] priority {r['priority']} {json.dumps(r['selectors'], sort_keys=True)} → {r['profile']}", highlight=False)
        for c in d["changed"]:
            console.print(f"[yellow]~ {c['name']}[/yellow] {json.dumps(c['from'], sort_keys=True)} → {json.dumps(c['to'], sort_keys=True)}", highlight=False)

    emit(data, json_, render)


@rules_app.command("activate")
def rules_activate(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """Make the working set active, atomically (recorded in the audit log)."""
    data = state(ctx).services.boot.activate_rules()
    emit(data, json_, lambda d: console.print(f"activated rule set version {d['active_version']} ({d['rules']} rules)"))


# ------------------------------------------------------------------ policy


@policy_app.command("set")
def policy_set(
    ctx: typer.Context,
    policy: str = typer.Argument(..., help="hold or boot-default."),
    site: str = typer.Option("default", "--site"),
    retry_seconds: Optional[int] = typer.Option(None, "--retry-seconds", help="How often a held machine asks again."),
    default_profile: Optional[str] = typer.Option(None, "--default-profile", help="Profile for machines no rule matches ('' to clear)."),
    json_: bool = typer.Option(False, "--json"),
):
    """Set a site's policy for machines nobody approved yet."""
    from netslate.services.boot import PolicyRequest

    data = state(ctx).services.boot.set_policy(PolicyRequest(site=site, policy=policy, retry_seconds=retry_seconds,
                                                             default_profile=default_profile))
    emit(data, json_, lambda d: console.print(f"site {d['site']}: {d['policy']} (retry every {d['retry_seconds']} s)"))


@policy_app.command("list")
def policy_list(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """List per-site policies."""
    data = state(ctx).services.boot.list_policies()
    emit(data, json_, lambda rows: table(["site", "policy", "retry s", "default profile"],
                                         [[p["site"], p["policy"], p["retry_seconds"], p["default_profile"]] for p in rows]))


# ------------------------------------------------------------------ events, explain


@app.command("events")
def events(
    ctx: typer.Context,
    limit: int = typer.Option(100, "--limit"),
    machine: Optional[str] = typer.Option(None, "--machine", help="Id, MAC, UUID or name."),
    json_: bool = typer.Option(False, "--json"),
):
    """Boot scripts served, newest first: machine, rule, profile, image version."""
    data = state(ctx).services.boot.events(limit, machine)
    emit(data, json_, lambda rows: table(
        ["at", "machine", "mac", "kind", "rule", "profile", "image", "pinned"],
        [[e["at"], e["machine"], e["mac"], e["kind"], e["rule"], e["profile"],
          f"{e['image']}@{e['version']}" if e["image"] else "", "yes" if e["pinned"] else ""] for e in rows]))


@app.command("explain")
def explain(
    ctx: typer.Context,
    ident: str = typer.Argument(..., help="MAC or SMBIOS UUID."),
    arch: Optional[str] = typer.Option(None, "--arch", help="As iPXE would report it (x86_64, i386, ...)."),
    platform: Optional[str] = typer.Option(None, "--platform", help="pcbios or efi."),
    address: Optional[str] = typer.Option(None, "--address", help="The machine's IP address (picks its site by subnet)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Server URL to put in the script (default: the --server URL, "
                                           "else the first advertised address, else http://localhost:8080)."),
    json_: bool = typer.Option(False, "--json"),
):
    """Which rule matches a machine and why, and the script it would be served."""
    data = state(ctx).services.boot.explain(ident, arch, platform, address, base_url)

    def render(d):
        console.print(f"machine: {d['machine'] if d['known'] else 'unknown'}  site: {d['site']}  policy: {d['policy']['policy']}", highlight=False)
        console.print(f"decision: {d['kind']}  rule: {d['rule']}  profile: {d['profile']}  image: "
                      f"{(d['image'] or '-')}@{d['version'] if d['version'] is not None else '-'}  reason: {d.get('reason', '-')}", highlight=False)
        table(["rule", "priority", "specificity", "matches", "selectors"],
              [[r["name"], r["priority"], r["specificity"], "yes" if r["matches"] else "no",
                "; ".join(f"{s['selector']}={s['want']} ({'ok' if s['match'] else 'have ' + str(s['have'])})" for s in r["selectors"])]
               for r in d["rules"]["rules"]])
        bp = d.get("boot_path")
        if bp:
            last, nxt = bp["last"], bp["next"]
            console.print(f"boot path last: {last['label']}" + (f" (TFTP {last['first_file']})" if last["first_file"] else "")
                          + (f", boot script at {last['last_script_at']}" if last["last_script_at"] else ""), highlight=False, markup=False)
            console.print(f"boot path next: {nxt['label']}" + (f" reading {nxt['file']}" if nxt["file"] else "")
                          + f" → {nxt['boots']}", highlight=False, markup=False)
        console.print(d["script"], highlight=False, markup=False, soft_wrap=True)  # exact lines, no wrapping

    emit(data, json_, render)


@app.command("pxelinux")
def pxelinux(
    ctx: typer.Context,
    base_url: str = typer.Option(..., "--base-url", help="Server URL the legacy clients fetch kernels from."),
    json_: bool = typer.Option(False, "--json"),
):
    """Show the pxelinux.cfg files netslate renders for the TFTP root."""
    data = state(ctx).services.boot.pxelinux(base_url)
    emit(data, json_, lambda files: [console.print(f"==> {k}\n{v}", highlight=False, markup=False, soft_wrap=True)
                                     for k, v in sorted(files.items())])


@app.command("files")
def files(ctx: typer.Context, json_: bool = typer.Option(False, "--json")):
    """What the TFTP root serves and what each file is for (which to give as DHCP option 67)."""
    data = state(ctx).services.boot.files()

    def render(d):
        console.print(f"TFTP root {d['root']}", highlight=False)
        for f in d["files"]:
            state_ = "pattern" if "<" in f["path"] else ("ok" if f["present"] else "MISSING")
            opt = ""
            if f["option67"]:
                opt = "  option 67 (only with iPXE-aware DHCP: loops otherwise)" if f["loops_with_plain_dhcp"] else "  option 67"
            console.print(f"{f['path']}  [{f['firmware']}, {f['package']}, {state_}]{opt}", highlight=False, markup=False)
            console.print(f"    {f['purpose']}", highlight=False, markup=False)
        console.print(f"per-machine pxelinux files: {len(d['per_machine'])}", highlight=False)

    emit(data, json_, render)


@app.command("site-loader")
def site_loader(
    ctx: typer.Context,
    server: list[str] = typer.Option(..., "--server", help="A boot server's base URL (http[s]://HOST[:PORT]); repeat, in order: the branch's first, central's second."),
    attempts: int = typer.Option(6, "--attempts", help="Rounds over the whole list before the machine reboots (1-50)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the script to this file (atomically) instead of printing it."),
    json_: bool = typer.Option(False, "--json"),
):
    """A site's own loop-free first stage (sites.ipxe): its DHCP/TFTP gives it to iPXE, and it tries
    each boot server in turn, so a dead branch server does not stop a boot (docs/sites.md)."""
    data = state(ctx).services.boot.site_loader(",".join(server), attempts)
    if output:
        from pathlib import Path  # lazy: CLI start-up

        from netslate.fsutil import atomic_write

        atomic_write(Path(output), data.script.encode(), mode=0o644)
    if json_ or not output:
        emit(data, json_, lambda d: console.print(d["script"], highlight=False, markup=False, soft_wrap=True, end=""))
    else:
        console.print(f"wrote {output}: tries {', '.join(data.servers)} in order, {attempts} rounds", highlight=False, markup=False)
