"""A server whose DATA/keys/ lacks the key a machine's secrets are sealed under (a second server over
the same database without a copy of the keys, a lost file) answers the bundle route with one clear
line (503: this server cannot, another may), not a 500, and never makes a new key in its place."""

from __future__ import annotations

import httpx
import pytest

from netslate import inventory
from netslate.config import credentials, generations, workingcopy
from netslate.crypto import atrest


@pytest.mark.parametrize("rotated", [False, True])
def test_bundle_with_the_secrets_key_missing(ctx, live_server, rotated):
    m = inventory.add_machine(ctx, ["52:54:00:aa:bb:01"], name="pc1")
    if rotated:  # values sealed under a rotated key (secrets-KID.key), not the first one
        atrest.set_current(ctx.data_dir, atrest.new_key(ctx.data_dir))
    workingcopy.put_node(ctx, "/", {"secrets": {"wifi": "hunter2-x7"}}, "local:test")
    generations.publish(ctx, "a secret", "local:test")
    cred = credentials.enroll(ctx, "pc1", "local:test")["credential"]
    url = f"{live_server.url}/api/v1/machines/{m['id']}/bundle"
    ok = httpx.get(url, headers={"Authorization": f"Bearer {cred}"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["payload"]["sealed_secrets"] is not None
    kid = atrest.current_kid(ctx.data_dir)
    path = atrest.key_path(ctx.data_dir, kid)
    saved = path.read_bytes()
    path.unlink()
    try:
        r = httpx.get(url, headers={"Authorization": f"Bearer {cred}"}, timeout=30)
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert "cannot open" in detail and str(path) in detail and "DATA/keys" in detail and "\n" not in detail
        assert not path.exists()  # no new key made in the lost one's place
        # a bundle without a credential holds no secret: it still answers
        assert httpx.get(url, timeout=30).status_code == 200
    finally:
        path.write_bytes(saved)
    assert httpx.get(url, headers={"Authorization": f"Bearer {cred}"}, timeout=30).status_code == 200
