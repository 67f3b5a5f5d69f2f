"""`netslate.mode=ram`: fetch every rootfs chunk of the pinned manifest into RAM, verify, mount.

The chunk cache lives in tmpfs only while the image is assembled, then it is deleted, so the
image costs its size in RAM (twice its size at the peak of the assembly).
"""

from __future__ import annotations

import shutil

from netslate.initramfs import runtime as rt
from netslate.initramfs.bootargs import NoVerifiedImage
from netslate.onmachine.formats import detect_format


def boot(env: rt.Env, reason: str = "") -> dict:
    work = rt.RUN / "ram"
    cache = work / "pull"
    image = work / "rootfs.img"
    try:
        stats, server = rt.fetch_rootfs(env, cache, image)
    except rt.FetchFailed as exc:
        raise NoVerifiedImage(f"ram mode: no verified rootfs for {env.args.image}@{env.args.ref}: {exc}") from None
    except OSError as exc:
        raise NoVerifiedImage(f"ram mode: cannot hold the rootfs in RAM: {exc}") from None
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # the chunks are in rootfs.img now
    rt.log(rt.bytes_line(stats, server))
    fmt = detect_format(image)
    try:
        rt.mount_root(image, fmt, env.args.init)
    except OSError as exc:
        raise NoVerifiedImage(f"ram mode: {exc}") from None
    return {
        "mode": "ram", "image": stats.name, "version": stats.version, "manifest_digest": stats.manifest_digest,
        "source": "server", "server": server, "reason": reason, "rootfs": str(image), "format": fmt,
        "bytes_downloaded": stats.bytes_downloaded, "bytes_total": stats.bytes_total,
        "chunks_downloaded": stats.chunks_downloaded, "chunks_total": stats.chunks_total,
        "lkg_dir": str(rt.RUN / "lkg"), "booted_at": rt.now_iso(),
    }

