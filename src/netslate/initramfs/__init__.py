"""The netslate initramfs: busybox-static + a trimmed CPython + netslate's stdlib-only pull code.

`build.py` (host side) assembles the cpio; `stage.py` and the `mode_*` modules run inside the
initramfs on the booting machine (standard library + netslate.crypto + netslate.images.pull only).
See docs/initramfs.md.
"""
