"""`image gc` removes the static front's files (DATA/serve: materialized artifacts and chunk packs,
images/frontend_files.py) that no kept version needs, with the same grace as chunks; the files of
kept versions, and an artifact a kept version shares, stay. The files are made by the real routes,
asked as the nginx front asks (X-Netslate-Front: nginx)."""

from __future__ import annotations

import os

import httpx

from netslate.images.frontend import FRONT_HEADER


def _fronted_get(url: str) -> httpx.Response:
    r = httpx.get(url, headers={FRONT_HEADER: "nginx"}, timeout=30)
    assert r.status_code == 200 and r.headers.get("x-accel-redirect"), (r.status_code, r.headers)
    return r


def test_gc_removes_served_files_of_removed_versions(live_server, tmp_path):
    ctx, base = live_server.ctx, live_server.url
    lib = ctx.library
    shared = tmp_path / "initrd"
    shared.write_bytes(os.urandom(200_000))
    kernels = []
    for v in (1, 2):
        k = tmp_path / f"vmlinuz{v}"
        k.write_bytes(os.urandom(300_000))
        kernels.append(k)
        lib.import_files("gcs", kernel=k, initrd=shared)
    files = {}
    for v in (1, 2):
        r = lib.resolve("gcs", str(v))
        digest = r.manifest_digest.removeprefix("sha256:")
        for art in ("kernel", "initrd"):
            _fronted_get(f"{base}/images/gcs/{v}/{art}")
        _fronted_get(f"{base}/packs/gcs/{v}/kernel/{digest}/0")
        files[v] = {"kernel": ctx.data_dir / "serve" / "artifacts" / r.artifacts["kernel"]["sha256"],
                    "initrd": ctx.data_dir / "serve" / "artifacts" / r.artifacts["initrd"]["sha256"],
                    "pack": ctx.data_dir / "serve" / "packs" / f"{digest}-kernel-0"}
    assert all(p.is_file() for f in files.values() for p in f.values())
    assert files[1]["initrd"] == files[2]["initrd"]
    orphan = ctx.data_dir / "serve" / "packs" / ".tmp-1-2-orphan"  # a build whose writer died 30 min ago
    orphan.write_bytes(b"x")
    os.utime(orphan, (orphan.stat().st_atime - 1800, orphan.stat().st_mtime - 1800))

    lib.remove_version("gcs", 1)
    kept = lib.gc(grace_seconds=3600)
    assert kept["served_files_removed"] == 0 and files[1]["kernel"].exists()  # within the grace
    dry = lib.gc(grace_seconds=0, dry_run=True)
    assert dry["served_files_removed"] == 3 and files[1]["kernel"].exists()
    size = files[1]["kernel"].stat().st_size + files[1]["pack"].stat().st_size + 1
    done = lib.gc(grace_seconds=0)
    assert done["served_files_removed"] == 3 and done["served_bytes_freed"] == size
    assert not files[1]["kernel"].exists() and not files[1]["pack"].exists()
    assert files[2]["kernel"].exists() and files[2]["pack"].exists() and files[2]["initrd"].exists()
    assert not orphan.exists()
    # the kept version is still served from its files
    assert _fronted_get(f"{base}/images/gcs/2/kernel").headers["x-accel-redirect"].endswith(files[2]["kernel"].name)


def test_gc_cli_reports_served_files(cli, ctx):
    r = cli("image", "gc", "--grace", "0", "--json")
    assert r.code == 0, r.stderr
    assert r.json()["served_files_removed"] == 0 and r.json()["served_bytes_freed"] == 0
