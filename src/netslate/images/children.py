"""Child processes of the images part die with their parent (issue 11 #6).

A `kill -9` of `netslate image import` used to leave `mksquashfs` running, writing a temporary
filesystem image nobody would ever read. Every long-running child of the import and build paths
is started through `run`/`popen` here: the child asks the kernel for SIGKILL when its parent
dies (`PR_SET_PDEATHSIG`), and exits at once if the parent is already gone by then (the parent
may die between fork and prctl).

The death signal follows the thread that forked the child, not the process: callers start
children from a thread that waits for them (subprocess.run, or a Popen they read to the end),
never from a short-lived thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl  # looked up before any fork: the child only calls it


def _die_with(parent: int):
    def preexec() -> None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def popen(cmd: list[str], **kw) -> subprocess.Popen:
    """`subprocess.Popen` whose child is killed when this process dies."""
    if "preexec_fn" in kw:
        raise ValueError("children.popen sets preexec_fn itself")
    return subprocess.Popen(cmd, preexec_fn=_die_with(os.getpid()), **kw)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """`subprocess.run` whose child is killed when this process dies."""
    if "preexec_fn" in kw:
        raise ValueError("children.run sets preexec_fn itself")
    return subprocess.run(cmd, preexec_fn=_die_with(os.getpid()), **kw)
