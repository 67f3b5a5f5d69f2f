"""Pure fleet logic: a machine's state and flags from its stored report, and report validation."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

STATES = ("discovered", "booting", "configured", "degraded", "offline")
OFFLINE_AFTER = dt.timedelta(minutes=5)  # no report for this long → offline (agents report every ~60 s)
MAX_REPORT_BYTES = 512 * 1024
HISTORY = 20
SOURCES = ("server", "cache", "none")


class BadReport(ValueError):
    pass


def _iso(t: dt.datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def parse_iso(text) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def _str(v, n: int = 200) -> str | None:
    return None if v is None else str(v)[:n]


def clean_report(body: Any) -> dict:
    """Validate a report body and keep only the fields we store (raises BadReport)."""
    if not isinstance(body, dict):
        raise BadReport("a report is a JSON object")
    if len(json.dumps(body, default=str)) > MAX_REPORT_BYTES:
        raise BadReport(f"report larger than {MAX_REPORT_BYTES} bytes")
    phase = body.get("phase") or "configured"
    if phase not in ("booting", "configured", "heartbeat"):
        raise BadReport(f"unknown phase {str(phase)[:40]!r}")
    gen = body.get("generation")
    if gen is not None and (not isinstance(gen, int) or isinstance(gen, bool) or gen < 0):
        raise BadReport("generation must be a non-negative integer")
    for key in ("config_source",):
        if body.get(key) is not None and body[key] not in SOURCES:
            raise BadReport(f"{key} must be one of {', '.join(SOURCES)}")
    if body.get("image_source") is not None and body["image_source"] not in ("server", "cache"):
        raise BadReport("image_source must be server or cache")
    modules = body.get("modules")
    modules = {} if modules is None else modules
    if not isinstance(modules, dict):
        raise BadReport("modules must be an object {name: 'ok' | 'error: ...'}")
    health = body.get("health")
    health = {} if health is None else health
    if not isinstance(health, dict):
        raise BadReport("health must be an object")
    version = body.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise BadReport("version must be an integer")
    checks = [c for c in (health.get("checks") or []) if isinstance(c, dict)][:64]
    return {
        "phase": phase,
        "image": _str(body.get("image"), 128), "version": version, "image_source": body.get("image_source"),
        "image_reason": _str(body.get("image_reason")), "mode": _str(body.get("mode"), 16),
        "booted_via": body.get("booted_via") if body.get("booted_via") in ("network", "local disk") else None,
        "manifest_digest": _str(body.get("manifest_digest"), 80),
        "generation": gen, "config_source": body.get("config_source"),
        "modules": {str(k)[:64]: str(v)[:500] for k, v in list(modules.items())[:64]},
        "health": {"ok": bool(health.get("ok", True)) and all(c.get("ok") for c in checks),
                   "checks": [{"name": _str(c.get("name"), 128), "ok": bool(c.get("ok")), "error": _str(c.get("error")),
                               "ms": c.get("ms") if isinstance(c.get("ms"), (int, float)) else None} for c in checks]},
        "timings": {str(k)[:64]: v for k, v in (body.get("timings") or {}).items() if isinstance(v, (int, float))} if isinstance(body.get("timings"), dict) else {},
        "reboot_required": [str(x)[:64] for x in (body.get("reboot_required") or [])][:32] if isinstance(body.get("reboot_required"), list) else [],
        "problems": [str(x)[:500] for x in (body.get("problems") or [])][:20] if isinstance(body.get("problems"), list) else [],
        "uptime_s": body.get("uptime_s") if isinstance(body.get("uptime_s"), (int, float)) else None,
        "sent_at": body.get("sent_at") if isinstance(body.get("sent_at"), (int, float)) else None,
        "queued": bool(body.get("queued")),
        "agent_version": _str(body.get("agent_version"), 32),
    }


def reported_state(rep: dict) -> str:
    """The state a report itself claims (before time is taken into account)."""
    if rep.get("phase") == "booting":
        return "booting"
    modules_ok = all(v == "ok" for v in (rep.get("modules") or {}).values())
    if rep.get("config_source") in (None, "none") or not modules_ok or not (rep.get("health") or {}).get("ok", True):
        return "degraded"
    return "configured"


def derive_state(fleet: dict | None, approved: bool, last_boot_event: dt.datetime | None, now: dt.datetime,
                 offline_after: dt.timedelta = OFFLINE_AFTER) -> str:
    """discovered | booting | configured | degraded | offline (pure; times are naive UTC)."""
    received = parse_iso((fleet or {}).get("received_at"))
    if received is None:
        if last_boot_event is not None and now - last_boot_event <= offline_after and approved:
            return "booting"
        return "discovered"
    if last_boot_event is not None and last_boot_event > received:
        return "booting" if now - last_boot_event <= offline_after else "offline"
    if now - received > offline_after:
        return "offline"
    return reported_state(fleet)


def flags(fleet: dict | None, current_generation: int | None) -> list[str]:
    f = fleet or {}
    if not f.get("received_at"):
        return []
    out = []
    gen = f.get("generation")
    if current_generation and (gen is None or gen < current_generation):
        out.append("old_generation")
    if f.get("image_source") == "cache":
        out.append("image_from_cache")
    if f.get("config_source") == "cache":
        out.append("config_from_cache")
    if f.get("config_source") == "none":
        out.append("image_defaults")
    if f.get("reboot_required"):
        out.append("reboot_required")
    if not (f.get("health") or {}).get("ok", True):
        out.append("unhealthy")
    if any(v != "ok" for v in (f.get("modules") or {}).values()):
        out.append("module_errors")
    if f.get("authenticated") is False:
        out.append("unauthenticated")
    return out


def view(fleet: dict | None, approved: bool, last_boot_event: dt.datetime | None, current_generation: int | None,
         now: dt.datetime, offline_after: dt.timedelta = OFFLINE_AFTER, trust: str | None = None) -> dict:
    """What `machine list/show --json` and `fleet status` show for one machine (pure). `trust`: the
    machine's trust level (none < token < host < tpm, issue 13)."""
    f = fleet or {}
    booted = parse_iso(f.get("booted_at"))
    last_boot = max((t for t in (booted, last_boot_event) if t is not None), default=None)
    health = f.get("health") or {}
    return {
        "state": derive_state(fleet, approved, last_boot_event, now, offline_after),
        "last_boot": _iso(last_boot),
        "last_report": f.get("received_at"),
        "image": f.get("image"), "version": f.get("version"), "image_source": f.get("image_source"),
        "booted_via": f.get("booted_via"),
        "generation": f.get("generation"), "config_source": f.get("config_source"),
        "current_generation": current_generation,
        "healthy": health.get("ok") if f.get("received_at") else None,
        "health": health.get("checks") or [],
        "failures": {k: v for k, v in (f.get("modules") or {}).items() if v != "ok"},
        "reboot_required": f.get("reboot_required") or [],
        "problems": f.get("problems") or [],
        "timings": f.get("timings") or {},
        "authenticated": f.get("authenticated"),
        "trust": trust or "none",
        "unverified": f.get("unverified"),  # facts/address of the last report without a credential
        "flags": flags(fleet, current_generation),
    }


