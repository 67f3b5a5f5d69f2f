"""Filesystem image formats from their superblock magic. Standard library only.

The image library records the format of an imported rootfs (`netslate.images.rootfs`) and the
initramfs mounts what it pulled; both ask this module, so they agree.
"""

from __future__ import annotations

import struct

HEAD_BYTES = 1100  # enough for every magic below
MOUNTABLE = ("squashfs", "erofs", "ext4")


def format_of(head: bytes) -> str:
    """squashfs | erofs | ext4 | raw, from the first HEAD_BYTES bytes of an image (pure)."""
    if head[:4] == b"hsqs":
        return "squashfs"
    if len(head) >= 1028 and struct.unpack_from("<I", head, 1024)[0] == 0xE0F5E1E2:
        return "erofs"
    if len(head) >= 1082 and struct.unpack_from("<H", head, 1080)[0] == 0xEF53:
        return "ext4"
    return "raw"


def detect_format(path) -> str:
    """squashfs | erofs | ext4 | raw for the image file at `path`."""
    with open(path, "rb") as f:
        return format_of(f.read(HEAD_BYTES))
