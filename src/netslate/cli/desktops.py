"""`netslate host`, `netslate pool` and `netslate desktop`: virtual desktop pools on libvirt."""

from pathlib import Path
from typing import Optional

import typer

from netslate.cli.common import console, emit, err_console, human_bytes, state, table

host_app = typer.Typer(help="Hypervisor hosts (libvirt URIs) that run desktops.", no_args_is_help=True)
pool_app = typer.Typer(help="Desktop pools: golden image, size, spare, addresses, consoles.", no_args_is_help=True)
desktop_app = typer.Typer(help="Desktops: request, release, consoles, snapshots, golden images.", no_args_is_help=True)
image_app = typer.Typer(help="Golden images: versioned qcow2 base disks.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Snapshots of persistent desktops (external qcow2 layers).", no_args_is_help=True)
desktop_app.add_typer(image_app, name="image")
desktop_app.add_typer(snapshot_app, name="snapshot")

JSON = typer.Option(False, "--json", help="Print JSON.")


# ---------- hosts ----------


@host_app.command("add")
def host_add(
    ctx: typer.Context, name: str, uri: str,
    accel: str = typer.Option("auto", "--accel", help="auto (kvm if libvirt offers it), kvm or tcg."),
    max_starting: int = typer.Option(4, "--max-starting", help="Desktops booting at once on this host."),
    reserve: int = typer.Option(512, "--reserve", help="MiB of memory kept for the host."),
    console_address: str = typer.Option("127.0.0.1", "--console-address", help="Address consoles listen on and .vv files point to."),
    label: Optional[list[str]] = typer.Option(None, "--label", help="KEY=VALUE, for pool --hosts selectors."),
    json_: bool = JSON,
):
    """Register a libvirt host (qemu:///system, qemu+ssh://HOST/system)."""
    from netslate.services.hosts import HostCreate

    data = state(ctx).services.hosts.add(HostCreate(name=name, uri=uri, accel=accel, max_starting=max_starting, reserve_mib=reserve,
                                                    console_address=console_address, labels=label))
    emit(data, json_, lambda d: (console.print(f"added host {d['name']} ({d['capacity'].get('cpus')} CPUs, "
                                               f"{d['capacity'].get('memory_mib')} MiB, {d['capacity'].get('domain_type')})"),
                                 _host_warnings(d)))


def _host_warnings(h) -> None:
    """One warning line each: the accelerator note (issue 11 #10) and a degraded host."""
    for key in ("accel_note", "degraded"):
        if h.get(key):
            err_console.print(f"warning: {h[key]}", highlight=False)


def _render_hosts(rows):
    table(["name", "uri", "reachable", "cpus", "memory MiB", "free MiB", "disk free", "desktops"],
          [[h["name"], h["uri"], h["reachable"], h["capacity"].get("cpus"), h["capacity"].get("memory_mib"),
            h["capacity"].get("free_memory_mib"), human_bytes(h["capacity"].get("disk_dir_free", 0)), h["desktops"]] for h in rows])


@host_app.command("list")
def host_list(ctx: typer.Context, json_: bool = JSON):
    """List hosts with their last known capacity."""
    emit(state(ctx).services.hosts.list(), json_, _render_hosts)


@host_app.command("show")
def host_show(ctx: typer.Context, name: str, json_: bool = JSON):
    """Show one host (capacity is read from libvirt now)."""
    emit(state(ctx).services.hosts.show(name), json_, lambda d: (_render_hosts([d]), _host_warnings(d)))


@host_app.command("rm")
def host_rm(ctx: typer.Context, name: str):
    """Remove a host that runs no desktops."""
    state(ctx).services.hosts.remove(name)
    console.print(f"removed host {name}")


# ---------- golden images ----------


@image_app.command("import")
def image_import(
    ctx: typer.Context, name: str, file: Path,
    kernel: Optional[Path] = typer.Option(None, "--kernel", help="Boot this kernel directly (no bootloader in the disk)."),
    initrd: Optional[Path] = typer.Option(None, "--initrd"),
    cmdline: Optional[str] = typer.Option(None, "--cmdline"),
    json_: bool = JSON,
):
    """Import FILE (qcow2 or raw) as the next version of golden image NAME."""
    data = state(ctx).services.desktops.image_import(name, file, kernel=kernel, initrd=initrd, cmdline=cmdline)
    emit(data, json_, lambda d: console.print(f"imported golden {d['name']}@{d['version']} ({human_bytes(d['virtual_size'])})"))


