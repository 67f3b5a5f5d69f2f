"""The admin dashboard's pages (`/`, `/machines`, ...) and the login/logout pages.

Every handler: find the caller, call the local services, render. No business logic here: what a
page needs and no service offered became a service operation (machines.search, audit.list, ...).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from netslate.errors import UserError
from netslate.server import auth as server_auth
from netslate.services.auth import LoginRequest
from netslate.services.machines import LabelChange
from netslate.services.pools import DesktopRequest
from netslate.web.common import (
    attempt,
    caller,
    error_page,
    error_status,
    redirect,
    render,
    require_staff,
    safe_next,
    services,
)

router = APIRouter(include_in_schema=False)


# ---------------------------------------------------------------- login / logout


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/"):
    return render(request, "login.html", next=safe_next(next), username="")


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, username: str = Form(""), password: str = Form(""), next: str = Form("/")):
    target = safe_next(next)
    login_request = LoginRequest(username=username[:256], password=password[:1024])
    try:
        result = services(request).auth.login(login_request)
    except UserError as exc:
        return render(request, "login.html", status=error_status(exc), next=target, username=username,
                      errors=[str(exc)])
    if result.role is None and target == "/":
        target = "/portal"
    response = redirect(target)
    server_auth.set_session_cookie(response, result, server_auth.request_is_https(request))
    return response


@router.get("/logout", response_class=HTMLResponse)
def logout_page(request: Request):
    return render(request, "logout.html")


@router.post("/logout")
def logout(request: Request):
    if caller(request).kind == "user":
        services(request).auth.logout()
    response = redirect("/login")
    server_auth.clear_session_cookie(response)
    return response


# ---------------------------------------------------------------- dashboard

LIVE_SECONDS = 5  # how often the fleet band refreshes itself (htmx polling)


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request):
    require_staff(request)
    sv = services(request)
    return render(request, "dashboard.html", health=sv.overview.health(), fleet=sv.overview.fleet(), live=LIVE_SECONDS)


@router.get("/fragments/fleet", response_class=HTMLResponse)
def fleet_fragment(request: Request):
    """The fleet-by-state band and rollouts, re-fetched by htmx every few seconds."""
    require_staff(request)
    return render(request, "_fleet.html", fleet=services(request).overview.fleet(), live=LIVE_SECONDS)


# ---------------------------------------------------------------- machines

MACHINE_FILTERS = ("site", "cluster", "pool", "folder", "state", "image", "version", "mac", "label", "text")
SORTABLE = ("id", "name", "hostname", "state", "group", "last_seen", "image", "version")
PAGE_SIZES = (25, 50, 100, 200)
BULK_ACTIONS = ("approve", "label", "pin")


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(max(int(value), low), high) if value not in (None, "") else default
    except ValueError:
        return default


@router.get("/machines", response_class=HTMLResponse)
def machines_page(request: Request):
    require_staff(request)
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in MACHINE_FILTERS}
    sort = q.get("sort", "id")
    limit = _int(q.get("limit"), 50, 1, 500)
    offset = _int(q.get("offset"), 0, 0, 10**9)
    active = {k: v for k, v in filters.items() if v}

    def url(**change: Any) -> str:
        params = {**active, "sort": sort, "limit": limit, "offset": offset, **change}
        params = {k: v for k, v in params.items() if v not in (None, "") and not (k == "offset" and v == 0)
                  and not (k == "sort" and v == "id") and not (k == "limit" and v == 50)}
        return "/machines" + (f"?{urlencode(params)}" if params else "")

    page, error = attempt(lambda: services(request).machines.search(**{k: v for k, v in active.items()}, sort=sort,
                                                                    offset=offset, limit=limit))
    return render(request, "machines.html", status=error_status(error) if error else 200, page=page, filters=filters,
                  sort=sort, limit=limit, offset=offset, url=url, sortable=SORTABLE, page_sizes=PAGE_SIZES,
                  errors=[str(error)] if error else [], states=("discovered", "held", "approved", "booting", "configured",
                                                                 "degraded", "offline"))


@router.post("/machines/bulk", response_class=HTMLResponse)
async def machines_bulk(request: Request):
    """Approve, label or pin the ticked machines; one result line per machine."""
    require_staff(request)
    form = await request.form()
    ids = [str(v) for v in form.getlist("id")][:500]
    action = str(form.get("action", ""))
    back = safe_next(str(form.get("back", "/machines")), "/machines")
    sv = services(request)
    results = []
    if action not in BULK_ACTIONS:
        return render(request, "bulk.html", status=400, results=[], action=action, back=back,
                      errors=[f"unknown action {action!r}: choose {', '.join(BULK_ACTIONS)}"])
    if not ids:
        return render(request, "bulk.html", status=400, results=[], action=action, back=back, errors=["tick at least one machine"])
    label_set, label_error = _label_pair(str(form.get("label", "")))
    pin = str(form.get("image", "")).strip()
    first_error = None
    for ident in ids:
        if action == "approve":
            done, err = attempt(lambda: sv.machines.approve(f"id:{ident}"))
        elif action == "label":
            done, err = (None, UserError(label_error)) if label_error else attempt(lambda: sv.machines.label(f"id:{ident}", LabelChange(set=label_set)))
        else:
            done, err = attempt(lambda: sv.machines.pin(f"id:{ident}", pin))
        first_error = first_error or err
        results.append({"id": ident, "name": done.name if done else None, "ok": err is None,
                        "message": str(err) if err else {"approve": "approved", "label": "labelled", "pin": f"pinned to {pin}"}[action]})
    # 200 when any machine was done (the page reports each one); every one refused: the first refusal's status
    status = 200 if any(r["ok"] for r in results) else error_status(first_error)
    return render(request, "bulk.html", status=status, results=results, action=action, back=back)


def _label_pair(text: str) -> tuple[dict[str, str], str | None]:
    key, sep, value = text.strip().partition("=")
    if not key or not sep:
        return {}, "give the label as KEY=VALUE"
    return {key.strip(): value.strip()}, None


def _machine_context(request: Request, ident: str) -> dict:
    sv = services(request)
    machine = sv.machines.show(ident)
    boot, boot_error = attempt(lambda: sv.boot.explain(f"id:{machine.id}"))
    config, config_error = attempt(lambda: sv.config.explain(f"id:{machine.id}"))
    values = _flatten(config.document) if config else {}
    sources = [(k, values.get(k), node) for k, node in sorted((config.sources if config else {}).items())]
    return {"m": machine, "boot": boot, "boot_error": boot_error, "config": config, "config_error": config_error,
            "config_values": sources, "ident": f"id:{machine.id}"}


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'/a/b': 1, '/a': {...}}: each value under the JSON-pointer-like key config explain's `sources` use."""
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            key = f"{prefix}/{k}"
            out[key] = v
            out.update(_flatten(v, key))
    return out


