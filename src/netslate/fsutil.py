"""Atomic file writes for the server side. The one implementation is the on-machine library's
`netslate.onmachine.fsutil` (standard library only: the agent and the initramfs use it too)."""

from netslate.onmachine.fsutil import atomic_write, fsync_dir  # noqa: F401 - re-exported