@image_app.command("from-image")
def image_from_image(ctx: typer.Context, name: str, image: str = typer.Argument(..., metavar="IMAGE@VERSION"), json_: bool = JSON):
    """A golden disk from a netslate image version (its rootfs as the disk, its kernel booted directly)."""
    from netslate.services.desktops import GoldenFromImage

    data = state(ctx).services.desktops.image_from_image(name, GoldenFromImage(image=image))
    emit(data, json_, lambda d: console.print(f"made golden {d['name']}@{d['version']} from {image}"))


@image_app.command("list")
def image_list(ctx: typer.Context, name: Optional[str] = typer.Argument(None), json_: bool = JSON):
    """List golden images and their versions."""
    emit(state(ctx).services.desktops.images(name), json_,
         lambda rows: table(["name", "version", "virtual", "on disk", "created"],
                            [[g["name"], g["version"], human_bytes(g["virtual_size"]), human_bytes(g["actual_size"]), g["created_at"]] for g in rows]))


@image_app.command("rm")
def image_rm(ctx: typer.Context, ref: str = typer.Argument(..., metavar="NAME@VERSION")):
    """Remove a golden version no pool or desktop uses."""
    from netslate.errors import UserError

    name, _, ver = ref.partition("@")
    if not ver.isdigit():
        raise UserError("give NAME@VERSION")
    state(ctx).services.desktops.image_remove(name, int(ver))
    console.print(f"removed golden {name}@{ver}")


# ---------- pools ----------


def _render_pools(rows):
    table(["name", "golden", "size", "spare", "max", "desktops", "states", "addresses", "display"],
          [[p["name"], f"{p['golden']}@{p['golden_version'] or 'newest'}", p["size"], p["spare"], p["max"], p.get("desktops"),
            " ".join(f"{k}={v}" for k, v in sorted((p.get("states") or {}).items())),
            f"{p.get('addresses_used', '?')}/{p.get('addresses_total', '?')}", p["display"]] for p in rows])


@pool_app.command("create")
def pool_create(
    ctx: typer.Context, name: str,
    golden: Optional[str] = typer.Option(None, "--golden", help="IMG or IMG@VER (without a version: follow the newest)."),
    diskless: Optional[str] = typer.Option(None, "--diskless", help="IMAGE[@TAG|@VER]: no disk, PXE-boot this netslate image in ram mode (instead of --golden)."),
    size: int = typer.Option(1, "--size", help="Desktops kept provisioned."),
    spare: int = typer.Option(1, "--spare", help="Unassigned ready desktops kept on top of the assigned ones."),
    max_: Optional[int] = typer.Option(None, "--max", help="Hard cap (default size+spare)."),
    vcpus: int = typer.Option(1, "--vcpus"),
    memory: int = typer.Option(1024, "--memory", help="MiB per desktop."),
    display: str = typer.Option("spice", "--display", help="spice (with VNC out of band) or vnc."),
    video: str = typer.Option("qxl", "--video", help="qxl or virtio."),
    usb_redirect: int = typer.Option(0, "--usb-redirect", help="SPICE USB redirection channels."),
    smartcard: bool = typer.Option(False, "--smartcard", help="SPICE smart card passthrough."),
    persistence: str = typer.Option("none", "--persistence", help="none (reset at logoff) or persistent."),
    assignment: str = typer.Option("floating", "--assignment", help="floating or dedicated (same desktop per user)."),
    ip_range: str = typer.Option(..., "--ip-range", help="FIRST-LAST addresses for the desktops."),
    hosts: str = typer.Option("*", "--hosts", help="Host selector: names/globs (a,b*) or labels (rack=3)."),
    network: str = typer.Option("none", "--network", help="bridge:NAME, network:NAME, user or none."),
    grace: float = typer.Option(60.0, "--grace", help="Seconds after logoff before a reset."),
    snapshot_every: Optional[float] = typer.Option(None, "--snapshot-every", help="Hours between scheduled snapshots (persistent pools)."),
    snapshot_keep: int = typer.Option(7, "--snapshot-keep", help="Scheduled snapshots kept per desktop."),
    allow_reset: bool = typer.Option(False, "--allow-reset/--no-allow-reset", help="The portal lets a user reset their own desktop."),
    allow_release: bool = typer.Option(True, "--allow-release/--no-allow-release", help="The portal lets a user give their desktop back."),
    json_: bool = JSON,
):
    """Create a pool (nothing is written unless every parameter is valid)."""
    from netslate.services.pools import DesktopPoolSpec

    spec = DesktopPoolSpec(name=name, golden=golden, diskless=diskless, size=size, spare=spare, max=max_, vcpus=vcpus,
                           memory_mib=memory, display=display, video=video, usb_redirect=usb_redirect, smartcard=smartcard,
                           persistence=persistence, assignment=assignment, ip_range=ip_range, hosts=hosts, network=network,
                           grace_seconds=grace, snapshot_every_hours=snapshot_every, snapshot_keep=snapshot_keep,
                           allow_reset=allow_reset, allow_release=allow_release)
    data = state(ctx).services.pools.create(spec)
    emit(data, json_, lambda d: console.print(f"created pool {d['name']} (size {d['size']}, spare {d['spare']}, max {d['max']})"))


