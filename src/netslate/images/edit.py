"""The edit workflow (seed 003): snapshot → mount → change → prepare → store copy-on-write.

DATA/edit/NAME/ holds one open edit:
  state.json   base version and digest (written atomically; its presence means "an edit is open")
  base.img     the base version's rootfs, assembled from the chunk store and verified
  upper/ work/ the overlayfs upper and work dirs: every change the edit made, and nothing else
  lower/ merged/  mount points, empty whenever no netslate command is running
  lock         flock held by the command working on the edit (refuses concurrent runs)

Mounts exist only while a command runs and are always taken down, even on failure.
"""

import datetime as dt
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from netslate import audit
from netslate.errors import Conflict, NotFound, UserError
from netslate.fsutil import atomic_write
from netslate.images import mounts
from netslate.images.build import find_boot_files, prepare_tree, run_chrooted_script
from netslate.names import check_name

Log = Callable[[str], None]


class EditPaths:
    def __init__(self, data_dir: Path, name: str):
        self.root = Path(data_dir) / "edit" / name
        self.state = self.root / "state.json"
        self.base = self.root / "base.img"
        self.upper = self.root / "upper"
        self.work = self.root / "work"
        self.lower = self.root / "lower"
        self.merged = self.root / "merged"
        self.lock = self.root / "lock"


def read_state(paths: EditPaths) -> dict | None:
    try:
        return json.loads(paths.state.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {"broken": True}


@contextmanager
def _locked(paths: EditPaths, name: str) -> Iterator[None]:
    f = open(paths.lock, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"another netslate command is working on the edit of {name!r} right now") from None
        yield
    finally:
        f.close()


def _assemble(ctx, record: dict, out: Path, progress: Callable[[int, int], None] | None) -> None:
    """Write a whole artifact from the chunk store (each chunk verified) and check its sha256."""
    whole = hashlib.sha256()
    done = 0
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as f:
        for part in ctx.library.read_range(record, 0, record["size"]):
            f.write(part)
            whole.update(part)
            done += len(part)
            if progress:
                progress(done, record["size"])
    if whole.hexdigest() != record["sha256"]:
        tmp.unlink(missing_ok=True)
        raise UserError("the stored artifact does not match its sha256; run `netslate image verify`")
    os.replace(tmp, out)


def begin(ctx, name: str, progress: Callable[[int, int], None] | None = None, actor: str | None = None) -> dict:
    """Open an edit of NAME's latest version. Refused when one is already open."""
    check_name(name, "image name")
    resolved = ctx.library.resolve(name, "latest")
    rootfs = resolved.artifacts.get("rootfs")
    if rootfs is None:
        raise UserError(f"{name}@{resolved.version} has no rootfs to edit")
    fmt = rootfs.get("format", "raw")
    if fmt not in mounts.FS_TYPES:
        raise UserError(f"{name}@{resolved.version}'s rootfs is {fmt!r}; only erofs, squashfs and ext4 can be edited")
    paths = EditPaths(ctx.data_dir, name)
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    try:
        paths.root.mkdir()  # atomic: exactly one of two racing edits gets it
    except FileExistsError:
        raise Conflict(_already_open_message(name, read_state(paths))) from None
    try:
        with _locked(paths, name):
            _assemble(ctx, rootfs, paths.base, progress)
            for d in (paths.upper, paths.work, paths.lower, paths.merged):
                d.mkdir()
            state = {
                "name": name,
                "base_version": resolved.version,
                "base_digest": resolved.manifest_digest,
                "format": fmt,
                "started_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
                "started_by": actor or audit.default_actor(),
            }
            atomic_write(paths.state, json.dumps(state, indent=2, sort_keys=True).encode())
    except BaseException:
        mounts.safe_rmtree(paths.root)
        raise
    return state


def _already_open_message(name: str, state: dict | None) -> str:
    if not state or state.get("broken"):
        return (f"an edit of {name!r} is already open (incomplete); discard it with "
                f"`netslate image edit {name} --abort`")
    return (f"an edit of {name!r} is already open (base version {state['base_version']}, started {state['started_at']} "
            f"by {state['started_by']}): commit it, discard it with --abort, or continue it with --resume")


def _open_state(paths: EditPaths, name: str) -> dict:
    state = read_state(paths)
    if state is None:
        raise NotFound(f"no edit of {name!r} is open (start one with `netslate image edit {name}`)")
    if state.get("broken"):
        raise UserError(f"the edit of {name!r} is damaged (state.json unreadable); discard it with --abort")
    return state


def run(ctx, name: str, script: Path | None = None, shell: bool = False, resume: bool = False,
        progress: Callable[[int, int], None] | None = None, log: Log = print) -> dict:
    """Open (or with resume, continue) the edit and run a script or an interactive shell in it."""
    check_name(name, "image name")
    paths = EditPaths(ctx.data_dir, name)
    script_text = None
    if script is not None:
        try:
            script_text = Path(script).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read script {script}: {exc}") from None
    elif shell and not sys.stdin.isatty():
        raise UserError("--shell needs a terminal on stdin; use --script FILE instead")
    state = read_state(paths)
    if state is None:
        state = begin(ctx, name, progress=progress)
        opened = True
    elif not resume:
        raise Conflict(_already_open_message(name, state))
    else:
        state = _open_state(paths, name)
        opened = False
    with _locked(paths, name):
        mounts.umount_all(paths.root)  # leftovers of a killed command; holding the lock, nobody uses them
        with mounts.working_copy(paths.base, state["format"], paths.lower, paths.upper, paths.work, paths.merged) as merged:
            if script_text is not None:
                try:
                    run_chrooted_script(merged, script_text, log, what="edit script")
                except UserError as exc:
                    exc.args = (f"{exc.args[0]}; the edit stays open: continue with --resume, or --abort",)
                    raise
            elif shell:
                with mounts.api_filesystems(merged):
                    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                           "TERM": os.environ.get("TERM", "xterm"), "PS1": f"(netslate edit {name}) \\w# "}
                    sh = "/bin/bash" if os.path.exists(merged / "bin/bash") else "/bin/sh"
                    subprocess.run(mounts.chroot_command(merged, [sh, "-i"]), env=env)
    if mounts.mounts_under(paths.root):
        raise UserError(f"could not unmount everything under {paths.root}: {mounts.mounts_under(paths.root)}")
    return {**state, "opened": opened, "changed_paths": _count_changes(paths.upper)}


