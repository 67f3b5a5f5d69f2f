"""`netslate image ...`: the image library."""

import os
from pathlib import Path
from typing import Optional

import typer

from netslate.cli.common import byte_progress, console, emit, err_console, human_bytes, state, table
from netslate.errors import UserError

app = typer.Typer(help="Versioned, content-addressed, signed OS images.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON.")


def split_ref(spec: str, default: str = "latest") -> tuple[str, str]:
    name, _, ref = spec.partition("@")
    return name, (ref or default)


def _progress_cb(progress, tasks: dict):
    def cb(artifact: str, done: int, total: int):
        if artifact not in tasks:
            tasks[artifact] = progress.add_task(f"chunking {artifact}", total=total)
        progress.update(tasks[artifact], completed=done, total=total)

    return cb


@app.command("import")
def import_(
    ctx: typer.Context,
    name: str,
    rootfs: Optional[Path] = typer.Option(None, "--rootfs", help="Directory, tarball or filesystem image."),
    kernel: Optional[Path] = typer.Option(None, "--kernel"),
    initrd: Optional[Path] = typer.Option(None, "--initrd"),
    tag: Optional[str] = typer.Option(None, "--tag", help="Point this tag at the new version."),
    note: str = typer.Option("", "--note"),
    json_: bool = JSON,
):
    """Make a new version of NAME from a rootfs (and optionally kernel/initrd)."""
    images = state(ctx).services.images
    with byte_progress("import", None, enabled=not json_) as progress:
        result = images.import_files(name, rootfs=rootfs, kernel=kernel, initrd=initrd, tag=tag, note=note,
                                     progress=_progress_cb(progress, {}), warn=lambda m: err_console.print(m))
    emit(result, json_, lambda r: console.print(
        f"{r['name']}@{r['version']}: {human_bytes(r['bytes_total'])} total, {human_bytes(r['bytes_new'])} new"
        + (f", tagged {r['tag']}" if r.get("tag") else "")))


@app.command("list")
def list_(ctx: typer.Context, json_: bool = JSON):
    """List images with their versions and tags."""
    data = state(ctx).services.images.list()
    emit(data, json_, lambda d: table(
        ["image", "versions", "latest", "tags", "size (latest)"],
        [[i["name"], len(i["versions"]), i["latest"], ", ".join(f"{t}→{v}" for t, v in i["tags"].items()), human_bytes(i["bytes_latest"])] for i in d]))


@app.command("versions")
def versions(ctx: typer.Context, name: str, json_: bool = JSON):
    """List the versions of one image."""
    data = state(ctx).services.images.versions(name)
    emit(data, json_, lambda d: table(
        ["version", "created", "tags", "size", "new", "note"],
        [[v["version"], v["created_at"], ", ".join(v["tags"]), human_bytes(v["bytes_total"]), human_bytes(v["bytes_new"]), v["note"]] for v in d]))


@app.command("show")
def show(ctx: typer.Context, spec: str = typer.Argument(..., metavar="NAME[@VER|@TAG]"), json_: bool = JSON):
    """Show one version: artifacts, sizes, digest, tags and tag history."""
    name, ref = split_ref(spec)
    data = state(ctx).services.images.show(name, ref)

    def render(v):
        console.print(f"[bold]{v['name']}@{v['version']}[/bold]  tags: {', '.join(v['tags']) or '-'}")
        console.print(f"created {v['created_at']} by {v['created_by']}  parent: {v['parent_version'] or '-'}")
        console.print(f"source: {v['source']}\nnote: {v['note'] or '-'}\nmanifest: {v['manifest_digest']}")
        table(["artifact", "size", "chunks", "sha256"], [[k, human_bytes(a["size"]), a["chunks"], a["sha256"][:16]] for k, a in v["artifacts"].items()])

    emit(data, json_, render)


@app.command("tag")
def tag(
    ctx: typer.Context,
    name: str,
    version: int,
    tag_name: str = typer.Argument(..., metavar="TAG"),
    reason: str = typer.Option("", "--reason", "-m", help="Why (recorded with who and when)."),
    json_: bool = JSON,
):
    """Point TAG at VERSION (promote or roll back)."""
    data = state(ctx).services.images.set_tag(name, tag_name, version, reason=reason)
    emit(data, json_, lambda d: console.print(f"{d['name']}:{d['tag']} → {d['version']}"))


