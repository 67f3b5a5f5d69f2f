"""The static front: nginx in front of `netslate serve`, serving the immutable bytes with sendfile.

`netslate serve --static nginx` (the default when nginx is installed, see docs/serving.md) runs one
nginx on the public listen address and uvicorn on a private loopback port. nginx serves

- `GET /chunks/<id>` straight from the chunk store: the stored zstd file with `Content-Encoding:
  zstd` when the request's Accept-Encoding mentions zstd, else the raw file; a chunk stored as zstd
  for a client that does not accept zstd goes to the Python route (which decompresses it), as does a
  missing chunk (404). Headers as the Python route: immutable Cache-Control, ETag "<id>", Vary,
  If-None-Match → 304.
- the files the Python routes hand over with `X-Accel-Redirect` (a materialized artifact, a chunk
  pack, see frontend_files.py) from DATA/serve, with sendfile and byte ranges;
- everything else by proxy to uvicorn (responses unbuffered: long polls and streams behave as
  before; request bodies read whole first, within the app's own limits, except golden-disk uploads).

Two pure renderers (`render_front_conf`, `render_site_cache_conf`: the nginx `proxy_cache` a site
puts in front of a server) and one supervisor (`NginxFront`, in the manner of the dnsmasq one:
foreground nginx, restarted with backoff when it dies, stopped with the server).
"""

from __future__ import annotations

import ctypes
import fcntl
import grp
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from netslate.fsutil import atomic_write

log = logging.getLogger("netslate.frontend")

IMMUTABLE = "public, max-age=31536000, immutable"
FRONT_HEADER = "X-Netslate-Front"  # set by the front on every proxied request; the app answers with X-Accel-Redirect
FILES_PREFIX = "/_netslate/files/"  # internal location of DATA/serve