def _count_changes(upper: Path) -> int:
    n = 0
    for _dirpath, dirnames, filenames in os.walk(upper):
        n += len(filenames)
    return n


def abort(ctx, name: str) -> dict:
    check_name(name, "image name")
    paths = EditPaths(ctx.data_dir, name)
    if not paths.root.exists():
        raise NotFound(f"no edit of {name!r} is open")
    state = read_state(paths) or {}
    with _locked(paths, name):
        mounts.umount_all(paths.root)
    mounts.safe_rmtree(paths.root)
    return {"name": name, "aborted": True, "base_version": state.get("base_version")}


def _boot_changed(upper: Path) -> bool:
    return os.path.lexists(upper / "boot")


def commit(ctx, name: str, message: str, tag: str | None = None, progress=None, warn: Log = print,
           actor: str | None = None) -> dict:
    """Prepare the working copy and store it as a new version whose parent is the edit's base."""
    check_name(name, "image name")
    if tag:
        check_name(tag, "tag")
    if not message.strip():
        raise UserError("commit needs a message (-m TEXT)")
    paths = EditPaths(ctx.data_dir, name)
    state = _open_state(paths, name)
    base_version = state["base_version"]
    with _locked(paths, name):
        latest = ctx.library.resolve(name, "latest")
        if latest.version != base_version:
            raise Conflict(f"{name} has version {latest.version}, newer than this edit's base version {base_version}: "
                           f"abort the edit (`netslate image edit {name} --abort`) and edit version {latest.version} instead")
        base = ctx.library.resolve(name, str(base_version))
        if base.manifest_digest != state["base_digest"]:
            raise Conflict(f"{name}@{base_version} is not the version this edit started from; abort the edit")
        kernel = initrd = None
        mounts.umount_all(paths.root)  # leftovers of a killed command
        boot_changed = _boot_changed(paths.upper)
        with mounts.working_copy(paths.base, state["format"], paths.lower, paths.upper, paths.work, paths.merged) as merged:
            prepared = prepare_tree(merged)
            if boot_changed:
                kernel, initrd = find_boot_files(merged)
                if kernel is None:
                    warn("warning: the edit removed every kernel from /boot; the new version has no kernel artifact")
            else:  # same kernel and initrd as the base: reassemble them (their chunks are all shared)
                for art in ("kernel", "initrd"):
                    if art in base.artifacts:
                        out = paths.root / f"base.{art}"
                        _assemble(ctx, base.artifacts[art], out, None)
                        if art == "kernel":
                            kernel = out
                        else:
                            initrd = out
            result = ctx.library.import_files(
                name, rootfs=merged, kernel=kernel, initrd=initrd, tag=tag, note=message,
                source=f"edit:{name}@{base_version}", parent=base_version, actor=actor, progress=progress, warn=warn,
            )
    mounts.safe_rmtree(paths.root)
    result["diff"] = ctx.library.diff(name, str(base_version), str(result["version"]))
    result.update({"parent_version": base_version, "prepared": prepared, "boot_changed": boot_changed})
    return result
