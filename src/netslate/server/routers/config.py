"""Config API: schema, working copy, diff, publish/promote/rollback, history, explain, bundles."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from netslate.config import bundles, schema, store
from netslate.server import auth

router = APIRouter(prefix="/api/v1", tags=["config"])

MAX_WAIT = 300.0
MAX_BODY = 1024 * 1024  # a node document is at most 256 KiB; leave room for JSON overhead


def _ctx(request: Request):
    return request.app.state.ctx


def _bump(request: Request) -> None:
    request.app.state.parts.config_notifier.bump_threadsafe()
    # resolve the new generation's node chains now, not on the first of many bundle requests
    threading.Thread(target=_warm, args=(_ctx(request),), daemon=True, name="config-warm").start()


def _warm(ctx) -> None:
    try:
        bundles.warm_all(ctx)
    except Exception:  # only a cache warm-up: requests resolve on demand anyway
        pass


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


class NodeBody(BaseModel):
    document: dict[str, Any] | None = None
    expect_revision: int | None = None


class SetBody(BaseModel):
    path: str
    key: str
    value: Any = None


class UnsetBody(BaseModel):
    path: str
    key: str


class PublishBody(BaseModel):
    message: str
    canary: str | None = None
    expect_base: int | None = None


class RollbackBody(BaseModel):
    generation: int
    message: str


class PlaceBody(BaseModel):
    path: str


@router.get("/schema/config")
def config_schema():
    """JSON schema of a node document (built from the pydantic models)."""
    return schema.json_schema()


@router.get("/config/status")
def status(request: Request):
    return store.status(_ctx(request))


@router.get("/config/node")
def get_node(request: Request, path: str = Query(...), generation: int | None = None):
    return store.get_node(_ctx(request), path, generation)


def _model(cls, data):
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(400, "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors(include_input=False))) from None


@router.put("/config/node")
async def put_node(request: Request, path: str = Query(...), p=auth.require("operator")):
    """Replace one node's working document: body `{"document": {...}, "expect_revision": N}`."""
    body = _model(NodeBody, await _json_body(request))
    return await run_in_threadpool(store.put_node, _ctx(request), path, body.document or {}, f"api:{p.name}", body.expect_revision)


@router.post("/config/set")
async def set_value(request: Request, p=auth.require("operator")):
    """Set one key of a node's working document: body `{"path", "key", "value"}`."""
    body = _model(SetBody, await _json_body(request))
    return await run_in_threadpool(store.set_value, _ctx(request), body.path, body.key, body.value, f"api:{p.name}")


@router.post("/config/unset")
def unset_value(request: Request, body: UnsetBody, p=auth.require("operator")):
    return store.unset_value(_ctx(request), body.path, body.key, f"api:{p.name}")


@router.get("/config/diff")
def diff(request: Request, machines: bool = True):
    return store.diff(_ctx(request), machines)


@router.post("/config/publish")
def publish(request: Request, body: PublishBody, p=auth.require("operator")):
    out = store.publish(_ctx(request), body.message, f"api:{p.name}", body.canary, body.expect_base)
    _bump(request)
    return out


@router.post("/config/promote")
def promote(request: Request, p=auth.require("operator")):
    out = store.promote(_ctx(request), f"api:{p.name}")
    _bump(request)
    return out


@router.post("/config/rollback")
def rollback(request: Request, body: RollbackBody, p=auth.require("operator")):
    out = store.rollback(_ctx(request), body.generation, body.message, f"api:{p.name}")
    _bump(request)
    return out


@router.post("/config/reset")
def reset(request: Request, p=auth.require("operator")):
    return store.reset_working(_ctx(request), f"api:{p.name}")


@router.get("/config/history")
def history(request: Request, limit: int = Query(100, ge=1, le=10000)):
    return store.history(_ctx(request), limit)


@router.get("/config/generations/{number}")
def generation(request: Request, number: int):
    return store.generation_diff(_ctx(request), number)


@router.get("/machines/{machine}/explain")
def explain(request: Request, machine: str, generation: int | None = None):
    return bundles.explain(_ctx(request), machine, generation)


@router.post("/machines/{machine}/place")
def place(request: Request, machine: str, body: PlaceBody, p=auth.require("operator")):
    out = store.place(_ctx(request), machine, body.path, f"api:{p.name}")
    _bump(request)
    return out


@router.post("/machines/{machine}/enroll")
def enroll(request: Request, machine: str, p=auth.require("operator")):
    return store.enroll(_ctx(request), machine, f"api:{p.name}")


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


@router.get("/machines/{machine}/bundle")
async def bundle(request: Request, machine: str, wait: float = Query(0, ge=0)):
    """The machine's signed bundle. With `Authorization: Bearer <machine credential>` it holds the
    machine's secrets; without, every secret is removed and `secrets_removed` says so.
    `?wait=S` with `If-None-Match` long-polls (at most 300 s) for a different bundle."""
    ctx = _ctx(request)
    token = auth._bearer(request)
    credential = None
    if token:
        if token.startswith("nsm_"):
            credential = token
        elif await run_in_threadpool(auth.principal_for, ctx, token) is None:
            raise HTTPException(403, "the bearer token is neither this machine's credential nor an API token")
    notifier = request.app.state.parts.config_notifier
    seen = notifier.version
    envelope, etag, _info = await run_in_threadpool(bundles.bundle, ctx, machine, credential)
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
        envelope, etag, _info = await run_in_threadpool(bundles.bundle, ctx, machine, credential)
    headers = {"ETag": etag, "Cache-Control": "no-store"}
    if _matches(inm, etag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(envelope, headers=headers)
