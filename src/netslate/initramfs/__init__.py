"""The netslate initramfs: busybox-static + a trimmed CPython + netslate's stdlib-only pull code.

`build.py` (host side) assembles the cpio; `stage.py`, `bootargs.py`, `runtime.py`, the `mode_*`
modules and `localboot.py` run inside the initramfs on the booting machine (standard library +
the on-machine library `netslate.onmachine` + `netslate.images.pull` only).
See docs/initramfs.md.
"""