def nginx_binary() -> str | None:
    """The nginx executable (Debian installs it in /usr/sbin, which a user's PATH may lack)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class FrontSettings:
    listen_host: str
    listen_port: int
    upstream_port: int
    chunks_dir: str
    files_dir: str
    state_dir: str
    workers: int = 2
    access_log: bool = True  # bytes per request, for `netslate` metrics and the benches (buffered)
    user: str | None = None  # workers' "USER GROUP" when started as root: the server's own user (reads the 0600 store)
    # Request body limits, as the app's (server/limits.py): (path regex, bytes), and the default
    # for other paths (0: none). nginx answers 413 itself: the app would answer before reading the
    # body and close, and a proxy still sending that body would see a reset (502) instead.
    body_limits: tuple[tuple[str, int], ...] = ()
    default_body_limit: int = 0
    # Paths (of body_limits) whose routes need a role: a body sent with no credential at all (no
    # Authorization header, no session cookie) is answered 401 before it is read, as the app does.
    credential_required: tuple[str, ...] = ()
    session_cookie: str = "netslate_session"


STREAM_BODY_OVER = 256 * 1024 * 1024


def _q(path: str) -> str:
    if any(c in path for c in '"\\;{}\n\r$'):
        raise ValueError(f"path not usable in an nginx config: {path!r}")
    return f'"{path}"'


def _listen(host: str, port: int) -> str:
    if host in ("::", "[::]"):
        return f"listen [::]:{port} ipv6only=off;"
    return f"listen {host_port(host, port)};"


_CHUNK_HEADERS = f"""            etag off;
            if_modified_since off;
            add_header Cache-Control "{IMMUTABLE}" always;
            add_header ETag "\\"$ns_id\\"" always;
            add_header Vary Accept-Encoding always;"""


def _conf_head(comment: str, state: str, workers: int, user: str | None = None) -> str:
    """The start both nginx configs share (the static front and a printed site cache): the comment,
    process settings, pid and error log under `state`, events, and the http block's opening through
    its temp paths. The caller adds its own http lines, servers and the two closing braces. Pure."""
    temp = "\n".join(f"    {d}_temp_path {_q(f'{state}/tmp/{d}')};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user_line = f"user {user};\n" if user else ""
    return f"""{comment.rstrip()}
{user_line}worker_processes {max(1, int(workers))};
daemon off;
master_process on;
pid {_q(state + "/nginx.pid")};
error_log {_q(state + "/error.log")} warn;
events {{
    worker_connections 4096;
}}
http {{
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 100000;
{temp}
"""


def render_front_conf(s: FrontSettings) -> str:
    """nginx.conf of the static front. Pure."""
    state = s.state_dir.rstrip("/")
    chunks = s.chunks_dir.rstrip("/")
    files = s.files_dir.rstrip("/")
    access = (f'access_log {_q(state + "/access.log")} netslate buffer=64k flush=1s;' if s.access_log else "access_log off;")
    limits = ""
    # nginx cannot tell methods apart here: the most permissive limit first (the app enforces its own)
    for pattern, max_bytes in sorted(s.body_limits, key=lambda x: -int(x[1])):
        rx = "^" + pattern.removeprefix("^").replace("\\Z", "$")
        if any(c in rx for c in '"{};\n') or not rx.endswith("$"):
            raise ValueError(f"body limit path not usable in an nginx config: {pattern!r}")
        # Bodies are read whole before the app sees them (the app may answer 401/413 early and close:
        # a proxy still sending would get a reset); past STREAM_BODY_OVER (golden disks) they stream.
        stream = "            proxy_request_buffering off;\n" if int(max_bytes) > STREAM_BODY_OVER else ""
        if pattern in s.credential_required:
            stream += ('            default_type application/json;\n            if ($ns_no_credential) {\n'
                       """                return 401 '{"detail": "authentication required"}';\n            }\n""")
        limits += (f'        location ~ "{rx}" {{\n            client_max_body_size {int(max_bytes)};\n{stream}'
                   f'            proxy_pass http://netslate_app;\n            include {_q(state + "/proxy.conf")};\n        }}\n')
    head = _conf_head("# written by netslate serve (static front); do not edit: it is rewritten at every start",
                      state, s.workers, s.user)
    return head + f"""    open_file_cache max=20000 inactive=60s;
    open_file_cache_errors on;
    log_format netslate '$msec $status $body_bytes_sent $request_method "$request_uri" $request_time $ns_served';
    {access}
    client_max_body_size {int(s.default_body_limit)};
    client_body_buffer_size 1m;
    error_page 413 = @netslate_413;
    map "$request_method|$http_authorization|$cookie_{s.session_cookie}" $ns_no_credential {{
        default 0;
        "~^(POST|PUT|PATCH|DELETE)\\|\\|$" 1;
    }}
    map $http_accept_encoding $ns_zstd {{
        default r;
        "~zstd" z;
    }}
    upstream netslate_app {{
        server 127.0.0.1:{int(s.upstream_port)};
        keepalive 64;
    }}
    server {{
        {_listen(s.listen_host, s.listen_port)}
        set $ns_served app;
        # one chunk: the stored file (zstd when accepted, else raw); anything else goes to the app
        location ~ "^/chunks/(?<ns_id>[0-9a-f]{{64}})$" {{
            if ($http_if_none_match = "\\"$ns_id\\"") {{
                return 304;
            }}
            rewrite ^ /_netslate/chunk/$ns_zstd/$ns_id last;
        }}
        location ~ "^/_netslate/chunk/z/(?<ns_id>(?<ns_p>[0-9a-f]{{2}})[0-9a-f]{{62}})$" {{
            internal;
            set $ns_served static;
            root {_q(chunks)};
            add_header Content-Encoding zstd always;
{_CHUNK_HEADERS}
            try_files /$ns_p/$ns_id.zst /_netslate/chunk/r/$ns_id;
        }}
        location ~ "^/_netslate/chunk/r/(?<ns_id>(?<ns_p>[0-9a-f]{{2}})[0-9a-f]{{62}})$" {{
            internal;
            set $ns_served static;
            root {_q(chunks)};
{_CHUNK_HEADERS}
            try_files /$ns_p/$ns_id.raw @netslate_chunk;
        }}
        location @netslate_chunk {{
            set $ns_served app;
            rewrite ^/_netslate/chunk/[rz]/(.*)$ /chunks/$1 break;
            proxy_pass http://netslate_app;
            include {_q(state + "/proxy.conf")};
        }}
        # files the app hands over with X-Accel-Redirect (materialized artifacts, chunk packs)
        location {FILES_PREFIX} {{
            internal;
            set $ns_served static;
            alias {_q(files + "/")};
            etag off;
            if_modified_since off;
            add_header ETag $upstream_http_x_netslate_etag always;
            add_header Cache-Control $upstream_http_x_netslate_cache_control always;
            add_header X-Netslate-Version $upstream_http_x_netslate_version always;
        }}
{limits}        location / {{
            proxy_pass http://netslate_app;
            include {_q(state + "/proxy.conf")};
        }}
        location @netslate_413 {{
            default_type application/json;
            return 413 '{{"detail": "request body too large for this route"}}';
        }}
    }}
}}
"""


PROXY_CONF = f"""proxy_http_version 1.1;
proxy_set_header Connection $http_connection;
proxy_set_header Upgrade $http_upgrade;
proxy_set_header Host $http_host;
proxy_set_header X-Forwarded-For $remote_addr;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_set_header {FRONT_HEADER} nginx;
proxy_buffering off;
proxy_read_timeout 3600s;
proxy_send_timeout 3600s;
"""


def render_site_cache_conf(origin: str, listen: str, cache_dir: str, max_size: str = "50g",
                           state_dir: str | None = None, workers: int = 2) -> str:
    """A complete nginx.conf for a site cache: `proxy_cache` in front of ORIGIN (http://HOST:PORT).

    Caches what the server marks cacheable (chunks, chunk packs, versioned manifests and artifacts:
    immutable; tags: no-cache, revalidated each time), keyed by URL and whether Accept-Encoding
    names zstd (all the chunk route's Vary distinguishes). Everything else passes through. Pure."""
    if not origin.startswith(("http://", "https://")):
        raise ValueError(f"origin must be http(s)://HOST:PORT, got {origin!r}")
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"listen wants HOST:PORT, got {listen!r}")
    state = (state_dir or cache_dir).rstrip("/")
    cache = cache_dir.rstrip("/")
    head = _conf_head(f"# netslate site cache: nginx proxy_cache in front of {origin}\n"
                      "# (printed by `netslate serve --print-site-cache-config`; see docs/serving.md)", state, workers)
    return head + f"""    log_format netslate_cache '$msec $status $body_bytes_sent $upstream_cache_status "$uri"';
    access_log {_q(state + "/access.log")} netslate_cache buffer=64k flush=1s;
    client_max_body_size 0;
    map $http_accept_encoding $ns_enc {{
        default "";
        "~zstd" zstd;
    }}
    proxy_cache_path {_q(cache + "/cache")} levels=2:2 keys_zone=netslate:64m max_size={max_size} inactive=30d use_temp_path=off;
    upstream netslate_origin {{
        server {origin.split("://", 1)[1].rstrip("/")};
        keepalive 32;
    }}
    server {{
        listen {listen};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        location ~ "^/(chunks/[0-9a-f]{{64}}|packs/|deltas/|images/[^/]+/[0-9]+/)" {{
            proxy_pass http://netslate_origin;
            proxy_cache netslate;
            proxy_cache_key "$uri|$ns_enc";
            proxy_cache_valid 200 30d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 120s;
            proxy_cache_lock_age 120s;
            proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;
            proxy_cache_methods GET HEAD;
            proxy_read_timeout 300s;
            add_header X-Cache $upstream_cache_status always;
        }}
        location / {{
            proxy_pass http://netslate_origin;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def read_access_log(path: Path) -> list[dict]:
    """The front's access log as records: {at, status, bytes, method, uri, seconds, served}."""
    out = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) < 7:
            continue
        try:
            out.append({"at": float(parts[0]), "status": int(parts[1]), "bytes": int(parts[2]), "method": parts[3],
                        "uri": parts[4].strip('"'), "seconds": float(parts[5]), "served": parts[6]})
        except ValueError:
            continue
    return out


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of an nginx (its own session: master + workers share the group)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervising thread's process dies (no orphan nginx)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class NginxFront:
    """Runs one nginx in the foreground for the static front; restarts it with backoff when it dies.

    With `serve --workers N` every worker builds the app: an flock on STATE/lock makes exactly one of
    them run nginx; the others' start() and stop() do nothing."""

    def __init__(self, settings: FrontSettings, binary: str | None = None):
        if settings.user is None and os.geteuid() == 0:
            # nginx workers drop to `nobody` by default; the store is the server's own (0600 files)
            settings = replace(settings, user=f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}")
        self.settings = settings
        self.binary = binary or nginx_binary() or "nginx"
        self.dir = Path(settings.state_dir)
        self.conf = self.dir / "nginx.conf"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.last_error: str | None = None
        self.owner = False
        self._lock_fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def write_files(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / "tmp" / d).mkdir(parents=True, exist_ok=True)
        Path(self.settings.files_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / "proxy.conf", PROXY_CONF.encode())
        atomic_write(self.conf, render_front_conf(self.settings).encode())

    def command(self) -> list[str]:
        return [self.binary, "-p", str(self.dir), "-c", str(self.conf), "-e", str(self.dir / "error.log")]

    def check(self) -> None:
        """`nginx -t` on the rendered config: a broken config is one clear error at start-up."""
        proc = subprocess.run([*self.command(), "-t", "-q"], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"nginx refuses its config: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")

    def start(self) -> "NginxFront":
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another worker of this server runs nginx
            os.close(fd)
            return self
        self._lock_fd, self.owner = fd, True
        self.write_files()
        self.check()
        self._stop.clear()
        # nginx takes the public port once the app listens on its private one (uvicorn binds after
        # the start-up hooks): a client never sees the front answer 502 while the app is starting.
        self._thread = threading.Thread(target=self._run, name="nginx-front", daemon=True)
        self._thread.start()
        return self

    def _upstream_ready(self, timeout: float = 300.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.settings.upstream_port), timeout=1):
                    return True
            except OSError:
                self._stop.wait(0.05)
        return False

    def wait_ready(self, timeout: float = 10.0) -> bool:
        host = self.settings.listen_host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host in ("::", "[::]") else host
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, self.settings.listen_port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def _run(self) -> None:
        backoff = 0.5
        if not self._upstream_ready():
            self.last_error = "the app never listened on its private port"
            log.error("nginx front not started: %s", self.last_error)
            return
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                with open(self.dir / "nginx.out", "ab") as out, self._mutex:
                    if self._stop.is_set():  # stop() came first: start nothing it would not see
                        break
                    self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                                 preexec_fn=_die_with_parent)
                log.info("nginx front started (pid %s) on %s", self.proc.pid,
                         host_port(self.settings.listen_host, self.settings.listen_port))
                code = self.proc.wait()
                _kill_group(self.proc.pid)  # workers of a master that died would keep the port
            except OSError as exc:
                code = -1
                self.last_error = f"cannot start nginx: {exc}"
            self.last_exit = code
            if self._stop.is_set():
                break
            self.restarts += 1
            self.last_error = f"nginx exited with {code}"
            log.error("%s; restarting in %.1f s", self.last_error, backoff)
            if time.monotonic() - t0 > 30:
                backoff = 0.5
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, 30.0)

    def stop(self, timeout: float = 10) -> None:
        if not self.owner:
            return
        self._stop.set()
        with self._mutex:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait(timeout=5)
        if proc is not None:
            _kill_group(proc.pid)
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd, self.owner = None, False

    def pids(self) -> list[int]:
        """The master and its workers (for CPU accounting in the benches)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return []
        out = [proc.pid]
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            out += [int(c) for c in children]
        except OSError:
            pass
        return out

    def health(self) -> dict:
        proc = self.proc
        running = proc is not None and proc.poll() is None
        out = {"ok": running or not self.owner, "owner": self.owner, "pid": proc.pid if running else None,
               "listen": host_port(self.settings.listen_host, self.settings.listen_port),
               "upstream": f"127.0.0.1:{self.settings.upstream_port}", "restarts": self.restarts, "last_exit": self.last_exit}
        if self.last_error:
            out["error"] = self.last_error
        return out
