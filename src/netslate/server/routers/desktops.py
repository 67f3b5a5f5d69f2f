"""Desktop routes the generated services router cannot express: the remote-viewer file (text),
the browser console (needs the relay port and the host the caller used), golden image uploads
(a streamed body). Everything else is `netslate.services.{hosts,pools,desktops}`."""

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from netslate.server import auth

router = APIRouter(prefix="/api/v1", tags=["desktops"])


def _desktops(request: Request):
    from netslate.services.desktops import LocalDesktops

    return LocalDesktops(request.app.state.parts, auth.caller_of(request))


@router.get("/desktops/{ref}/console.vv")
def console_vv(ref: str, request: Request, type: str | None = None, ttl: int = 120):
    """A remote-viewer connection file with a fresh ticket (the desktop's user or an admin); a SPICE
    file goes through netslate's SPICE proxy and holds no hypervisor address."""
    name, text = _desktops(request).remote_viewer_file(ref, type, ttl, request.url.hostname)
    return PlainTextResponse(
        text, media_type="application/x-virt-viewer",
        headers={"Content-Disposition": f'attachment; filename="{name}.vv"', "Cache-Control": "no-store"},
    )


class BrowserBody(BaseModel):
    ttl: int = 120


@router.post("/desktops/{ref}/browser-console")
def browser_console(ref: str, body: BrowserBody, request: Request):
    """A noVNC page URL whose websocket relay holds a single-use token for this desktop's VNC ticket."""
    return _desktops(request).browser_console(ref, body.ttl, request.url.hostname, request.app.state.parts.console_port)


@router.post("/golden-image-uploads", status_code=201)
async def golden_upload(request: Request, _caller=auth.require("operator")):
    """Stream a file for `POST /api/v1/golden-images/{name}` (a remote `desktop image import`)."""
    from netslate.desktops.golden import Upload

    up = Upload(request.app.state.ctx)
    try:
        async for part in request.stream():
            up.write(part)
    except BaseException:
        up.abort()
        raise
    return {"upload": up.finish()}
