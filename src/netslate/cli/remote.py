"""A thin client for the server's /api/v1, used by the CLI with --server."""

import httpx

from netslate.errors import NotFound, UserError, Conflict


def tls_verify(ca: str | None):
    """httpx's `verify` for --ca: a pin (sha256:HEX) → a context that checks the certificate's
    SHA-256 right after the handshake (before the token is sent); a PEM file → trust it as the CA;
    nothing → the system CAs."""
    import ssl

    from netslate.onmachine import pinning

    if not ca:
        return True
    if ca.lower().startswith("sha256:"):
        try:
            return pinning.client_context(pinning.parse_pin(ca))
        except ValueError as exc:
            raise UserError(str(exc)) from None
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"--ca {ca}: not a readable PEM file ({exc})") from None
    return ctx


class ApiClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 60.0, ca: str | None = None):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, verify=tls_verify(ca))

    def request(self, method: str, path: str, **kwargs):
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UserError(f"cannot reach {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text.strip()[:200]
            if isinstance(detail, list):  # FastAPI validation errors
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
            cls = NotFound if response.status_code == 404 else Conflict if response.status_code == 409 else UserError
            raise cls(f"server said ({response.status_code}): {detail}")
        return response

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw).json()

    def post(self, path: str, **kw):
        r = self.request("POST", path, **kw)
        return r.json() if r.content else None

    def put(self, path: str, **kw):
        r = self.request("PUT", path, **kw)
        return r.json() if r.content else None

    def delete(self, path: str, **kw):
        r = self.request("DELETE", path, **kw)
        return r.json() if r.content else None
