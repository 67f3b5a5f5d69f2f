"""/api/v1/machines: the machine inventory (reads open, changes need the operator role)."""

from typing import Optional

from fastapi import APIRouter, Request
from pydantic import BaseModel

from netslate.boot import store as bstore
from netslate.server import auth

router = APIRouter(prefix="/api/v1/machines", tags=["machines"])


class MachineBody(BaseModel):
    macs: list[str] = []
    uuid: Optional[str] = None
    serial: Optional[str] = None
    name: Optional[str] = None
    hostname: Optional[str] = None
    labels: dict[str, str] = {}
    group: Optional[str] = None


class LabelBody(BaseModel):
    set: dict[str, str] = {}
    remove: list[str] = []
    hostname: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None


class PinBody(BaseModel):
    image: str  # NAME@VERSION-OR-TAG


def _ctx(request: Request):
    return request.app.state.ctx


@router.get("")
def list_machines(request: Request, state: Optional[str] = None):
    return bstore.list_machines(_ctx(request), state)


@router.get("/{ident}")
def show_machine(ident: str, request: Request):
    return bstore.show_machine(_ctx(request), ident)


@router.post("", status_code=201)
def add_machine(body: MachineBody, request: Request, p=auth.require("operator")):
    return bstore.add_machine(_ctx(request), body.macs, body.uuid, body.serial, body.name, body.hostname,
                              body.labels, body.group, actor=f"token:{p.name}")


@router.post("/{ident}/approve")
def approve(ident: str, request: Request, p=auth.require("operator")):
    return bstore.approve_machine(_ctx(request), ident, actor=f"token:{p.name}")


@router.post("/{ident}/labels")
def label(ident: str, body: LabelBody, request: Request, p=auth.require("operator")):
    return bstore.label_machine(_ctx(request), ident, body.set, body.remove, actor=f"token:{p.name}",
                                hostname=body.hostname, group=body.group, name=body.name)


@router.delete("/{ident}")
def remove(ident: str, request: Request, p=auth.require("operator")):
    return bstore.remove_machine(_ctx(request), ident, actor=f"token:{p.name}")


@router.put("/{ident}/pin")
def pin(ident: str, body: PinBody, request: Request, p=auth.require("operator")):
    return bstore.pin_machine(_ctx(request), ident, body.image, actor=f"token:{p.name}")


@router.delete("/{ident}/pin")
def unpin(ident: str, request: Request, p=auth.require("operator")):
    return bstore.unpin_machine(_ctx(request), ident, actor=f"token:{p.name}")
