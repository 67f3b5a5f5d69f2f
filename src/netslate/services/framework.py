"""One contract per noun, three adapters generated from it.

A service contract is a class whose methods carry `@op(METHOD, PATH, role=...)`. From that one
declaration come:
- the FastAPI router (`router_for`): path parameters from `{name}` in the path, the rest as query
  parameters (GET/DELETE) or one JSON body (POST/PUT/PATCH), the return annotation as the typed
  response model, and the role checked before the body is used;
- the HTTP client (`http_client`): the same method over /api/v1 with httpx, the JSON answer
  validated back into the annotated record type;
- nothing for the local side: the local implementation subclasses the contract and implements the
  methods. The CLI picks local or HTTP once and never branches on it (Ironic's rpcapi shape).

Role checks live here (`authorize`), once, for every adapter: the router calls it with the
request's caller, and the local CLI acts as `local` with the admin role over its own data dir.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, TypeAdapter, create_model

from netslate.errors import UserError

# Caller lives in the identity part (sessions build one; parts may not import services); re-exported here.
from netslate.identity.caller import ANONYMOUS, ROLES, Caller  # noqa: E402,F401

_PATH_PARAM = re.compile(r"{([a-z_]+)(?::path)?}")


class Forbidden(UserError):
    """The caller lacks the role: 401 without credentials, 403 with too small a role."""

    def __init__(self, message: str, authenticated: bool):
        super().__init__(message)
        self.authenticated = authenticated


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    role: str | None = None  # None: open (reads); else the least role that may call it
    status: int = 200
    remote: bool = True  # False: needs the server's own files; over HTTP it says so in one line
    summary: str = ""
    throttled: bool = False  # may answer 429 (too many attempts: logins)

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)

    @property
    def has_body(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH")


def op(method: str, path: str, *, role: str | None = None, status: int = 200, remote: bool = True, throttled: bool = False):
    """Declare a contract method's HTTP shape and the role it needs."""

    def mark(fn):
        fn.__op__ = Op(method.upper(), path, role, status, remote, (fn.__doc__ or "").strip().split("\n")[0], throttled)
        return fn

    return mark


def authorize(caller: Caller, operation: Op) -> None:
    if operation.role is None:
        return
    if caller.role is None:
        if caller.kind == "user":  # logged in, with pool entitlements only
            raise Forbidden(f"this needs the {operation.role} role; {caller.actor} has no role", authenticated=True)
        raise Forbidden("a bearer token or a login is required", authenticated=False)
    if not caller.has(operation.role):
        raise Forbidden(f"this needs the {operation.role} role; {caller.actor} is {caller.role}", authenticated=True)


def requires(role: str | None):
    """The least role of a public service method without an @op (its route is hand-written, or it
    has none); None lets any caller in and leaves the check to the method (e.g. "own desktop")."""

    def mark(fn):
        fn.__role__ = role
        return fn

    return mark


class Checked:
    """A local service whose every public method checks the caller first (`authorize`): declared
    operations by their @op role, others by @requires, anything unmarked needs admin. Every adapter
    that calls `Services.local` (the CLI, the web pages, tests) gets this; the routers check too."""

    def __init__(self, service: "Service"):
        self._service = service
        self._ops = operations(type(service))

    def __getattr__(self, name: str):
        value = getattr(self._service, name)
        if name.startswith("_") or not callable(value) or isinstance(value, type):
            return value
        declared = self._ops.get(name)
        if declared is None:
            marked = [vars(k)[name] for k in type(self._service).__mro__ if hasattr(vars(k).get(name), "__role__")]
            declared = Op("POST", "", marked[0].__role__ if marked else "admin")

        def call(*args, **kwargs):
            authorize(self._service.caller, declared)
            return value(*args, **kwargs)

        call.__name__ = name
        return call


class Service:
    """Base of every contract. Local implementations get the composition root and the caller."""

    noun: str = ""

    def __init__(self, parts: Any = None, caller: Caller = ANONYMOUS):
        self.parts = parts
        self.caller = caller

    @property
    def actor(self) -> str:
        return self.caller.actor


def operations(contract: type) -> dict[str, Op]:
    """Method name → Op for every declared operation of a contract (inherited ones too)."""
    out: dict[str, Op] = {}
    for klass in reversed(contract.__mro__):
        for name, fn in vars(klass).items():
            if callable(fn) and hasattr(fn, "__op__"):
                out[name] = fn.__op__
    return out


def _contract_fn(contract: type, name: str):
    for klass in contract.__mro__:
        if name in vars(klass) and hasattr(vars(klass)[name], "__op__"):
            return vars(klass)[name]
    raise KeyError(name)


def _hints(fn) -> dict[str, Any]:
    return typing.get_type_hints(fn, include_extras=True)


def _body_params(sig: inspect.Signature, operation: Op) -> list[inspect.Parameter]:
    return [p for name, p in sig.parameters.items() if name != "self" and name not in operation.path_params]


def _single_model(params: list[inspect.Parameter], hints: dict) -> str | None:
    if len(params) == 1:
        hint = hints.get(params[0].name)
        if inspect.isclass(hint) and issubclass(hint, BaseModel):
            return params[0].name
    return None


_body_models: dict[tuple[type, str], type[BaseModel]] = {}


def body_model(contract: type, name: str) -> type[BaseModel] | None:
    """The JSON body of a POST/PUT operation: its one model parameter, or a model made of its parameters."""
    fn = _contract_fn(contract, name)
    operation: Op = fn.__op__
    if not operation.has_body:
        return None
    sig, hints = inspect.signature(fn), _hints(fn)
    params = _body_params(sig, operation)
    single = _single_model(params, hints)
    if single:
        return hints[single]
    key = (contract, name)
    if key not in _body_models:
        fields = {p.name: (hints.get(p.name, Any), ... if p.default is inspect.Parameter.empty else p.default) for p in params}
        camel = "".join(w.capitalize() for w in name.split("_"))
        _body_models[key] = create_model(f"{contract.__name__}{camel}Body", **fields)
    return _body_models[key]