@app.command("diff")
def diff(ctx: typer.Context, name: str, a: str, b: str, json_: bool = JSON):
    """Chunks and bytes shared and new between versions A and B."""
    data = state(ctx).services.images.diff(name, a, b)
    emit(data, json_, lambda d: console.print(
        f"{name} {d['from']} → {d['to']}: shared {d['chunks_shared']} chunks ({human_bytes(d['bytes_shared'])}), "
        f"new {d['chunks_new']} chunks ({human_bytes(d['bytes_new'])}, {d['new_fraction']:.1%} of {human_bytes(d['bytes_total'])})"))


@app.command("rm")
def rm(ctx: typer.Context, spec: str = typer.Argument(..., metavar="NAME@VER")):
    """Remove one version (refused while a tag or a machine uses it). Chunks go at the next gc."""
    name, ref = split_ref(spec, default="")
    if not ref.isdigit():
        raise UserError("give NAME@VERSION (a number)")
    state(ctx).services.images.remove_version(name, int(ref))
    console.print(f"removed {name}@{ref}")


@app.command("gc")
def gc(
    ctx: typer.Context,
    grace: float = typer.Option(3600, "--grace", help="Spare unreferenced chunks younger than this many seconds."),
    dry_run: bool = typer.Option(False, "--dry-run"),
    json_: bool = JSON,
):
    """Delete chunks no version references (never those of an import in progress), and the static
    front's files (DATA/serve) of versions that are gone."""
    data = state(ctx).services.images.gc(grace_seconds=grace, dry_run=dry_run)
    emit(data, json_, lambda d: console.print(f"removed {d['chunks_removed']} chunks, freed {human_bytes(d['bytes_freed'])}"
                                              + (f"; {d['served_files_removed']} served files, {human_bytes(d['served_bytes_freed'])}"
                                                 if d["served_files_removed"] else "")
                                              + (" (dry run)" if d["dry_run"] else "")))


@app.command("verify")
def verify(ctx: typer.Context, spec: Optional[str] = typer.Argument(None, metavar="[NAME[@VER]]"), json_: bool = JSON):
    """Re-hash stored chunks and report every corrupt or missing one. Exit 1 if any."""
    name, ref = (split_ref(spec, default="") if spec else (None, ""))
    with byte_progress("verify", None, enabled=not json_) as progress:
        task = progress.add_task("verifying chunks", total=None)
        data = state(ctx).services.images.verify_with_progress(name, ref or None, progress=lambda d, t: progress.update(task, completed=d, total=t))

    def render(d):
        if d["ok"]:
            console.print(f"ok: {d['chunks_checked']} chunks of {d['versions_checked']} versions verified")
        else:
            for c in d["corrupt"]:
                console.print(f"[red]corrupt[/red] {c}")
            for c in d["missing"]:
                console.print(f"[red]missing[/red] {c}")
            console.print(f"affected: {', '.join(d['affected'])}")

    emit(data, json_, render)
    if not data.ok:
        raise typer.Exit(1)


@app.command("pull")
def pull(
    server_url: str = typer.Argument(..., metavar="SERVER_URL"),
    spec: str = typer.Argument(..., metavar="NAME[@VER|@TAG]"),
    artifact: str = typer.Option("rootfs", "--artifact"),
    cache: Path = typer.Option(..., "--cache", help="Local chunk cache directory."),
    output: Path = typer.Option(..., "--output", help="File to write (atomically)."),
    trust: Optional[str] = typer.Option(None, "--trust", help="Server public key (base64) or its sha256: fingerprint."),
    workers: int = typer.Option(8, "--workers"),
    json_: bool = JSON,
):
    """Fetch an artifact into a cache, downloading only missing chunks."""
    from netslate.images.pull import PullError, pull as do_pull

    name, ref = split_ref(spec)
    try:
        with byte_progress("pull", None, enabled=not json_) as progress:
            task = progress.add_task(f"pulling {name}@{ref} {artifact}", total=None)
            stats = do_pull(server_url, name, ref, cache, output, artifact=artifact, trust=trust, workers=workers,
                            progress=lambda d, t: progress.update(task, completed=d, total=t))
    except PullError as exc:
        raise UserError(str(exc)) from None
    emit(stats.as_dict(), json_, lambda s: console.print(
        f"{s['name']}@{s['version']} {s['artifact']} → {s['output']}: downloaded {human_bytes(s['bytes_downloaded'])} "
        f"({s['chunks_downloaded']} chunks), reused {human_bytes(s['bytes_reused'])} ({s['chunks_reused']} chunks) in {s['seconds']:.1f}s"))


# ---------- build and edit: they run mmdebstrap, mounts and chroot on the server's own files (without --server) ----------


