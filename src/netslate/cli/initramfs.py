"""`netslate initramfs ...`: build the netslate boot initramfs."""

import contextlib
from pathlib import Path
from typing import Optional

import typer

from netslate.cli.common import console, emit, human_bytes, state
from netslate.errors import UserError

def _status(text: str, quiet: bool):
    return contextlib.nullcontext() if quiet else console.status(text)


app = typer.Typer(help="The netslate boot initramfs (RAM and local-cache boot modes).", no_args_is_help=True)


@app.command("build")
def build_(
    ctx: typer.Context,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the initramfs (gzip newc cpio) here."),
    kernel_version: Optional[str] = typer.Option(None, "--kernel-version", help="Take modules from /lib/modules/VER."),
    modules_dir: Optional[Path] = typer.Option(None, "--modules-dir", help="A kernel modules tree (/lib/modules/VER)."),
    image: Optional[str] = typer.Option(None, "--image", help="NAME@VER: make a new version with this initramfs as its initrd."),
    tag: Optional[str] = typer.Option(None, "--tag", help="With --image: point this tag at the new version."),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Build the initramfs into a file (--output), or into a new image version (--image)."""
    from netslate.initramfs import build as B

    if (output is None) == (image is None):
        raise UserError("give exactly one of --output FILE or --image NAME@VER")
    if image is not None:
        name, _, ref = image.partition("@")
        with _status("building the initramfs and importing the new version", json_):
            result = B.import_as_initrd(state(ctx).context(), name, ref or "latest", kernel_version, modules_dir, tag)
        emit(result, json_, lambda r: console.print(
            f"{r['name']}@{r['version']}: version {r['base_version']} + netslate initramfs for {r['initramfs']['kernel_version']}"
            f" ({human_bytes(r['initramfs']['bytes'])})"))
        return
    if kernel_version is None and modules_dir is None:
        raise UserError("give --kernel-version VER or --modules-dir DIR")
    with _status("building the initramfs", json_):
        result = B.build(output, kernel_version, modules_dir)
    emit(result, json_, lambda r: console.print(
        f"{r['output']}: {human_bytes(r['bytes'])} ({r['files']} files, {len(r['modules'])} modules for {r['kernel_version']})"))