@router.get("/machines/{ident}", response_class=HTMLResponse)
def machine_page(request: Request, ident: str, done: str = ""):
    require_staff(request)
    try:
        context = _machine_context(request, ident)
    except UserError as exc:
        return error_page(request, exc, "/machines")
    return render(request, "machine.html", flash=DONE.get(done), **context)


DONE = {
    "approved": "Approved.", "labelled": "Labels saved.", "pinned": "Pinned.", "unpinned": "Pin removed.",
    "published": "Published.", "promoted": "Canary promoted to every machine.", "rolledback": "Rolled back.",
    "reset": "Working copy reset to the newest generation.", "tagged": "Tag moved.", "requested": "Desktop requested.",
    "released": "Desktop released; the pool resets it.", "unset": "Value removed.", "set": "Value saved.",
}


def _machine_action(request: Request, ident: str, fn, done: str):
    require_staff(request)
    _, error = attempt(fn)
    if error is not None:
        return error_page(request, error, f"/machines/{quote(ident, safe='')}")
    return redirect(f"/machines/{quote(ident, safe='')}?done={done}")


@router.post("/machines/{ident}/approve")
def machine_approve(request: Request, ident: str):
    return _machine_action(request, ident, lambda: services(request).machines.approve(ident), "approved")


@router.post("/machines/{ident}/pin")
def machine_pin(request: Request, ident: str, image: str = Form("")):
    return _machine_action(request, ident, lambda: services(request).machines.pin(ident, image.strip()), "pinned")


