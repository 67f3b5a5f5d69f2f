"""The kernel command line, as the initramfs stage and the agent read it. Standard library only."""

from __future__ import annotations

import shlex


def split_cmdline(text: str) -> list[str]:
    """Words of a kernel command line; double-quoted values stay one word."""
    try:
        return shlex.split(text)
    except ValueError:  # unbalanced quote: the kernel itself is lenient, so are we
        return text.split()


def netslate_args(text: str) -> dict[str, str]:
    """`netslate.X=V` arguments → {X: V} (the last one wins); everything else is ignored."""
    out = {}
    for word in split_cmdline(text):
        key, sep, value = word.partition("=")
        if sep and key.startswith("netslate."):
            out[key[len("netslate."):]] = value
    return out
