"""`netslate-agent` / `python3 -m netslate.agent`: argparse, logging, exit codes.

Exit codes of `run --once`: 0 configured from the server, 3 configured from the last-known-good,
4 running with image defaults (no server, no last-known-good), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from netslate.agent import AGENT_VERSION, facts as facts_mod
from netslate.agent.runner import Agent, Options


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netslate-agent", description="netslate on-machine agent")
    p.add_argument("--version", action="version", version=f"netslate-agent {AGENT_VERSION}")
    sub = p.add_subparsers(dest="cmd")
    run = sub.add_parser("run", help="boot pass (locate, fetch, verify, apply, report), then follow changes")
    run.add_argument("--root", default="/", help="apply into this directory instead of / (tests, image builds)")
    run.add_argument("--sysroot", default="/", help="read facts from DIR/proc and DIR/sys")
    run.add_argument("--state-dir", default=None)
    run.add_argument("--lkg-dir", default=None, help="last-known-good directory (default: boot.json lkg_dir, else /run/netslate/lkg)")
    run.add_argument("--server", action="append", default=[], help="server base URL (repeatable; tried first)")
    run.add_argument("--key", default=None, help="pinned server public key, base64")
    run.add_argument("--machine", default=None, help="machine id, name or SMBIOS UUID")
    run.add_argument("--domain", default=None, help="DNS domain for _netslate._tcp SRV")
    run.add_argument("--nameserver", default=None, help="HOST:PORT to ask for SRV instead of resolv.conf")
    run.add_argument("--timeout", type=float, default=5.0, help="seconds per server attempt")
    run.add_argument("--live", action="store_true", help="run live actions (sysctl, hostname, systemctl) even with --root")
    run.add_argument("--once", action="store_true", help="boot pass only, do not follow changes")
    run.add_argument("--rounds", type=int, default=None, help="stop following after N long-poll rounds")
    run.add_argument("--wait", type=int, default=None, help="long-poll seconds (default: agent.wait_seconds or 60)")
    run.add_argument("--json", action="store_true", help="print the boot pass outcome as JSON")
    f = sub.add_parser("facts", help="print the hardware facts as JSON")
    f.add_argument("--sysroot", default="/")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="netslate-agent: %(message)s", stream=sys.stderr)
    log = logging.getLogger("netslate.agent")
    if args.cmd == "facts":
        print(json.dumps(facts_mod.gather(Path(args.sysroot)), indent=2, sort_keys=True))
        return 0
    if args.cmd != "run":
        _parser().print_help()
        return 2
    opts = Options(root=Path(args.root), sysroot=Path(args.sysroot), lkg_dir=args.lkg_dir, servers=args.server,
                   key=args.key, machine=args.machine, domain=args.domain, nameserver=args.nameserver,
                   timeout=args.timeout, live=True if args.live else None)
    if args.state_dir:
        opts.state_dir = args.state_dir
    agent = Agent(opts)
    out = agent.run_once()
    body = out.report
    for prob in body["problems"]:
        log.warning("%s", prob)
    failed = {k: v for k, v in body["modules"].items() if v != "ok"}
    log.info("config generation %s from %s; %d modules, %d failed; health %s",
             body["generation"], body["config_source"], len(body["modules"]), len(failed),
             "ok" if body["health"]["ok"] else "FAILED")
    for k, v in failed.items():
        log.warning("module %s: %s", k, v)
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True, default=str))
    if not args.once:
        try:
            agent.follow(args.rounds, wait=args.wait)
        except KeyboardInterrupt:
            return 0
        return 0
    return {"server": 0, "cache": 3}.get(body["config_source"], 4)


if __name__ == "__main__":
    sys.exit(main())
