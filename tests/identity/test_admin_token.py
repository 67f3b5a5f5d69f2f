"""Each server's bootstrap admin token (DATA/admin.token): servers sharing one database (a second
central server, a branch) each get their own, and starting one never revokes another's."""

import os
import subprocess
import sys
import time

import httpx

from netslate.context import Context
from nstest import free_port, start_server


def _me(url: str, token: str) -> httpx.Response:
    return httpx.get(f"{url}/api/v1/tokens", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _names(ctx: Context) -> set[str]:
    from netslate.identity.tokens import list_tokens

    return {t["name"] for t in list_tokens(ctx)}


def test_two_servers_over_one_database_keep_both_admin_tokens(tmp_path):
    from netslate.identity.tokens import bootstrap_admin_token

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first_ctx = Context(tmp_path / "first", url).init()
    first = start_server(first_ctx)
    procs = []
    try:
        assert _me(first.url, first.admin_token).status_code == 200
        assert _names(first_ctx) == {"admin"}  # a single server keeps the classic name

        # a second server over the same database, its own data directory: the real `netslate serve`
        port = free_port()
        log = tmp_path / "second.log"
        env = dict(os.environ, NETSLATE_DATABASE_URL=url)
        env.pop("NETSLATE_SERVER", None)
        env.pop("NETSLATE_TOKEN", None)
        with open(log, "wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "netslate", "serve", "--listen", f"127.0.0.1:{port}",
                                           "--data-dir", str(tmp_path / "second"), "--server-name", "central2",
                                           "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT, env=env))
        second_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(second_url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert procs[0].poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        text = log.read_text()
        assert "created admin token 'admin.central2'" in text, text
        assert "left token(s) admin as they are" in text, text
        second_token = (tmp_path / "second" / "admin.token").read_text().strip()
        assert oct((tmp_path / "second" / "admin.token").stat().st_mode & 0o777) == "0o600"
        assert second_token != first.admin_token
        # both tokens work, on both servers (one database)
        for server_url in (first.url, second_url):
            for token in (first.admin_token, second_token):
                assert _me(server_url, token).status_code == 200, (server_url, token[:8])
        assert _names(first_ctx) == {"admin", "admin.central2"}

        # a third data directory in the test process (no --server-name: the short hostname), then
        # the second server's file deleted: a new token, the old ones untouched
        third = bootstrap_admin_token(Context(tmp_path / "third", url).init())
        assert third["created"] and third["name"].startswith("admin.") and third["name"] != "admin.central2"
        again = bootstrap_admin_token(Context(tmp_path / "third", url))
        assert again == {"path": third["path"], "created": False, "name": None, "taken": []}
        (tmp_path / "second" / "admin.token").unlink()
        renewed = bootstrap_admin_token(Context(tmp_path / "second", url), server_name="central2")
        assert renewed["created"] and renewed["name"] == "admin.central2-2"
        assert renewed["taken"] == ["admin", "admin.central2"]
        assert _names(first_ctx) == {"admin", "admin.central2", third["name"], "admin.central2-2"}
        for token in (first.admin_token, second_token, (tmp_path / "second" / "admin.token").read_text().strip()):
            assert _me(first.url, token).status_code == 200
        # revoking one is the admin's explicit act, and takes only that one
        r = httpx.delete(f"{first.url}/api/v1/tokens/admin.central2", headers={"Authorization": f"Bearer {first.admin_token}"},
                         timeout=30)
        assert r.status_code in (200, 204), r.text
        assert _me(first.url, second_token).status_code == 401
        assert _me(first.url, first.admin_token).status_code == 200
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        first.stop()