def unverified(received: dt.datetime, remote: str | None, facts: dict | None) -> dict:
    """What a report without a credential claimed, kept apart from everything bundles are made of."""
    return {"received_at": _iso(received), "address": remote, "facts": facts}


def merge_report(old: dict | None, rep: dict, received: dt.datetime, authenticated: bool, remote: str | None) -> tuple[dict, bool]:
    """(new fleet dict, whether it replaced the current one). An older report (queued while the
    server was away, delivered after a newer one) only goes into the history."""
    old = dict(old or {})
    history = list(old.get("history") or [])
    entry = {"received_at": _iso(received), "phase": rep["phase"], "sent_at": rep.get("sent_at"),
             "generation": rep.get("generation"), "config_source": rep.get("config_source"),
             "image": rep.get("image"), "version": rep.get("version"), "image_source": rep.get("image_source"),
             "queued": rep.get("queued"), "state": reported_state(rep)}
    history = (history + [entry])[-HISTORY:]
    newer = not old.get("received_at") or rep.get("sent_at") is None or old.get("sent_at") is None or rep["sent_at"] >= old["sent_at"]
    if not newer:
        old["history"] = history
        return old, False
    new = dict(rep)
    if rep["phase"] == "heartbeat":  # heartbeats refresh liveness; keep the last full report's details
        for k in ("modules", "timings"):
            if not rep.get(k) and old.get(k):
                new[k] = old[k]
    new["received_at"] = _iso(received)
    new["authenticated"] = authenticated
    new["remote"] = remote
    up = rep.get("uptime_s")
    if up is not None:
        base = dt.datetime.fromtimestamp(rep["sent_at"], dt.timezone.utc).replace(tzinfo=None) if rep.get("queued") and rep.get("sent_at") else received
        new["booted_at"] = _iso(base - dt.timedelta(seconds=float(up)))
    else:
        new["booted_at"] = old.get("booted_at")
    new["history"] = history
    return new, True
