from fastapi import APIRouter, Request
from pydantic import BaseModel

from netslate.server import auth

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


class TokenRequest(BaseModel):
    name: str
    role: str = "viewer"


@router.get("")
def list_tokens(request: Request, _p=auth.require("admin")):
    return auth.list_tokens(request.app.state.ctx)


@router.post("", status_code=201)
def create_token(body: TokenRequest, request: Request, _p=auth.require("admin")):
    token = auth.create_token(request.app.state.ctx, body.name, body.role)
    return {"name": body.name, "role": body.role, "token": token}


@router.delete("/{name}", status_code=204)
def delete_token(name: str, request: Request, _p=auth.require("admin")):
    auth.remove_token(request.app.state.ctx, name)
