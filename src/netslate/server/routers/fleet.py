"""Fleet routes for machines and Prometheus, which the generator cannot express: the agent's
report (machine credential, TCP peer, 202) and /metrics (text exposition format). The fleet
table and identify are generated from services/fleet.py."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from netslate.fleet.reports import ReportRefused
from netslate.server.auth import bearer, caller_of
from netslate.services.fleet import LocalFleet, ReportAccepted

router = APIRouter(tags=["fleet"])


def _fleet(request: Request) -> LocalFleet:
    return LocalFleet(request.app.state.parts, caller_of(request))


# What a report may carry (documented for clients and the fuzz run; core.clean_report checks it).
REPORT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object",
    "properties": {
        "phase": {"enum": ["booting", "configured", "heartbeat"]},
        "generation": {"type": "integer", "minimum": 0},
        "config_source": {"enum": ["server", "cache", "none"]},
        "image_source": {"enum": ["server", "cache"]},
        "image": {"type": "string"}, "version": {"type": "integer"}, "mode": {"type": "string"},
        "modules": {"type": "object", "additionalProperties": {"type": "string"}},
        "health": {"type": "object"},
        "facts": {"type": "object", "description": "template input, only from a report with the machine credential"},
        "timings": {"type": "object"}, "problems": {"type": "array", "items": {"type": "string"}},
        "uptime_s": {"type": "number"}, "sent_at": {"type": "number"}, "queued": {"type": "boolean"},
    },
}}}}}


@router.post("/api/v1/machines/{machine}/report", status_code=202, response_model=ReportAccepted, openapi_extra=REPORT_BODY)
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
    except ReportRefused as exc:
        raise HTTPException(403, str(exc)) from None
    return accepted.model_dump(mode="json")


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request):
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(_fleet(request).metrics(), media_type=CONTENT_TYPE_LATEST)
