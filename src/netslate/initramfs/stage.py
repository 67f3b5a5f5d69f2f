"""The boot stage inside the netslate initramfs (standard library only).

/init (busybox sh) mounts the API filesystems, loads modules and runs DHCP, then runs
`python3 -m netslate.initramfs.stage`. This module reads /proc/cmdline, picks the boot mode and
leaves a verified root mounted at /newroot; /init then switch_roots into it.

Exit codes: 0 root ready; 3 no verified image available (the dead end /init announces).

Boot modes are modules registered in MODES (`bootargs.py`); each has `boot(env) -> dict` (the
boot record). Adding an `nbd` or `nfs` root is a new module and one line there.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

from netslate.initramfs import runtime as rt
from netslate.initramfs.bootargs import (  # noqa: F401 - the stage's public names (tests, boot/store.py)
    MODES,
    BootArgs,
    BootArgsError,
    NoVerifiedImage,
    backoff,
    parse_cmdline,
    parse_env_file,
)

EXIT_OK = 0
EXIT_NO_IMAGE = 3


def load_mode(mode: str):
    return importlib.import_module(MODES[mode])


def main(cmdline_path: str = "/proc/cmdline") -> int:
    try:
        with open(cmdline_path) as f:
            text = f.read()
        args = parse_cmdline(text)
    except (OSError, BootArgsError) as exc:
        rt.log(f"bad kernel command line: {exc}")
        return EXIT_NO_IMAGE
    rt.write_text(rt.RUN / "onfail", args.onfail + "\n")
    env = rt.Env(args=args, net=rt.read_net(), cmdline=text)
    if args.boot == "local":
        rt.log("started from the NETSLATE disk (the firmware's fallback when network boot fails)")
    if not env.net:
        rt.log("no network (no DHCP lease); the server cannot be reached")
    started = time.monotonic()
    try:
        record = load_mode(args.mode).boot(env)
    except NoVerifiedImage as exc:
        rt.log(str(exc))
        return EXIT_NO_IMAGE
    record.setdefault("requested_mode", args.mode)
    record["stage_seconds"] = round(time.monotonic() - started, 2)
    record["servers"] = args.servers
    record["key_pinned"] = bool(args.key)
    record["key"] = args.key
    record["pin"] = args.pin  # the agent checks https servers against it (and keeps it in its locate cache)
    record["network"] = env.net
    record["persist"] = args.persist
    record["booted_via"] = "local disk" if args.boot == "local" else "network"
    rt.write_text(rt.RUN / "boot.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
    rt.write_text(rt.RUN / "init", args.init + "\n")
    rt.log(f"booting {record['image']}@{record['version']} (mode {record['mode']}, source {record['source']})"
           + (f": {record['reason']}" if record.get("reason") else ""))
    return EXIT_OK


if __name__ == "__main__":
    # NoVerifiedImage comes from bootargs, so the modes raise the class main() catches even when
    # this file runs as __main__ (python3 -m netslate.initramfs.stage).
    sys.exit(main())