@router.post("/machines/{ident}/unpin")
def machine_unpin(request: Request, ident: str):
    return _machine_action(request, ident, lambda: services(request).machines.unpin(ident), "unpinned")


@router.post("/machines/{ident}/labels")
def machine_label(request: Request, ident: str, set_label: str = Form(""), remove: str = Form("")):
    def change():
        pairs = {}
        if set_label.strip():
            pairs, problem = _label_pair(set_label)
            if problem:
                raise UserError(problem)
        return services(request).machines.label(ident, LabelChange(set=pairs, remove=[remove] if remove else []))

    return _machine_action(request, ident, change, "labelled")


# ---------------------------------------------------------------- images


@router.get("/images", response_class=HTMLResponse)
def images_page(request: Request):
    require_staff(request)
    return render(request, "images.html", images=services(request).images.list())


@router.get("/images/{name}", response_class=HTMLResponse)
def image_page(request: Request, name: str, a: str = "", b: str = "", done: str = ""):
    require_staff(request)
    sv = services(request)
    versions, error = attempt(lambda: sv.images.versions(name))
    if error is not None:
        return error_page(request, error, "/images")
    history = []
    for v in versions:
        if v.tags or len(history) < 50:
            detail, _ = attempt(lambda: sv.images.show(name, str(v.version)))
            for event in (detail.tag_history if detail else []):
                history.append(event)
    history = sorted({(e.at, e.tag, e.to): e for e in history}.values(), key=lambda e: e.at, reverse=True)[:100]
    diff, diff_error = (None, None)
    if a and b:
        diff, diff_error = attempt(lambda: sv.images.diff(name, a, b))
    tags = {t: v.version for v in versions for t in v.tags}
    previous = {}
    for e in reversed(history):  # oldest first: the last move of each tag away from a version
        if e.from_ is not None:
            previous[e.tag] = e.from_
    return render(request, "image.html", name=name, versions=list(reversed(versions)), history=history, tags=tags,
                  previous=previous, diff=diff, a=a, b=b, flash=DONE.get(done), errors=[str(diff_error)] if diff_error else [])


@router.post("/images/{name}/tags")
def image_tag(request: Request, name: str, tag: str = Form(""), version: str = Form(""), reason: str = Form("")):
    require_staff(request)
    back = f"/images/{quote(name, safe='')}"
    try:
        number = int(version)
    except ValueError:
        return error_page(request, UserError(f"version must be a number, not {version[:40]!r}"), back)
    _, error = attempt(lambda: services(request).images.set_tag(name, tag.strip(), number, reason))
    if error is not None:
        return error_page(request, error, back)
    return redirect(back + "?done=tagged")


# ---------------------------------------------------------------- configuration


@router.get("/config", response_class=HTMLResponse)
def config_page(request: Request, done: str = ""):
    require_staff(request)
    sv = services(request)
    return render(request, "config.html", status_=sv.config.status(), tree=sv.config.tree(), diff=sv.config.diff(machines=True),
                  history=sv.config.history(limit=50), flash=DONE.get(done))


@router.get("/config/node", response_class=HTMLResponse)
def config_node_page(request: Request, path: str = "/", done: str = ""):
    require_staff(request)
    node, error = attempt(lambda: services(request).config.node(path))
    if error is not None:
        return error_page(request, error, "/config")
    return render(request, "config_node.html", node=node, flash=DONE.get(done))


@router.get("/config/generations/{number}", response_class=HTMLResponse)
def config_generation_page(request: Request, number: int):
    require_staff(request)
    gen, error = attempt(lambda: services(request).config.generation(number))
    if error is not None:
        return error_page(request, error, "/config")
    return render(request, "config_generation.html", gen=gen)


def _config_action(request: Request, fn, done: str, back: str = "/config"):
    require_staff(request)
    _, error = attempt(fn)
    if error is not None:
        return error_page(request, error, back)
    return redirect(f"{back}{'&' if '?' in back else '?'}done={done}")


