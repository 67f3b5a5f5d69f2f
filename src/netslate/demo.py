"""`make demo`: the image library end to end, with a clear step list.

With a terminal it leaves the server running until Ctrl-C. Without one (stdin not a TTY, or
CI=true) it runs every step, checks what each claims, stops what it started and exits non-zero
naming the first failed step.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rich.console import Console

console = Console()
ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "examples" / "recipes"


class StepFailed(Exception):
    pass


def interactive() -> bool:
    return sys.stdin.isatty() and os.environ.get("CI", "").lower() != "true"


class Demo:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.data = workdir / "data"
        self.env = dict(os.environ, NETSLATE_DATA_DIR=str(self.data))
        self.server: subprocess.Popen | None = None
        self.url = ""
        self.fleet = None  # netslate.demo_fleet.Fleet: namespace, server with dnsmasq, VMs
        self.web_user = self.web_password = ""  # the demo's local admin for the web console

    def netslate(self, *args: str, json_out: bool = True, timeout: float = 900) -> dict | str:
        cmd = [sys.executable, "-m", "netslate", *args] + (["--json"] if json_out else [])
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise StepFailed(f"`netslate {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        return json.loads(proc.stdout) if json_out else proc.stdout

    def start_server(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        log = open(self.workdir / "server.log", "w")
        self.server = subprocess.Popen([sys.executable, "-m", "netslate", "serve", "--listen", f"127.0.0.1:{port}"],
                                       env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if json.loads(r.read())["ok"]:
                        return
            except OSError:
                time.sleep(0.3)
        raise StepFailed(f"server did not become healthy; see {self.workdir / 'server.log'}")

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.close()
            self.fleet = None
        if self.server and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fleet_enabled() -> bool:
    """The fleet part (VMs) runs unless NETSLATE_DEMO_FLEET=0."""
    return os.environ.get("NETSLATE_DEMO_FLEET", "1") != "0"


def _as_step(fn):
    """Fleet steps raise RuntimeError/TimeoutError; the demo reports them as a failed step."""
    def wrapped():
        try:
            fn()
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
            raise StepFailed(str(exc)[-1500:]) from None
    return wrapped


def run(demo: Demo) -> None:
    steps = []

    def step(title):
        def wrap(fn):
            steps.append((title, fn))
            return fn
        return wrap

    state: dict = {}

    @step("start netslate on loopback (SQLite + local chunk store)")
    def _():
        demo.start_server()
        key = demo.netslate("key", "show")
        console.print(f"   server {demo.url}, signing key {key['fingerprint'][:23]}…", soft_wrap=True)
        console.print(f"   data in {demo.data}", soft_wrap=True)

    @step("build image `demo` v1 with mmdebstrap (examples/recipes/demo-v1.yaml)")
    def _():
        v1 = demo.netslate("image", "build", "demo", "--recipe", str(RECIPES / "demo-v1.yaml"), "--tag", "stable")
        if v1["version"] != 1:
            raise StepFailed(f"expected version 1, got {v1['version']}")
        state["v1"] = v1
        console.print(f"   demo@1: {human(v1['bytes_total'])}, stored {human(v1['bytes_new'])} of new chunk data")

    @step("build v2 with one package more (less) and publish it as `testing`")
    def _():
        v2 = demo.netslate("image", "build", "demo", "--recipe", str(RECIPES / "demo-v2.yaml"), "--tag", "testing")
        state["v2"] = v2
        diff = demo.netslate("image", "diff", "demo", "1", "2")
        state["diff"] = diff
        console.print(f"   demo@2 shares {diff['chunks_shared']} chunks with v1; new: {human(diff['bytes_new'])} "
                      f"({diff['new_fraction']:.1%} of {human(diff['bytes_total'])})")

    @step("a client pulls v1 (`stable`) into an empty cache")
    def _():
        cache, out = demo.workdir / "client-cache", demo.workdir / "client-rootfs.img"
        s1 = demo.netslate("image", "pull", demo.url, "demo@stable", "--cache", str(cache), "--output", str(out))
        if s1["version"] != 1 or s1["bytes_reused"] != 0:
            raise StepFailed(f"unexpected first pull: {s1}")
        state["s1"] = s1
        console.print(f"   downloaded {human(s1['bytes_downloaded'])} in {s1['chunks_downloaded']} chunks ({s1['seconds']:.1f}s)")

    @step("promote v2 to `stable`; the client pulls again and fetches only the changed chunks")
    def _():
        demo.netslate("image", "tag", "demo", "2", "stable", "-m", "demo promotion")
        cache, out = demo.workdir / "client-cache", demo.workdir / "client-rootfs.img"
        s2 = demo.netslate("image", "pull", demo.url, "demo@stable", "--cache", str(cache), "--output", str(out))
        if s2["version"] != 2:
            raise StepFailed(f"pulled version {s2['version']}, expected 2")
        if s2["bytes_downloaded"] >= s2["bytes_total"] * 0.5:
            raise StepFailed(f"delta pull downloaded {s2['bytes_downloaded']} of {s2['bytes_total']} bytes")
        saved = s2["bytes_total"] - s2["bytes_downloaded"]
        console.print(f"   downloaded {human(s2['bytes_downloaded'])}, reused {human(s2['bytes_reused'])}: "
                      f"[bold green]saved {human(saved)} ({saved / s2['bytes_total']:.0%})[/bold green] against a full download")

    @step("roll back: move `stable` back to v1 (recorded with who, when and why)")
    def _():
        demo.netslate("image", "tag", "demo", "1", "stable", "-m", "demo rollback")
        show = demo.netslate("image", "show", "demo@stable")
        if show["version"] != 1:
            raise StepFailed("stable does not point at v1 after the rollback")
        for e in show["tag_history"]:
            console.print(f"   {e['at']} {e['tag']}: {e['from']} → {e['to']} by {e['by']} ({e['reason']})")

    @step("verify every stored chunk")
    def _():
        report = demo.netslate("image", "verify")
        if not report["ok"]:
            raise StepFailed(f"corrupt or missing chunks: {report}")
        console.print(f"   {report['chunks_checked']} chunks of {report['versions_checked']} versions verified")

    @step("web console: a local admin logs in; the dashboard and the portal load")
    def _():
        import secrets

        demo.web_user, demo.web_password = "demo-admin", secrets.token_urlsafe(12)
        proc = subprocess.run([sys.executable, "-m", "netslate", "user", "add", demo.web_user, "--role", "admin", "--password-stdin"],
                              env=demo.env, input=demo.web_password + "\n", capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise StepFailed(f"`netslate user add` exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        for page, wanted in check_web_pages(demo.url, demo.web_user, demo.web_password).items():
            console.print(f"   {page}: {wanted}")

    if fleet_enabled():
        from netslate.context import Context
        from netslate.demo_fleet import Fleet, fleet_steps

        fleet_data = demo.workdir / "fleet" / "data"
        Context(fleet_data).init()
        demo.fleet = Fleet(demo.workdir / "fleet", fleet_data)

        def say(text: str) -> None:
            console.print(f"   {text}", soft_wrap=True, highlight=False, markup=False)

        for title, fn in fleet_steps(demo.fleet, say):
            steps.append((title, _as_step(fn)))

    for i, (title, fn) in enumerate(steps, 1):
        console.print(f"[bold cyan]step {i}/{len(steps)}[/bold cyan] {title}")
        started = time.monotonic()
        try:
            fn()
        except StepFailed as exc:
            raise StepFailed(f"step {i} ({title}) failed: {exc}") from None
        console.print(f"   [green]ok[/green] ({time.monotonic() - started:.1f}s)")


def check_web_pages(url: str, user: str, password: str) -> dict[str, str]:
    """Log in through the real /login form and load the dashboard and the portal (StepFailed otherwise)."""
    import http.cookiejar
    import urllib.parse

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = urllib.parse.urlencode({"username": user, "password": password, "next": "/"}).encode()
    with opener.open(url + "/login", data=form, timeout=30) as r:
        if urllib.parse.urlsplit(r.geturl()).path != "/":
            raise StepFailed(f"the login did not lead to the dashboard but to {r.geturl()}")
    out = {}
    for path, marker in (("/", "Fleet"), ("/portal", "netslate")):
        try:
            with opener.open(url + path, timeout=30) as r:
                body = r.read().decode()
        except OSError as exc:
            raise StepFailed(f"{path} did not load: {exc}") from None
        if marker not in body:
            raise StepFailed(f"{path} loaded without {marker!r}")
        out[url + path] = "loads"
    return out


def main() -> int:
    if os.geteuid() != 0:
        console.print("[red]error:[/red] the demo builds images with mmdebstrap and needs root")
        return 2
    workdir = Path(os.environ.get("NETSLATE_DEMO_DIR") or tempfile.mkdtemp(prefix="netslate-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(workdir)
    # SIGTERM (a CI time-out, kill) stops everything too, like Ctrl-C
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        run(demo)
        if interactive():
            console.print(f"\n[bold]netslate is running at {demo.url}[/bold]; admin token in {demo.data / 'admin.token'}. Ctrl-C stops it.")
            console.print(f"[bold]web console[/bold]: dashboard {demo.url}/  ·  portal {demo.url}/portal  ·  "
                          f"log in as {demo.web_user} / {demo.web_password}", soft_wrap=True, highlight=False)
            if demo.fleet is not None and demo.fleet.server is not None:
                console.print(f"[bold]the fleet server is {demo.fleet.server.url}[/bold] in namespace {demo.fleet.lab.name} "
                              f"(ip netns exec {demo.fleet.lab.name} …); admin token in {demo.fleet.data / 'admin.token'}")
            try:
                while demo.server.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        console.print("[bold green]demo finished: every step did what it claims[/bold green]")
        return 0
    except StepFailed as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]demo interrupted; stopping everything it started[/yellow]")
        return 130
    finally:
        demo.stop()
        if not os.environ.get("NETSLATE_DEMO_DIR"):
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