# ---------- the router adapter ----------


def router_for(contract: type, local: Callable[[Any, Caller], Service], caller_of: Callable, *, prefix_tags: list[str] | None = None):
    """A FastAPI router whose endpoints call `local(request, caller)`'s methods.

    `caller_of(request)` names the caller (token, session or anonymous); `authorize` runs before
    the body is read into the service.
    """
    from fastapi import APIRouter, Body, Query, Request
    from starlette.concurrency import run_in_threadpool

    router = APIRouter(tags=prefix_tags or [contract.noun or contract.__name__])
    for name, operation in operations(contract).items():
        fn = _contract_fn(contract, name)
        sig, hints = inspect.signature(fn), _hints(fn)
        returns = hints.get("return", Any)
        params = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
        for pname in operation.path_params:
            params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(pname, str)))
        body = body_model(contract, name)
        rest = _body_params(sig, operation)
        if body is not None:
            single = _single_model(rest, hints)
            params.append(inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=body,
                                            default=Body(...) if single or any(p.default is inspect.Parameter.empty for p in rest) else Body(None)))
        else:
            for p in rest:
                default = ... if p.default is inspect.Parameter.empty else p.default
                params.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, str),
                                                default=Query(default)))

        def make(name=name, operation=operation, body=body, rest=rest):
            single = _single_model(rest, hints) if body is not None else None

            async def endpoint(request, **kwargs):
                caller = caller_of(request)
                authorize(caller, operation)
                args = {p: kwargs[p] for p in operation.path_params}
                if body is not None:
                    given = kwargs.get("body")
                    if single:
                        args[single] = given
                    elif given is not None:
                        args.update({p.name: getattr(given, p.name) for p in rest})
                else:
                    args.update({p.name: kwargs[p.name] for p in rest})
                service = local(request, caller)
                return await run_in_threadpool(getattr(service, name), **args)

            endpoint.__signature__ = inspect.Signature(params, return_annotation=returns)
            endpoint.__name__ = f"{contract.__name__}_{name}"
            endpoint.__doc__ = fn.__doc__
            return endpoint

        router.add_api_route(
            operation.path, make(), methods=[operation.method], status_code=operation.status,
            response_model=None if returns in (None, type(None), Any) else returns,
            summary=operation.summary or None, name=f"{contract.noun}.{name}",
            responses={**ERROR_RESPONSES, **THROTTLED_RESPONSE} if operation.throttled else ERROR_RESPONSES,
        )
    return router


class ErrorDetail(BaseModel):
    detail: str


# Errors are JSON whatever the route answers on success (text/plain scripts, octet streams): the
# content is spelled out instead of `model=`, which FastAPI would document in the route's media type.
_ERROR_JSON = {"application/json": {"schema": ErrorDetail.model_json_schema()}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "bad input", "content": _ERROR_JSON},
    401: {"description": "no credentials", "content": _ERROR_JSON},
    403: {"description": "the caller's role is too small", "content": _ERROR_JSON},
    404: {"description": "not found", "content": _ERROR_JSON},
    409: {"description": "conflicts with the current state", "content": _ERROR_JSON},
}
THROTTLED_RESPONSE: dict[int | str, dict[str, Any]] = {
    429: {"description": "too many attempts; Retry-After says when to try again", "content": _ERROR_JSON},
}


# ---------- the HTTP client adapter ----------


def http_client(contract: type) -> type:
    """A subclass of `contract` whose declared methods call the API over `self.api` (ApiClient)."""
    methods: dict[str, Any] = {}
    for name, operation in operations(contract).items():
        methods[name] = _http_method(contract, name, _contract_fn(contract, name), operation)

    def __init__(self, api, caller: Caller = ANONYMOUS):
        Service.__init__(self, None, caller)
        self.api = api

    methods["__init__"] = __init__
    return type(f"Http{contract.__name__}", (contract,), methods)


def _http_method(contract: type, name: str, fn, operation: Op):
    sig, hints = inspect.signature(fn), _hints(fn)
    returns = hints.get("return", Any)
    adapter = None if returns in (None, type(None)) else TypeAdapter(returns)
    body = body_model(contract, name)
    rest = _body_params(sig, operation)
    single = _single_model(rest, hints) if body is not None else None

    def call(self, *args, **kwargs):
        if not operation.remote:
            raise UserError(f"{contract.noun} {name.replace('_', '-')} works on the server's own files: run it on the server, without --server")
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        values.pop("self")
        path = operation.path
        for p in operation.path_params:
            path = re.sub(r"{%s(?::path)?}" % p, _quote(values.pop(p)), path)
        request: dict[str, Any] = {}
        if body is not None:
            payload = values[single] if single else body(**values)
            request["json"] = payload.model_dump(mode="json") if payload is not None else None
        else:
            request["params"] = {k: _query(v) for k, v in values.items() if v is not None}
        response = self.api.request(operation.method, path, **request)
        if adapter is None or not response.content:
            return None
        return adapter.validate_python(response.json())

    call.__name__ = name
    call.__doc__ = fn.__doc__
    return call


def _quote(value: Any) -> str:
    from urllib.parse import quote

    return quote(str(value), safe="")


def _query(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return value


def plain(data: Any) -> Any:
    """Records → JSON-ready Python (for `--json` output and renderers that read dicts)."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, (list, tuple)):
        return [plain(d) for d in data]
    if isinstance(data, dict):
        return {k: plain(v) for k, v in data.items()}
    return data
