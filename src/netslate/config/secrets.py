"""Config secrets at rest and their levels (issue 13 §5).

A node document's `secrets` map holds names → values. In the database (working copy, generation
snapshots) every value is stored sealed: `nssealed:` + an AES-256-GCM envelope from
`crypto.atrest` (key id inside, the KEK outside the database), with `config-secret/NAME` as the
associated data. Users never see or send that form: writes seal what they are given (a value equal
to the one already stored, or `<redacted>` where a value is stored, keeps its envelope, so
re-applying a document as `config show` printed it changes nothing), the API
and CLI show `<redacted>`, and only two readers open values: a bundle built for a machine whose
credential is at or above each secret's level, and `config edit` run locally.

`secret_levels` (a map name → token | host | tpm) names the minimum trust level a secret needs;
a secret not listed needs `token` (a machine with no credential never gets one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from netslate.config.documents import REDACTED
from netslate.config.models import ConfigGeneration, ConfigWorkingNode
from netslate.crypto import atrest
from netslate.errors import UserError

SEALED_PREFIX = "nssealed:"
PURPOSE = "config-secret/"
DEFAULT_LEVEL = "token"
LEVELS = ("token", "host", "tpm")  # a secret's minimum; `none` would mean "to anyone claiming a MAC"


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


def check_input(doc: Any, key: str | None = None, value: Any = None) -> None:
    """Refuse a value a user sends that looks like the stored form (it would not open)."""
    if key is not None:
        if key.split(".", 1)[0].split("[", 1)[0] == "secrets" and (is_sealed(value) or (
                isinstance(value, dict) and any(is_sealed(v) for v in value.values()))):
            raise UserError(f"a secret value may not start with {SEALED_PREFIX!r}")
        return
    secrets = doc.get("secrets") if isinstance(doc, dict) else None
    if isinstance(secrets, dict) and any(is_sealed(v) for v in secrets.values()):
        raise UserError(f"a secret value may not start with {SEALED_PREFIX!r}")


def seal_document(data_dir: Path, doc: dict, previous: dict | None = None) -> dict:
    """`doc` with every clear secret value sealed (a value equal to `previous`'s keeps its envelope)."""
    secrets = doc.get("secrets")
    if not isinstance(secrets, dict) or not any(isinstance(v, str) and not is_sealed(v) for v in secrets.values()):
        return doc
    before = (previous or {}).get("secrets") if isinstance(previous, dict) else None
    before = before if isinstance(before, dict) else {}
    out = {}
    for name, v in secrets.items():
        if isinstance(v, str) and not is_sealed(v):
            old = before.get(name)
            if is_sealed(old) and (v == REDACTED or open_value(data_dir, name, old) == v):
                v = old  # unchanged, or sent back as shown (`config show` → edit → `apply`)
            else:
                v = SEALED_PREFIX + atrest.seal(data_dir, v, PURPOSE + name)
        out[name] = v
    return {**doc, "secrets": out}


def open_value(data_dir: Path, name: str, value: Any) -> Any:
    """A stored secret value in clear (values stored before sealing existed pass through)."""
    if not is_sealed(value):
        return value
    return atrest.unseal(data_dir, value[len(SEALED_PREFIX):], PURPOSE + name)


def open_secrets(data_dir: Path, secrets: dict) -> dict:
    return {name: open_value(data_dir, name, v) for name, v in secrets.items()}


def open_document(data_dir: Path, doc: dict) -> dict:
    """`doc` with its secrets in clear (for `config edit` run locally)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("secrets"), dict):
        return doc
    return {**doc, "secrets": open_secrets(data_dir, doc["secrets"])}


def level_of(doc: dict, name: str) -> str:
    levels = doc.get("secret_levels")
    lv = levels.get(name) if isinstance(levels, dict) else None
    return lv if lv in LEVELS else DEFAULT_LEVEL


def _rewrap_doc(data_dir: Path, doc: Any, one) -> tuple[Any, int, set]:
    if not isinstance(doc, dict) or not isinstance(doc.get("secrets"), dict):
        return doc, 0, set()
    n, kids, out = 0, set(), {}
    for name, v in doc["secrets"].items():
        if isinstance(v, str) and not is_sealed(v):  # stored in clear by a version before sealing
            v = SEALED_PREFIX + atrest.seal(data_dir, v, PURPOSE + name)
            n += 1
            kids.add(atrest.kid_of(v[len(SEALED_PREFIX):]))
        elif is_sealed(v):
            new = SEALED_PREFIX + one(v[len(SEALED_PREFIX):], PURPOSE + name)
            n += new != v
            kids.add(atrest.kid_of(new[len(SEALED_PREFIX):]))
            v = new
        out[name] = v
    return ({**doc, "secrets": out} if n else doc), n, kids


def rewrap_secrets(ctx, rewrap_one) -> dict:
    """Seal every config secret again with `rewrap_one(value, purpose)` (a KEK rotation): the working
    copy and every generation snapshot, in one transaction. Values stored in clear by a version
    before sealing are sealed now. A generation's digest stays the one it
    was published with (it names the generation, it is not re-checked against the snapshot)."""
    n, in_use = 0, set()
    with ctx.db.session(write=True) as s:
        for row in s.scalars(select(ConfigWorkingNode)):
            doc, k, kids = _rewrap_doc(ctx.data_dir, row.document, rewrap_one)
            if k:
                row.document = doc
            n += k
            in_use |= kids
        for row in s.scalars(select(ConfigGeneration)):
            snap, changed = {}, 0
            for key, doc in (row.snapshot or {}).items():
                doc, k, kids = _rewrap_doc(ctx.data_dir, doc, rewrap_one)
                snap[key] = doc
                changed += k
                in_use |= kids
            if changed:
                row.snapshot = snap
            n += changed
    return {"rewrapped": n, "in_use": in_use}