@router.post("/config/publish")
def config_publish(request: Request, message: str = Form(""), canary: str = Form(""), expect_base: str = Form("")):
    base = int(expect_base) if expect_base.isdigit() else None
    return _config_action(request, lambda: services(request).config.publish(message, canary.strip() or None, base), "published")


@router.post("/config/promote")
def config_promote(request: Request):
    return _config_action(request, lambda: services(request).config.promote(), "promoted")


@router.post("/config/rollback")
def config_rollback(request: Request, generation: str = Form(""), message: str = Form("")):
    def go():
        if not generation.isdigit():
            raise UserError("choose a generation to roll back to")
        return services(request).config.rollback(int(generation), message or f"rollback to {generation}")

    return _config_action(request, go, "rolledback")


@router.post("/config/reset")
def config_reset(request: Request):
    return _config_action(request, lambda: services(request).config.reset(), "reset")


@router.post("/config/set")
def config_set(request: Request, path: str = Form(""), key: str = Form(""), value: str = Form("")):
    back = f"/config/node?path={quote(path, safe='/@')}"
    return _config_action(request, lambda: services(request).config.set_value(path, key.strip(), value), "set", back)


@router.post("/config/unset")
def config_unset(request: Request, path: str = Form(""), key: str = Form("")):
    back = f"/config/node?path={quote(path, safe='/@')}"
    return _config_action(request, lambda: services(request).config.unset(path, key.strip()), "unset", back)


# ---------------------------------------------------------------- sites, pools, audit


@router.get("/sites", response_class=HTMLResponse)
def sites_page(request: Request):
    require_staff(request)
    sv = services(request)
    replica = {s.name: s for s in sv.servers.list()}  # branch servers: read-only state and lag (issue 15)
    return render(request, "sites.html", sites=sv.sites.list(), health=sv.overview.health(), replica=replica)


@router.get("/pools", response_class=HTMLResponse)
def pools_page(request: Request):
    require_staff(request)
    sv = services(request)
    pools = sv.pools.list()
    desktops = sv.desktops.list()
    by_pool: dict[str, list] = {}
    for d in desktops:
        by_pool.setdefault(d.pool or "", []).append(d)
    return render(request, "pools.html", pools=pools, by_pool=by_pool)


@router.get("/pools/{name}", response_class=HTMLResponse)
def pool_page(request: Request, name: str, done: str = ""):
    require_staff(request)
    pool, error = attempt(lambda: services(request).pools.show(name))
    if error is not None:
        return error_page(request, error, "/pools")
    return render(request, "pool.html", pool=pool, flash=DONE.get(done))


@router.post("/pools/{name}/request")
def pool_request(request: Request, name: str, user: str = Form("")):
    back = f"/pools/{quote(name, safe='')}"
    return _config_action(request, lambda: services(request).pools.request(name, DesktopRequest(user=user.strip())), "requested", back)


@router.post("/desktops/{ref}/release")
def desktop_release(request: Request, ref: str, pool: str = Form("")):
    back = f"/pools/{quote(pool, safe='')}" if pool else "/pools"
    return _config_action(request, lambda: services(request).desktops.release(ref), "released", back)


AUDIT_FILTERS = ("actor", "action", "target", "since", "until")


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request):
    require_staff(request)
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in AUDIT_FILTERS}
    limit = _int(q.get("limit"), 50, 1, 500)
    offset = _int(q.get("offset"), 0, 0, 10**9)
    active = {k: v for k, v in filters.items() if v}
    page, error = attempt(lambda: services(request).audit.list(**active, offset=offset, limit=limit))

    def url(**change: Any) -> str:
        params = {**active, "limit": limit, "offset": offset, **change}
        params = {k: v for k, v in params.items() if v not in (None, "", 0) and not (k == "limit" and v == 50)}
        return "/audit" + (f"?{urlencode(params)}" if params else "")

    return render(request, "audit.html", status=error_status(error) if error else 200, page=page, filters=filters,
                  url=url, limit=limit, offset=offset, errors=[str(error)] if error else [])
