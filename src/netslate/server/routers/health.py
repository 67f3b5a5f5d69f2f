import datetime as dt

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from netslate import __version__

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(request: Request):
    """Overall health: the database answers, plus each supervised part (dnsmasq, DNS, ...)."""
    ctx = request.app.state.ctx
    checks: dict = {}
    try:
        with ctx.db.session() as s:
            s.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:  # report, never crash the health endpoint
        checks["database"] = {"ok": False, "error": str(exc).splitlines()[0]}
    for name, probe in request.app.state.parts.health_checks().items():
        try:
            checks[name] = probe()
        except Exception as exc:
            checks[name] = {"ok": False, "error": str(exc)}
    ok = all(c.get("ok") for c in checks.values())
    replica = checks.get("central")  # a branch server: read-only state and replication lag (issue 15)
    body = {
        "ok": ok,
        "read_only": bool(replica and replica.get("read_only")),
        "version": __version__,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(),
        "checks": checks,
    }
    return JSONResponse(body, status_code=200 if ok else 503)