@pool_app.command("list")
def pool_list(ctx: typer.Context, json_: bool = JSON):
    """List pools with desktop counts by state."""
    emit(state(ctx).services.pools.list(), json_, _render_pools)


@pool_app.command("show")
def pool_show(ctx: typer.Context, name: str, json_: bool = JSON):
    """Show a pool and its desktops."""
    def render(p):
        _render_pools([p])
        _render_desktops(p["desktop_list"])

    emit(state(ctx).services.pools.show(name), json_, render)


@pool_app.command("resize")
def pool_resize(
    ctx: typer.Context, name: str,
    size: Optional[int] = typer.Option(None, "--size"), spare: Optional[int] = typer.Option(None, "--spare"),
    max_: Optional[int] = typer.Option(None, "--max"),
    golden: Optional[str] = typer.Option(None, "--golden", help="Move the pool to IMG[@VER]; desktops take it at their next reset."),
    grace: Optional[float] = typer.Option(None, "--grace"),
    snapshot_every: Optional[float] = typer.Option(None, "--snapshot-every", help="Hours between scheduled snapshots; 0 turns them off."),
    snapshot_keep: Optional[int] = typer.Option(None, "--snapshot-keep"),
    allow_reset: Optional[bool] = typer.Option(None, "--allow-reset/--no-allow-reset", help="The portal lets a user reset their own desktop."),
    allow_release: Optional[bool] = typer.Option(None, "--allow-release/--no-allow-release", help="The portal lets a user give their desktop back."),
    json_: bool = JSON,
):
    """Change a pool's size, spare, max, golden image, grace period, snapshot schedule or portal settings."""
    from netslate.services.pools import DesktopPoolChange

    change = DesktopPoolChange(size=size, spare=spare, max=max_, golden=golden, grace_seconds=grace,
                               snapshot_every_hours=snapshot_every, snapshot_keep=snapshot_keep,
                               allow_reset=allow_reset, allow_release=allow_release)
    data = state(ctx).services.pools.change(name, change)
    emit(data, json_, lambda d: console.print(f"pool {d['name']}: size {d['size']}, spare {d['spare']}, max {d['max']}"))


@pool_app.command("rm")
def pool_rm(ctx: typer.Context, name: str, force: bool = typer.Option(False, "--force", help="Also destroy desktops in use."),
            json_: bool = JSON):
    """Remove a pool and destroy its desktops."""
    data = state(ctx).services.pools.remove(name, force=force)
    emit(data, json_, lambda d: console.print(f"removed pool {name} ({d['destroyed']} desktops destroyed)"))


@pool_app.command("reconcile")
def pool_reconcile(ctx: typer.Context, name: Optional[str] = typer.Argument(None),
                   wait: bool = typer.Option(False, "--wait", help="Keep going until throttled work is done too."),
                   timeout: float = typer.Option(300.0, "--timeout"), json_: bool = JSON):
    """Run the reconcile loop once (the server runs it in the background)."""
    result = state(ctx).services.pools.reconcile(name, wait=wait, timeout=timeout)
    emit(result, json_, lambda d: console.print("".join(f"{a}\n" for a in d["actions"]) + f"{len(d['actions'])} action(s)"
                                                + "".join(f"\nblocked: {b}" for b in d["blocked"])))


# ---------- desktops ----------


def _render_desktops(rows):
    table(["id", "name", "pool", "host", "state", "user", "ip", "golden"],
          [[d["id"], d["name"], d["pool"], d["host"], d["state"], d["user"], d["ip"], d["golden_version"]] for d in rows])


