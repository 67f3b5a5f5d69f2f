"""The admin dashboard's pages (`/`, `/machines`, ...) and the login/logout pages.

Every handler: find the caller, call the local services, render. No business logic here: what a
page needs and no service offered became a service operation (machines.search, audit.list, ...).
"""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from netslate.errors import UserError
from netslate.server import auth as server_auth
from netslate.services.auth import LoginRequest
from netslate.web.common import caller, error_status, redirect, render, require_staff, safe_next, services

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


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request):
    require_staff(request)
    return render(request, "dashboard.html")


@router.get("/machines", response_class=HTMLResponse)
def machines_page(request: Request):
    require_staff(request)
    return render(request, "dashboard.html")