def _phases(json_: bool):
    """(phase, log, finish) callbacks: phase lines on stderr, a spinner with the tool's latest line."""
    from rich.markup import escape

    live = err_console.is_terminal and not json_ and os.environ.get("CI") != "true"
    status = err_console.status("starting") if live else None
    if status:
        status.start()

    def phase(text: str) -> None:
        if not json_:
            err_console.print(f"[bold]→[/bold] {escape(text)}", highlight=False)
        if status:
            status.update(escape(text))

    def log(line: str) -> None:
        if status and line.strip():
            status.update(escape(line.strip()[:100]))

    def finish() -> None:
        if status:
            status.stop()

    return phase, log, finish


def _print_tail(exc) -> None:
    tail = getattr(exc, "tail", None)
    if tail:
        err_console.print("[dim]last lines of output:[/dim]")
        for line in tail:
            err_console.print(line, markup=False, highlight=False)


@app.command("build")
def build(
    ctx: typer.Context,
    name: str,
    recipe: Path = typer.Option(..., "--recipe", help="Recipe YAML: suite, variant, mirror, packages, files, customise."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Point this tag at the new version."),
    note: str = typer.Option("", "--note"),
    json_: bool = JSON,
):
    """Build a Debian image with mmdebstrap from a recipe, prepare it and import it as a new version."""
    images = state(ctx).services.images
    phase, log, finish = _phases(json_)
    try:
        with byte_progress("import", None, enabled=not json_) as progress:
            result = images.build(name, recipe, tag=tag, note=note, phase=phase, log=log,
                                 warn=lambda m: err_console.print(m, highlight=False),
                                 progress=_progress_cb(progress, {}))
    except UserError as exc:
        finish()
        _print_tail(exc)
        raise
    finally:
        finish()
    emit(result, json_, lambda r: console.print(
        f"{r['name']}@{r['version']}: {human_bytes(r['bytes_total'])} total, {human_bytes(r['bytes_new'])} new "
        f"(built in {r['seconds']}s from {r['mirror']})" + (f", tagged {r['tag']}" if r.get("tag") else "")))


@app.command("edit")
def edit(
    ctx: typer.Context,
    name: str,
    script: Optional[Path] = typer.Option(None, "--script", help="Shell script to run chrooted in the working copy."),
    shell: bool = typer.Option(False, "--shell", help="Interactive shell chrooted in the working copy."),
    resume: bool = typer.Option(False, "--resume", help="Continue an edit that is already open."),
    abort: bool = typer.Option(False, "--abort", help="Discard the open edit."),
    json_: bool = JSON,
):
    """Open an overlayfs working copy of NAME's latest version and change it (then `image commit`)."""
    images = state(ctx).services.images
    if abort:
        if script or shell or resume:
            raise UserError("--abort takes no --script, --shell or --resume")
        data = images.abort_edit(name)
        emit(data, json_, lambda d: console.print(f"discarded the edit of {name}"))
        return
    if script and shell:
        raise UserError("give --script FILE or --shell, not both")
    if not script and not shell:
        import sys

        if not sys.stdin.isatty():
            raise UserError("give --script FILE (or --shell from a terminal)")
        shell = True
    phase, log, finish = _phases(json_)
    try:
        with byte_progress("assemble", None, enabled=not json_) as progress:
            task = progress.add_task(f"assembling {name} rootfs", total=None)
            data = images.edit(name, script=script, shell=shell, resume=resume,
                          progress=lambda d, t: progress.update(task, completed=d, total=t),
                          log=(lambda line: err_console.print(line, markup=False, highlight=False)) if not json_ else log)
    except UserError as exc:
        finish()
        if json_:
            _print_tail(exc)
        raise
    finally:
        finish()
    emit(data, json_, lambda d: console.print(
        f"edit of {name} (base version {d['base_version']}): {d['changed_paths']} files changed so far; "
        f"`netslate image commit {name} -m TEXT` to store it, `--abort` to discard"))


@app.command("commit")
def commit(
    ctx: typer.Context,
    name: str,
    message: str = typer.Option(..., "-m", "--message", help="What changed (the version's note)."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Point this tag at the new version."),
    json_: bool = JSON,
):
    """Prepare the open edit of NAME and store it as a new version (only changed chunks take space)."""
    images = state(ctx).services.images
    with byte_progress("import", None, enabled=not json_) as progress:
        result = images.commit(name, message, tag=tag, progress=_progress_cb(progress, {}),
                           warn=lambda m: err_console.print(m, highlight=False))
    emit(result, json_, lambda r: console.print(
        f"{r['name']}@{r['version']} (parent {r['parent_version']}): {human_bytes(r['bytes_total'])} total, "
        f"{human_bytes(r['bytes_new'])} new ({r['diff']['new_fraction']:.1%} of the rootfs+kernel changed)"
        + (f", tagged {r['tag']}" if r.get("tag") else "")))
