"""Fleet routes for machines and Prometheus, which the generator cannot express: the agent's
report (machine credential, TCP peer, 202) and /metrics (text exposition format). The fleet
table and identify are generated from services/fleet.py."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from netslate.fleet.reports import Forbidden
from netslate.server.auth import bearer, caller_of
from netslate.services.fleet import LocalFleet

router = APIRouter(tags=["fleet"])


def _fleet(request: Request) -> LocalFleet:
    return LocalFleet(request.app.state.parts, caller_of(request))


@router.post("/api/v1/machines/{machine}/report", status_code=202)
async def report(request: Request, machine: str):
    """An agent's report. Enrolled machines must send `Authorization: Bearer <machine credential>`;
    others are accepted and marked unauthenticated (flag `unauthenticated`)."""
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "a report is a JSON object") from None
    token = bearer(request)
    credential = token if token and token.startswith("nsm_") else None
    remote = request.client.host if request.client else None
    try:
        accepted = await run_in_threadpool(_fleet(request).report, machine, body, credential, remote)
    except Forbidden as exc:
        raise HTTPException(403, str(exc)) from None
    return accepted.model_dump(mode="json")


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request):
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(_fleet(request).metrics(), media_type=CONTENT_TYPE_LATEST)
