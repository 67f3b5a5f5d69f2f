"""Fleet status API: agent reports, machine identification, the fleet table, Prometheus /metrics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from netslate.fleet import service
from netslate.server import auth

router = APIRouter(tags=["fleet"])


def _ctx(request: Request):
    return request.app.state.ctx


@router.post("/api/v1/machines/{machine}/report", status_code=202)
async def report(request: Request, machine: str):
    """An agent's report. Enrolled machines must send `Authorization: Bearer <machine credential>`;
    others are accepted and marked unauthenticated (flag `unauthenticated`)."""
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "a report is a JSON object") from None
    token = auth._bearer(request)
    credential = token if token and token.startswith("nsm_") else None
    remote = request.client.host if request.client else None
    try:
        return await run_in_threadpool(service.ingest, _ctx(request), machine, body, credential, remote)
    except service.Forbidden as exc:
        raise HTTPException(403, str(exc)) from None


@router.get("/api/v1/fleet/identify")
def identify(request: Request, ident: str | None = None, mac: list[str] = Query([]), uuid: str | None = None):
    """Which machine is this? By id/name/UUID, else SMBIOS UUID, else MAC. Returns {id, name} only."""
    return service.identify(_ctx(request), ident, mac, uuid)


@router.get("/api/v1/fleet")
def fleet(request: Request, state: str | None = None):
    rows = service.fleet_status(_ctx(request), state)
    return {"summary": service.summary(rows), "machines": rows}


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request):
    from prometheus_client import CONTENT_TYPE_LATEST

    from netslate.fleet.metrics import render

    return Response(render(_ctx(request)), media_type=CONTENT_TYPE_LATEST)
