"""`netslate key import` runs the same checks a machine makes on a root-signed document
(onmachine/sitecert.open_cert / open_revocations), and says a refusal in one line, exit 2."""

from __future__ import annotations

import json
import time

from netslate.onmachine import sitecert


def _refused(r, said):
    assert r.code == 2 and said in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_key_import_checks_what_a_machine_checks(cli, ctx, tmp_path):
    root = ctx.signing_key
    # expired: root-signed, the right kind, but a machine would refuse it
    old, _ = root.issue_site_cert("b", 7, 1, now=time.time() - 3 * 86400)
    (tmp_path / "old.json").write_text(json.dumps(old))
    _refused(cli("key", "import", str(tmp_path / "old.json")), "key import refused: site certificate 7 for site b expired at")
    # a site certificate with a bad site name inside a good signature
    bad = root._envelope(dict(old["payload"], site="bad/name", not_after=sitecert.format_time(time.time() + 86400)))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    _refused(cli("key", "import", str(tmp_path / "bad.json")), "site certificate: bad site name")
    # neither kind
    other = root._envelope({"kind": "something-else/1", "number": 1, "revoked": []})
    (tmp_path / "other.json").write_text(json.dumps(other))
    _refused(cli("key", "import", str(tmp_path / "other.json")), "revocation list: wrong kind 'something-else/1'")
    # a good one still imports
    good, _ = root.issue_site_cert("b", 8, 30, public_key=bytes(32))
    (tmp_path / "good.json").write_text(json.dumps(good))
    r = cli("key", "import", str(tmp_path / "good.json"), "--json")
    assert r.code == 0 and json.loads(r.stdout)["serial"] == 8, r.stderr
