"""Step 7: reports, and the on-disk queue that holds them while the server is away.

Queued reports are files `<time>-<seq>.json` in the queue directory; `flush` sends them oldest
first and deletes each only after the server accepted it (at-least-once; the server keeps the
newest by `sent_at`). The queue is bounded: the oldest reports are dropped beyond MAX_QUEUED.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

from netslate.agent import http
from netslate.agent.util import atomic_write, read_json

MAX_QUEUED = 200
_seq = itertools.count()


def build(*, phase: str, boot, generation, config_source, modules, changes, health, facts, timings,
          reboot_required, problems, agent_version: str, uptime: float | None = None) -> dict:
    """The report body (pure). Secrets never appear here: modules report only names and errors."""
    return {
        "phase": phase,  # booting | configured | heartbeat
        "image": boot.image, "version": boot.version, "image_source": boot.image_source,
        "image_reason": boot.image_reason, "booted_via": boot.booted_via, "mode": boot.mode, "manifest_digest": boot.manifest_digest,
        "generation": generation, "config_source": config_source,
        "modules": modules, "changes": changes, "health": health, "facts": facts, "timings": timings,
        "reboot_required": sorted(set(reboot_required)), "problems": problems,
        "agent_version": agent_version, "uptime_s": uptime, "sent_at": time.time(),
    }


def enqueue(queue_dir: Path, report: dict) -> Path:
    queue_dir = Path(queue_dir)
    queue_dir.mkdir(parents=True, exist_ok=True)
    path = queue_dir / f"{time.time():017.6f}-{os.getpid()}-{next(_seq):06d}.json"
    atomic_write(path, json.dumps(report).encode(), 0o600)
    items = pending(queue_dir)
    for old in items[:-MAX_QUEUED] if len(items) > MAX_QUEUED else []:
        old.unlink(missing_ok=True)
    return path


def pending(queue_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in Path(queue_dir).iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        return []


class Refused(http.HttpError):
    """The server answered and will never take this report (4xx): do not keep retrying it."""


def send(url: str, machine_id: int, report: dict, credential: str | None, timeout: float = 10.0) -> None:
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    r = http.post_json(f"{url}/api/v1/machines/{machine_id}/report", report, timeout=timeout, headers=headers)
    if r.status not in (200, 201, 202):
        cls = Refused if 400 <= r.status < 500 and r.status not in (408, 429) else http.HttpError
        raise cls(f"report refused: HTTP {r.status} {r.body[:200]!r}")


def flush(queue_dir: Path, url: str, machine_id: int, credential: str | None, timeout: float = 10.0) -> int:
    """Send every queued report in order; stop at the first failure. Returns how many were sent."""
    sent = 0
    for p in pending(queue_dir):
        body = read_json(p)
        if not isinstance(body, dict):
            p.unlink(missing_ok=True)  # damaged: drop it rather than block the queue forever
            continue
        body["queued"] = True
        try:
            send(url, machine_id, body, credential, timeout)
        except Refused:
            pass  # e.g. the machine was enrolled meanwhile: this one can never be delivered
        else:
            sent += 1
        p.unlink(missing_ok=True)
    return sent
