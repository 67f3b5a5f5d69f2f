"""The images service: a remote import makes the same checks as a local one and holds an import
lease, so a concurrent gc never takes its chunks; both modes print the same errors and warnings."""

import json
import os
import subprocess
import time

from netslate.cli.remote import ApiClient
from netslate.composition import Parts
from netslate.images.leases import UPLOAD_TTL, active_ids
from netslate.services import Services
from netslate.server.auth import local_principal
from nstest import start_server


def test_import_with_a_missing_or_bad_kernel_is_refused_the_same_way_in_both_modes(cli, tree, tmp_path):
    missing = tmp_path / "no-such-vmlinuz"
    a_dir = tmp_path / "kernel-dir"
    a_dir.mkdir()
    for kernel in (missing, a_dir):
        r = cli("image", "import", "k", "--rootfs", str(tree), "--kernel", str(kernel))
        assert r.code == 2, (cli.mode, r.stderr)
        assert r.stderr.strip() == f"error: kernel file {kernel} does not exist", (cli.mode, r.stderr)
    r = cli("image", "import", "k")
    assert r.code == 2 and r.stderr.strip() == "error: an image version needs at least a rootfs or a kernel"
    r = cli("image", "import", "k", "--rootfs", str(tree), "--tag", "latest")
    assert r.code == 2 and "cannot be a tag name" in r.stderr
    assert cli("image", "list", "--json").json() == []


def test_import_warnings_go_to_stderr_and_keep_json_clean_in_both_modes(cli, tree, tmp_path):
    compressed = tmp_path / "root.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(compressed), "-quiet", "-no-progress", "-noappend"], check=True)
    r = cli("image", "import", "sq", "--rootfs", str(compressed), "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["artifacts"]["rootfs"]["format"] == "squashfs"
    assert "compressed squashfs" in r.stderr


def _gc_once_when(artifact, ctx, reports):
    """A progress callback that runs a real gc (no grace) when the import reaches `artifact`."""

    def progress(art, done, total):
        if art == artifact and not reports:
            reports.append(ctx.library.gc(grace_seconds=0))

    return progress


def test_remote_import_holds_a_lease_that_a_concurrent_gc_respects(ctx, tree, kernel_file):
    srv = start_server(ctx)
    try:
        images = Services.remote(ApiClient(srv.url, srv.admin_token)).images
        reports = []
        # rootfs chunks are uploaded first; while the kernel's are uploaded, a gc without grace runs.
        result = images.import_files("leased", rootfs=tree, kernel=kernel_file,
                                     progress=_gc_once_when("kernel", ctx, reports), warn=lambda m: None)
        assert reports and reports[0]["chunks_in_progress"] > 0 and reports[0]["chunks_removed"] == 0
        assert result.version == 1
        assert ctx.library.verify("leased")["ok"]
        assert active_ids(ctx.library.imports_dir) == set()  # published: the lease is gone
        assert not list(ctx.library.imports_dir.glob("*.upload"))
    finally:
        srv.stop()


def test_local_import_holds_a_lease_that_a_concurrent_gc_respects(ctx, tree, kernel_file):
    images = Services.local(Parts(ctx), local_principal()).images
    reports = []
    result = images.import_files("leased", rootfs=tree, kernel=kernel_file, progress=_gc_once_when("kernel", ctx, reports))
    assert reports and reports[0]["chunks_in_progress"] > 0 and reports[0]["chunks_removed"] == 0
    assert result.version == 1 and ctx.library.verify("leased")["ok"]


def test_upload_lease_covers_present_chunks_and_expires(ctx, tree):
    """Chunks the server already has (unreferenced, old) are leased by `missing_chunks` too; a lease
    nobody renews for UPLOAD_TTL seconds stops protecting anything and is removed by gc."""
    lib = ctx.library
    lib.import_files("old", rootfs=tree)
    ids = [c[2] for c in lib.resolve("old", "1").artifacts["rootfs"]["chunks"]]
    lib.remove_version("old", 1)  # its chunks are now garbage
    long_ago = time.time() - 7200
    for cid in ids:
        os.utime(ctx.chunks.locate(cid)[0], (long_ago, long_ago))
    images = Services.local(Parts(ctx), local_principal()).images
    lease = images.begin_upload("new").lease
    assert images.missing_chunks(ids, lease).missing == []
    for cid in ids:  # make the chunks old again: only the lease protects them now
        os.utime(ctx.chunks.locate(cid)[0], (long_ago, long_ago))
    assert lib.gc(grace_seconds=0)["chunks_removed"] == 0
    lease_file = lib.imports_dir / f"{lease}.upload"
    os.utime(lease_file, (time.time() - UPLOAD_TTL - 1,) * 2)
    assert lib.gc(grace_seconds=0)["chunks_removed"] == len(set(ids))
    assert not lease_file.exists()


def test_image_rm_refuses_a_version_in_use_without_the_images_part_knowing_boot(ctx, tmp_path):
    """The in-use checks come from outside the images part (the service passes the boot part's)."""
    import pytest

    from netslate.errors import Conflict
    from netslate.images.library import Library

    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k" * 5000)
    lib = Library(ctx, in_use=[lambda name, version: ["pinned by pc1"] if version == 1 else []])
    lib.import_files("x", kernel=kernel)
    lib.import_files("x", kernel=kernel)
    with pytest.raises(Conflict, match="pinned by pc1"):
        lib.remove_version("x", 1)
    lib.remove_version("x", 2)
    with pytest.raises(Conflict, match="machine pc9"):
        ctx.library.remove_version("x", 1, in_use=[lambda n, v: ["machine pc9"]])


def test_build_edit_commit_over_server_say_in_one_line_they_need_the_servers_files(live_server, tmp_path):
    from nstest import run_cli

    env = {"NETSLATE_SERVER": live_server.url, "NETSLATE_TOKEN": live_server.admin_token}
    recipe = tmp_path / "r.yaml"
    recipe.write_text("suite: bookworm\n")
    script = tmp_path / "s.sh"
    script.write_text("true\n")
    for args in (("image", "build", "x", "--recipe", str(recipe)), ("image", "edit", "x", "--script", str(script)),
                 ("image", "edit", "x", "--abort"), ("image", "commit", "x", "-m", "m")):
        r = run_cli(*args, env=env, data_dir=tmp_path / "unused")
        assert r.code == 2, (args, r.stderr)
        assert "works on the server's own files: run it on the server, without --server" in r.stderr, (args, r.stderr)
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert not (tmp_path / "unused").exists()
