"""LDAP login latency on loopback (issue 12 goal: < 200 ms), with ldap3 against a real slapd.

Measures, for N logins each: the identity part's directory login (service bind, search, user bind
on a second TLS connection, nested-group walk) over LDAPS and over StartTLS, and the whole
`POST /api/v1/auth/login` through a real server (session row and audit entry included).
python-ldap was not measured: it builds from source against libldap2-dev/libsasl2-dev, which
this machine does not have; ldap3 (pure Python, maintained, already a dependency) is the choice.

Run: uv run --frozen python bench/identity_login.py [N]
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from _common import record  # noqa: E402


def stats(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"n": len(s), "p50_ms": round(statistics.median(s), 1), "p95_ms": round(s[int(0.95 * (len(s) - 1))], 1),
            "max_ms": round(s[-1], 1)}


def main(n: int = 50) -> dict:
    import httpx
    import ldapworld
    from nstest import start_server

    from netslate.context import Context
    from netslate.identity import directories, entitlements

    work = Path(tempfile.mkdtemp(prefix="netslate-bench-ldap-"))
    world, proc = ldapworld.start_ldap_world(work / "slapd")
    try:
        out: dict = {"client": "ldap3", "slapd": "OpenLDAP 2.5 (Debian), loopback", "logins": n}
        for label, uri, tls in (("ldaps", world.uri, "ldaps"), ("starttls", world.starttls_uri, "starttls")):
            cfg = directories.DirectorySettings("corp", "ldap", uri, tls, world.ca_pem, world.base_dn, world.bind_dn,
                                                world.bind_password, directories.DEFAULT_FILTERS["ldap"], "member")
            samples = []
            for i in range(n):
                user = "bob" if i % 2 else "ada"
                t = time.perf_counter()
                assert directories.authenticate(cfg, user, world.passwords[user]) is not None
                samples.append((time.perf_counter() - t) * 1000)
            out[f"directory_login_{label}"] = stats(samples)
        ctx = Context(work / "data").init()
        directories.add_directory(ctx, "corp", "ldap", world.uri, world.base_dn, world.bind_dn, world.bind_password,
                                  world.ca_pem, actor="local:bench")
        entitlements.add_entitlement(ctx, "group", "netslate-admins", "role", "admin", actor="local:bench")
        srv = start_server(ctx)
        try:
            samples = []
            with httpx.Client(base_url=srv.url, timeout=30) as client:
                for _ in range(n):
                    t = time.perf_counter()
                    r = client.post("/api/v1/auth/login", json={"username": "ada", "password": world.passwords["ada"]})
                    samples.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, r.text
            out["api_login_ldaps"] = stats(samples)
        finally:
            srv.stop()
        return record("identity_login", out)
    finally:
        ldapworld.stop(proc)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)  # record() prints the result
