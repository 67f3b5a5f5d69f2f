"""Config routes the service generator cannot express; everything else is generated from
`netslate.services.config.ConfigService`.

- `PUT /api/v1/config/node` and `POST /api/v1/config/set`: the body is refused (413) past 1 MiB
  while it streams in, before it is all in memory (a node document is at most 256 KiB).
- `GET /api/v1/machines/{machine}/bundle`: the agent's signed bundle with ETag / If-None-Match,
  `?wait=S` long-poll woken by the config notifier, and the machine credential as bearer token.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from netslate.config.credentials import PREFIX as CREDENTIAL_PREFIX
from netslate.server import auth
from netslate.services.config import LocalConfig, NodeWritten

router = APIRouter(prefix="/api/v1", tags=["config"])

MAX_WAIT = 300.0
MAX_BODY = 1024 * 1024  # a node document is at most 256 KiB; leave room for JSON overhead


def _service(request: Request, caller) -> LocalConfig:
    return LocalConfig(request.app.state.parts, caller)


async def _json_body(request: Request, limit: int = MAX_BODY) -> Any:
    """Read a JSON body of at most `limit` bytes (refused early, before it is all in memory)."""
    if int(request.headers.get("content-length") or 0) > limit:
        raise HTTPException(413, f"request body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except ValueError as exc:
        raise HTTPException(400, f"body is not JSON: {exc}") from None


def _model(cls, data):
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(400, "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors(include_input=False))) from None


class NodeBody(BaseModel):
    document: dict[str, Any] | None = None
    expect_revision: int | None = None


class SetBody(BaseModel):
    path: str
    key: str
    value: Any = None


def _documented(model) -> dict:
    """The JSON body a hand-read route takes, for the OpenAPI document."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


@router.put("/config/node", response_model=NodeWritten, openapi_extra=_documented(NodeBody))
async def put_node(request: Request, path: str = Query(...), caller=auth.require("operator")):
    """Replace one node's working document: body `{"document": {...}, "expect_revision": N}`."""
    body = _model(NodeBody, await _json_body(request))
    return await run_in_threadpool(_service(request, caller).put_node, path, body.document, body.expect_revision)


@router.post("/config/set", response_model=NodeWritten, openapi_extra=_documented(SetBody))
async def set_value(request: Request, caller=auth.require("operator")):
    """Set one key of a node's working document: body `{"path", "key", "value"}`."""
    body = _model(SetBody, await _json_body(request))
    return await run_in_threadpool(_service(request, caller).set_value, body.path, body.key, body.value)


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


@router.get("/machines/{machine}/bundle")
async def bundle(request: Request, machine: str, wait: float = Query(0, ge=0)):
    """The machine's signed bundle. With `Authorization: Bearer <machine credential>` it holds the
    machine's secrets at or below the credential's trust, sealed to it (`sealed_secrets`); without,
    no secret in any form, and `secrets_removed` says so.
    `?wait=S` with `If-None-Match` long-polls (at most 300 s) for a different bundle."""
    token = auth.bearer(request)
    credential = None
    caller = await run_in_threadpool(auth.caller_of, request)
    if token:
        if token.startswith(CREDENTIAL_PREFIX):
            credential = token
        elif caller.role is None:
            raise HTTPException(403, "the bearer token is neither this machine's credential nor an API token")
    service = _service(request, caller)
    notifier = request.app.state.parts.config_notifier
    seen = notifier.version
    envelope, etag, _info = await run_in_threadpool(service.signed_bundle, machine, credential)
    if credential and not envelope["payload"]["authenticated"]:
        raise HTTPException(403, "this credential does not belong to this machine (enroll it again)")
    inm = request.headers.get("if-none-match")
    deadline = time.monotonic() + min(wait, MAX_WAIT)
    while _matches(inm, etag) and time.monotonic() < deadline:
        if await request.is_disconnected():
            break
        moved = await notifier.wait(seen, timeout=min(5.0, deadline - time.monotonic()))
        if not moved:
            continue
        seen = notifier.version
        envelope, etag, _info = await run_in_threadpool(service.signed_bundle, machine, credential)
    headers = {"ETag": etag, "Cache-Control": "no-store"}
    if _matches(inm, etag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(envelope, headers=headers)