@desktop_app.command("request")
def desktop_request(ctx: typer.Context, pool: str, user: str = typer.Option(..., "--user"), json_: bool = JSON):
    """Get a desktop for USER: a prestarted one when there is one."""
    from netslate.services.pools import DesktopRequest

    data = state(ctx).services.pools.request(pool, DesktopRequest(user=user))
    emit(data, json_, lambda d: console.print(f"desktop {d['id']} ({d['name']}) for {d['user']}: {d['ip']} on {d['host']}"))


@desktop_app.command("release")
def desktop_release(ctx: typer.Context, desktop: str, json_: bool = JSON):
    """The user is done: reset the desktop now (non-persistent pools)."""
    data = state(ctx).services.desktops.release(desktop)
    emit(data, json_, lambda d: console.print(f"released desktop {d['id']} ({d['state']})"))


@desktop_app.command("list")
def desktop_list(ctx: typer.Context, pool: Optional[str] = typer.Option(None, "--pool"),
                 user: Optional[str] = typer.Option(None, "--user"), json_: bool = JSON):
    """List desktops."""
    data = state(ctx).services.desktops.list(pool, user)
    emit(data, json_, _render_desktops)


@desktop_app.command("show")
def desktop_show(ctx: typer.Context, desktop: str, json_: bool = JSON):
    """Show one desktop (by id or name)."""
    data = state(ctx).services.desktops.show(desktop)
    emit(data, json_, lambda d: _render_desktops([d]))


@desktop_app.command("session")
def desktop_session(ctx: typer.Context, desktop: str, event: str = typer.Argument(..., help="logon or logoff"),
                    user: Optional[str] = typer.Option(None, "--user"), json_: bool = JSON):
    """Record a logon or logoff by hand (the in-guest agent posts these to the API)."""
    from netslate.services.desktops import SessionEvent

    data = state(ctx).services.desktops.session(desktop, SessionEvent(event=event, user=user, source="cli"))
    emit(data, json_, lambda d: console.print(f"desktop {d['id']}: {d['state']}"))


@desktop_app.command("console")
def desktop_console(ctx: typer.Context, desktop: str,
                    type_: Optional[str] = typer.Option(None, "--type", help="spice or vnc (admins: the out-of-band VNC)."),
                    ttl: int = typer.Option(120, "--ttl", help="Seconds the ticket stays valid."),
                    vv: Optional[Path] = typer.Option(None, "--vv", help="Write a remote-viewer file here."),
                    json_: bool = JSON):
    """Issue a console ticket (a password with an expiry) and print or save the connection details."""
    from netslate.fsutil import atomic_write
    from netslate.services.desktops import TicketRequest, vv_file

    data = state(ctx).services.desktops.ticket(desktop, TicketRequest(type=type_, ttl=ttl))
    if vv is not None:
        atomic_write(vv, vv_file(data.model_dump()).encode(), mode=0o600)
    emit(data, json_, lambda d: console.print(f"{d['type']}://{d['host']}:{d['port']} password {d['password']} until {d['expires_at']}"))


@snapshot_app.command("create")
def snapshot_create(ctx: typer.Context, desktop: str, name: str, note: str = typer.Option("", "--note"), json_: bool = JSON):
    """Freeze the desktop's disk as snapshot NAME (live when it runs)."""
    from netslate.services.desktops import SnapshotRequest

    data = state(ctx).services.desktops.snapshot_create(desktop, SnapshotRequest(name=name, note=note))
    emit(data, json_, lambda d: console.print(f"snapshot {d['name']} created"))


@snapshot_app.command("list")
def snapshot_list(ctx: typer.Context, desktop: str, json_: bool = JSON):
    """List a desktop's snapshots."""
    emit(state(ctx).services.desktops.snapshots(desktop), json_,
         lambda rows: table(["name", "created", "note"], [[r["name"], r["created_at"], r["note"]] for r in rows]))


@snapshot_app.command("revert")
def snapshot_revert(ctx: typer.Context, desktop: str, name: str, json_: bool = JSON):
    """Restore one desktop to snapshot NAME (it restarts; the rest of the pool is untouched)."""
    data = state(ctx).services.desktops.snapshot_revert(desktop, name)
    emit(data, json_, lambda d: console.print(f"desktop {d['desktop']} reverted to {name}"))


@snapshot_app.command("rm")
def snapshot_rm(ctx: typer.Context, desktop: str, name: str):
    """Delete a snapshot (its data is merged into the layers above it)."""
    state(ctx).services.desktops.snapshot_remove(desktop, name)
    console.print(f"snapshot {name} removed")
