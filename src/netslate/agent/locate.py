"""Step 1: locate a server. Order: the boot's `netslate.server=` list → the cached `locate` answer
→ DNS SRV `_netslate._tcp.<domain>` (closest site first: the responder gives the caller's own
site the lowest priority). Each candidate gets a bounded time-out; the first that answers
`GET /api/v1/locate` wins, and its answer refreshes the cache for the next outage.
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from netslate.agent import dnssrv, http
from netslate.agent.bootinfo import normalize_server
from netslate.agent.util import read_json, under, write_json
from netslate.onmachine import pinning, sitecert
from netslate.onmachine.envelope import SignatureError


@dataclass
class Located:
    url: str | None
    tried: list[dict] = field(default_factory=list)  # [{url, source, error}]
    answer: dict | None = None


def urls_from_locate(answer) -> list[str]:
    """Base URLs from a `GET /api/v1/locate` answer, keeping its order (closest first)."""
    out: list[str] = []
    if not isinstance(answer, dict) or not isinstance(answer.get("servers"), list):
        return out
    for srv in answer["servers"]:
        if not isinstance(srv, dict):
            continue
        for u in srv.get("urls") or []:
            n = normalize_server(str(u))
            if n and n not in out:
                out.append(n)
    return out


def tls_of(answer, url: str) -> tuple[str | None, str | None]:
    """(https URL, certificate pin) of the server that gave `answer` when asked at the plain `url`:
    its own `tls` (the same host, its TLS port), else the entry of the answer that lists `url`.
    (None, None) for a server without TLS (or an answer from an older server)."""
    if not isinstance(answer, dict) or not url.startswith("http://"):
        return None, None
    own = answer.get("tls")
    if isinstance(own, dict) and isinstance(own.get("port"), int) and 0 < own["port"] < 65536:
        host = urllib.parse.urlsplit(url).hostname or ""
        secure = normalize_server(f"https://{f'[{host}]' if ':' in host else host}:{own['port']}")
        if secure and _pin(own.get("pin")):
            return secure, _pin(own.get("pin"))
    for srv in answer.get("servers") or []:
        if isinstance(srv, dict) and url in [normalize_server(str(u)) for u in srv.get("urls") or []]:
            https = [n for n in (normalize_server(str(u)) for u in srv.get("https_urls") or []) if n and n.startswith("https://")]
            if https and _pin(srv.get("pin")):
                return https[0], _pin(srv.get("pin"))
    return None, None


def _pin(value) -> str | None:
    try:
        return pinning.parse_pin(value)
    except (ValueError, AttributeError, TypeError):
        return None


def candidates(boot_servers: list[str], cached: list[str], srv: list[str]) -> list[tuple[str, str]]:
    """(url, source) in trial order, each URL once (pure)."""
    out: list[tuple[str, str]] = []
    seen = set()
    for source, urls in (("boot", boot_servers), ("cache", cached), ("dns", srv)):
        for u in urls:
            if u not in seen:
                seen.add(u)
                out.append((u, source))
    return out


def dns_servers(root: Path, domain: str | None, timeout: float = 2.0, nameserver: str | None = None) -> list[str]:
    """SRV lookup with the system resolvers (or `nameserver` HOST:PORT); domain from the boot or resolv.conf."""
    try:
        text = under(root, "/etc/resolv.conf").read_text()
    except OSError:
        text = ""
    ns, search = dnssrv.resolv_conf(text)
    if nameserver:
        host, _, port = nameserver.rpartition(":")
        pairs = [(host.strip("[]"), int(port))]
    else:
        pairs = [(h, 53) for h in ns[:3]]
    domains = [domain] if domain else search[:3]
    for d in domains:
        urls = dnssrv.lookup_servers(d, pairs, timeout)
        if urls:
            return urls
    return []


def load_cache(path: Path) -> list[str]:
    return urls_from_locate((read_json(path) or {}).get("answer"))


def save_cache(path: Path, answer: dict, via: str, pin: str | None = None) -> None:
    """`pin`: the server certificate's pin the answer came under, kept for boots that carry none."""
    data = {"fetched_at": time.time(), "via": via, "answer": answer}
    if pin:
        data["pin"] = pin
    write_json(path, data)


def cached_pin(path: Path) -> str | None:
    """The certificate pin kept with the cached locate answer (None if none or not a valid pin)."""
    try:
        return pinning.parse_pin((read_json(path) or {}).get("pin"))
    except (ValueError, AttributeError):
        return None


def probe(url: str, timeout: float, key: bytes | None = None, site: str | None = None,
          revocations: dict | None = None) -> dict:
    """Ask one server for its locate answer; HttpError when it does not give a usable one. With a
    pinned `key` the answer must be signed by it (or by a certified, unrevoked key of the answer's
    site, and of `site` when this machine knows its site: issue 15 §3)."""
    if key is None:
        ans = http.get_json(f"{url}/api/v1/locate", timeout=timeout)
    else:
        env = http.get_json(f"{url}/api/v1/locate?signed=true", timeout=timeout)
        try:
            ans = sitecert.open_signed(env, key, site=site, revocations=revocations)
        except SignatureError as exc:
            raise http.HttpError(f"locate answer refused: {exc}") from None
    if not isinstance(ans, dict) or not isinstance(ans.get("servers"), list):
        raise http.HttpError("locate answer has no server list")
    return ans


def find(cands: list[tuple[str, str]], timeout: float = 4.0, key: bytes | None = None, site: str | None = None,
         revocations: dict | None = None) -> Located:
    res = Located(None)
    for url, source in cands:
        try:
            res.answer = probe(url, timeout, key, site, revocations)
        except http.HttpError as exc:
            res.tried.append({"url": url, "source": source, "error": str(exc)})
            continue
        res.url = url
        res.tried.append({"url": url, "source": source, "error": None})
        return res
    return res
