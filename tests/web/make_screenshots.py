"""Screenshots of the dashboard's main pages for docs/img/ (run: uv run --frozen python tests/web/make_screenshots.py).

A fresh data directory with 240 machines (reports, labels, a tree, a pending config change), a local
admin, a real server on loopback and the shared headless Chromium of tests/webworld.py.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netslate.composition import Parts  # noqa: E402
from netslate.context import Context  # noqa: E402
from netslate.fleet import reports  # noqa: E402
from netslate.inventory import discover_machine  # noqa: E402
from netslate.services import Services  # noqa: E402
from netslate.services.framework import Caller  # noqa: E402
from netslate.services.machines import MachineCreate  # noqa: E402
from netslate.services.users import UserCreate  # noqa: E402
from nstest import start_server  # noqa: E402
from webworld import login, make_browser, screenshot, wait_for  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "docs" / "img"
PAGES = {
    "web-dashboard.png": ("/", "#fleet"),
    "web-machines.png": ("/machines?site=site-a&sort=-last_seen&limit=25", "#machines"),
    "web-machine.png": ("/machines/pc-a-0007", "#config-values"),
    "web-config.png": ("/config", "#history"),
    "web-audit.png": ("/audit?action=machine.", "#audit"),
}


def world(data: Path) -> Context:
    ctx = Context(data).init()
    sv = Services.local(Parts(ctx), Caller("local", "docs", "admin"))
    sv.users.add(UserCreate(name="admin", password="docs-screenshots", role="admin"))
    for i in range(240):
        site = "site-a" if i % 3 else "site-b"
        sv.machines.add(MachineCreate(macs=[f"52:54:00:10:{i // 256:02x}:{i % 256:02x}"], name=f"pc-{site[-1]}-{i:04d}",
                                      labels={"room": f"b{10 + i % 4}"}, group=f"/{site}/cluster-1/pool-{i % 2}"))
    for i in range(5):
        discover_machine(ctx, {"mac": f"52:54:00:20:00:{i:02x}", "product": "Standard PC (Q35)"}, "10.0.0.50")
    sv.config.set_value("/site-a", "timezone", "Europe/Paris")
    sv.config.set_value("/site-a/cluster-1", "sysctl", {"vm.swappiness": 10})
    sv.config.publish("site-a: timezone and swappiness")
    for i in range(0, 240, 2):
        ident = f"pc-{'a' if i % 3 else 'b'}-{i:04d}"
        reports.ingest(ctx, ident, {"phase": "configured", "image": "desktop", "version": 4 if i % 10 else 3,
                                    "image_source": "cache" if i % 37 == 0 else "server",
                                    "config_source": "cache" if i % 41 == 0 else "server", "generation": 1,
                                    "modules": {"users": "ok", "files": "ok"}, "health": {"ok": True, "checks": []}}, None, "10.0.0.7")
    sv.config.set_value("/site-b", "timezone", "Europe/Berlin")  # pending: shows in the working-copy diff
    return ctx


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="netslate-shots-"))
    server = start_server(world(work / "data"))
    browser = make_browser(work / "profile")
    try:
        login(browser, server.url, "admin", "docs-screenshots")
        for name, (path, ready) in PAGES.items():
            browser.get(server.url + path)
            wait_for(browser, ready)
            print(screenshot(browser, OUT / name, 1280, 900))
    finally:
        browser.quit()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
