"""IP pools API (`network.mode: pool`): list/show for anyone with read access, changes for operators."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from netslate.config import ippools
from netslate.server import auth

router = APIRouter(prefix="/api/v1/ippools", tags=["config"])


def _ctx(request: Request):
    return request.app.state.ctx


class PoolBody(BaseModel):
    name: str
    range: str
    prefix: int
    gateway: str | None = None
    dns: list[str] = []


@router.get("")
def list_pools(request: Request):
    return ippools.list_pools(_ctx(request))


@router.post("")
def add_pool(request: Request, body: PoolBody, p=auth.require("operator")):
    return ippools.add_pool(_ctx(request), body.name, body.range, body.prefix, body.gateway, body.dns, f"api:{p.name}")


@router.get("/{name}")
def show_pool(request: Request, name: str):
    return ippools.show_pool(_ctx(request), name)


@router.delete("/{name}")
def remove_pool(request: Request, name: str, force: bool = False, p=auth.require("operator")):
    return ippools.remove_pool(_ctx(request), name, f"api:{p.name}", force)


@router.delete("/{name}/leases/{machine}")
def release(request: Request, name: str, machine: str, p=auth.require("operator")):
    return ippools.release(_ctx(request), name, machine, f"api:{p.name}")
