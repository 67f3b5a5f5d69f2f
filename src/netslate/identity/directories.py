"""LDAP and Active Directory: settings, and login by search-then-bind over LDAPS or StartTLS.

- The service account (bind DN + password) searches `base_dn` with `user_filter`, where
  `{username}` is replaced by the typed name escaped for LDAP filters (RFC 4515), so a name
  like `*)(uid=*` matches only itself. Exactly one entry must come back.
- Then a second connection binds as that entry's DN with the typed password (an empty password is
  refused before, since LDAP treats it as an anonymous bind that "succeeds").
- TLS is required: `ldaps://` or StartTLS over `ldap://`, the server certificate verified against
  the directory's CA (PEM kept with its settings) and its host name checked.
- Groups: Active Directory answers nested groups itself (LDAP_MATCHING_RULE_IN_CHAIN,
  1.2.840.113556.1.4.1941). For OpenLDAP the groups naming the user in `group_attribute`
  (`member`, `uniqueMember` or `memberUid`), plus the user's `memberOf` values, are followed up
  through groups naming groups, at most `MAX_NESTING` levels.
- Disabled or expired accounts are refused before the bind with a clear message: AD
  `userAccountControl` bit 2 (ACCOUNTDISABLE) and `accountExpires`; OpenLDAP
  `pwdAccountLockedTime` (ppolicy), `shadowExpire` (days since 1970, nis schema) and
  `nsAccountLock: TRUE`.
"""

from __future__ import annotations

import datetime as dt
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy import func, select

from netslate import audit
from netslate.errors import Conflict, NotFound, UserError
from netslate.crypto import atrest
from netslate.identity.models import Directory
from netslate.names import check_name

KINDS = ("ldap", "ad")
TLS_MODES = ("ldaps", "starttls")
DEFAULT_FILTERS = {"ldap": "(&(objectClass=person)(uid={username}))", "ad": "(&(objectClass=user)(sAMAccountName={username}))"}
DEFAULT_GROUP_ATTRIBUTE = {"ldap": "member", "ad": "member"}
GROUP_ATTRIBUTES = ("member", "uniqueMember", "memberUid")
MAX_NESTING = 8
CONNECT_TIMEOUT = 5
RECEIVE_TIMEOUT = 10
USER_ATTRIBUTES = ["cn", "uid", "sAMAccountName", "memberOf", "userAccountControl", "accountExpires",
                   "shadowExpire", "pwdAccountLockedTime", "nsAccountLock"]
AD_NEVER = (0, 0x7FFFFFFFFFFFFFFF)
SECRET_PURPOSE = "directory-bind-password:"


class DirectoryUnavailable(UserError):
    pass


class AccountRefused(UserError):
    """The account exists but may not log in (disabled, locked, expired): said plainly."""


@dataclass
class DirectorySettings:
    name: str
    kind: str
    uri: str
    tls: str
    ca_pem: str
    base_dn: str
    bind_dn: str
    bind_password: str = field(repr=False)
    user_filter: str
    group_attribute: str


@dataclass
class DirectoryUser:
    dn: str
    name: str
    groups: list[dict]  # {name, dn, nested}
    attributes: dict


# ---------------------------------------------------------------- settings


def _check_settings(kind: str, uri: str, tls: str | None, ca_pem: str, base_dn: str, bind_dn: str, user_filter: str,
                    group_attribute: str) -> str:
    if kind not in KINDS:
        raise UserError(f"unknown directory kind {kind!r}: choose ldap or ad")
    parts = urlsplit(uri or "")
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise UserError(f"invalid directory URI {uri!r}: use ldaps://HOST[:PORT] or ldap://HOST[:PORT] with --tls starttls")
    tls = tls or ("ldaps" if parts.scheme == "ldaps" else "starttls")
    if tls not in TLS_MODES:
        raise UserError(f"unknown TLS mode {tls!r}: choose ldaps or starttls (plain LDAP is not offered)")
    if (tls == "ldaps") != (parts.scheme == "ldaps"):
        raise UserError(f"--tls {tls} does not fit {uri}: ldaps needs ldaps://, starttls needs ldap://")
    if "-----BEGIN CERTIFICATE-----" not in (ca_pem or ""):
        raise UserError("the directory's CA certificate (PEM) is required: the server certificate is always verified")
    try:
        ssl.create_default_context(cadata=ca_pem)
    except ssl.SSLError as exc:
        raise UserError(f"the CA certificate does not load: {exc}") from None
    for what, value in (("base DN", base_dn), ("bind DN", bind_dn)):
        if not value or len(value) > 1024 or any(ord(c) < 32 for c in value) or "=" not in value:
            raise UserError(f"invalid {what} {value!r}")
    if user_filter.count("{username}") < 1 or not (user_filter.startswith("(") and user_filter.endswith(")")):
        raise UserError(f"invalid user filter {user_filter!r}: a parenthesised LDAP filter holding {{username}}")
    if group_attribute not in GROUP_ATTRIBUTES:
        raise UserError(f"unknown group attribute {group_attribute!r}: choose one of {', '.join(GROUP_ATTRIBUTES)}")
    return tls


def add_directory(ctx, name: str, kind: str, uri: str, base_dn: str, bind_dn: str, bind_password: str, ca_pem: str,
                  tls: str | None = None, user_filter: str | None = None, group_attribute: str | None = None, *, actor: str) -> dict:
    check_name(name, "directory name")
    user_filter = user_filter or DEFAULT_FILTERS.get(kind, "")
    group_attribute = group_attribute or DEFAULT_GROUP_ATTRIBUTE.get(kind, "member")
    tls = _check_settings(kind, uri, tls, ca_pem, base_dn, bind_dn, user_filter, group_attribute)
    if not bind_password:
        raise UserError("the bind password is required")
    sealed = atrest.seal(ctx.data_dir, bind_password, SECRET_PURPOSE + name)
    with ctx.db.session(write=True) as s:
        if s.scalar(select(Directory).where(Directory.name == name)):
            raise Conflict(f"a directory named {name!r} already exists")
        position = (s.scalar(select(func.max(Directory.position))) or 0) + 1
        row = Directory(name=name, kind=kind, uri=uri, tls=tls, ca_pem=ca_pem, base_dn=base_dn, bind_dn=bind_dn,
                        bind_secret=sealed, user_filter=user_filter, group_attribute=group_attribute, position=position)
        s.add(row)
        s.flush()
        audit.record(s, actor, "directory.add", f"directory:{name}", kind=kind, uri=uri, tls=tls, base_dn=base_dn, bind_dn=bind_dn)
        return _public(row)


def list_directories(ctx) -> list[dict]:
    with ctx.db.session() as s:
        return [_public(r) for r in s.scalars(select(Directory).order_by(Directory.position, Directory.name))]


def show_directory(ctx, name: str) -> dict:
    with ctx.db.session() as s:
        row = _get_directory(s, name)
        return _public(row)


def remove_directory(ctx, name: str, actor: str) -> None:
    with ctx.db.session(write=True) as s:
        row = _get_directory(s, name)
        s.delete(row)
        audit.record(s, actor, "directory.remove", f"directory:{name}")


def _get_directory(s, name: str) -> Directory:
    row = s.scalar(select(Directory).where(Directory.name == name))
    if row is None:
        raise NotFound(f"no directory named {name!r}")
    return row


def _public(row: Directory) -> dict:
    """Everything but the bind password, which is never returned."""
    return {"name": row.name, "kind": row.kind, "uri": row.uri, "tls": row.tls, "base_dn": row.base_dn, "bind_dn": row.bind_dn,
            "user_filter": row.user_filter, "group_attribute": row.group_attribute, "position": row.position,
            "ca_subject": _ca_subject(row.ca_pem), "bind_password_set": bool(row.bind_secret)}


def _ca_subject(pem: str) -> str:
    try:
        from cryptography import x509

        return x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string()
    except Exception:
        return "?"


def settings(ctx, name: str | None = None) -> list[DirectorySettings]:
    """The directories in login order (one when `name` is given), with their bind passwords opened."""
    with ctx.db.session() as s:
        q = select(Directory).order_by(Directory.position, Directory.name)
        if name is not None:
            q = q.where(Directory.name == name)
        rows = list(s.scalars(q))
    if name is not None and not rows:
        raise NotFound(f"no directory named {name!r}")
    return [DirectorySettings(r.name, r.kind, r.uri, r.tls, r.ca_pem, r.base_dn, r.bind_dn,
                              atrest.unseal(ctx.data_dir, r.bind_secret, SECRET_PURPOSE + r.name),
                              r.user_filter, r.group_attribute) for r in rows]


def rewrap_secrets(ctx, rewrap_one) -> dict:
    """Seal every bind password again with `rewrap_one(value, purpose)` (a KEK rotation), in one transaction."""
    n, in_use = 0, set()
    with ctx.db.session(write=True) as s:
        for r in s.scalars(select(Directory)):
            new = rewrap_one(r.bind_secret, SECRET_PURPOSE + r.name)
            if new != r.bind_secret:
                r.bind_secret = new
                n += 1
            in_use.add(atrest.kid_of(new))
    return {"rewrapped": n, "in_use": in_use}


# ---------------------------------------------------------------- the LDAP client (ldap3)


def _connect(cfg: DirectorySettings, user: str, password: str):
    """An open, TLS-protected connection bound as `user`; (connection, None) or (None, LDAP result)."""
    from ldap3 import NONE, Connection, Server, Tls

    tls = Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT, ca_certs_data=cfg.ca_pem)
    server = Server(cfg.uri, use_ssl=cfg.tls == "ldaps", tls=tls, get_info=NONE, connect_timeout=CONNECT_TIMEOUT)
    conn = Connection(server, user=user, password=password, read_only=True, receive_timeout=RECEIVE_TIMEOUT,
                      raise_exceptions=False, auto_referrals=False)
    try:
        conn.open()
        if cfg.tls == "starttls" and not conn.start_tls():
            raise DirectoryUnavailable(f"directory {cfg.name}: StartTLS refused ({conn.result.get('description')})")
        if not conn.bind():
            result = dict(conn.result or {})
            conn.unbind()
            return None, result
    except DirectoryUnavailable:
        raise
    except Exception as exc:  # ldap3 raises many socket/TLS classes; each is "unreachable or untrusted"
        try:
            conn.unbind()
        except Exception:
            pass
        raise DirectoryUnavailable(f"directory {cfg.name} cannot be reached safely at {cfg.uri}: {_why(exc)}") from None
    return conn, None


def _why(exc: Exception) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "its certificate is not signed by the configured CA (or the host name does not match)"
    if "hostname" in text.lower() or "doesn't match" in text:
        return "its certificate does not name this host"
    return f"{type(exc).__name__}: {text}"[:300]


def _service_connection(cfg: DirectorySettings):
    conn, failure = _connect(cfg, cfg.bind_dn, cfg.bind_password)
    if conn is None:
        raise DirectoryUnavailable(f"directory {cfg.name}: the service account {cfg.bind_dn} cannot bind "
                                   f"({failure.get('description')}: {failure.get('message') or 'check the bind DN and password'})")
    return conn


def _entries(conn) -> list[dict]:
    return [r for r in (conn.response or []) if r.get("type") == "searchResEntry"]


def _first(attrs: dict, name: str):
    for key, value in attrs.items():
        if key.lower() == name.lower():
            if isinstance(value, list):
                return value[0] if value else None
            return value
    return None


def _all(attrs: dict, name: str) -> list:
    for key, value in attrs.items():
        if key.lower() == name.lower():
            return list(value) if isinstance(value, list) else [value]
    return []


def user_filter(cfg: DirectorySettings, username: str) -> str:
    from ldap3.utils.conv import escape_filter_chars

    return cfg.user_filter.replace("{username}", escape_filter_chars(username))


def find_user(conn, cfg: DirectorySettings, username: str) -> tuple[str, dict] | None:
    """(DN, attributes) of the one entry the filter finds, or None (none, or ambiguous)."""
    from ldap3 import SUBTREE

    conn.search(cfg.base_dn, user_filter(cfg, username), SUBTREE, attributes=USER_ATTRIBUTES, size_limit=2)
    found = _entries(conn)
    if len(found) != 1:
        return None
    return found[0]["dn"], dict(found[0].get("attributes") or {})


def refusal(cfg: DirectorySettings, username: str, attrs: dict, now: dt.datetime | None = None) -> str | None:
    """Why this account may not log in (disabled, locked, expired), or None."""
    now = now or dt.datetime.now(dt.timezone.utc)
    where = f"in directory {cfg.name}"
    uac = _first(attrs, "userAccountControl")
    if uac not in (None, "") and int(uac) & 2:
        return f"the account {username} is disabled {where} (userAccountControl ACCOUNTDISABLE)"
    expires = _first(attrs, "accountExpires")
    if isinstance(expires, dt.datetime):  # ldap3 may format it when it knows the schema
        if expires.tzinfo and dt.datetime(1601, 1, 2, tzinfo=dt.timezone.utc) < expires < now:
            return f"the account {username} expired on {expires:%Y-%m-%d} {where} (accountExpires)"
    elif expires not in (None, "") and int(expires) not in AD_NEVER:
        when = dt.datetime(1601, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(expires) // 10)
        if when < now:
            return f"the account {username} expired on {when:%Y-%m-%d} {where} (accountExpires)"
    if _first(attrs, "pwdAccountLockedTime") not in (None, ""):
        return f"the account {username} is locked {where} (pwdAccountLockedTime)"
    if str(_first(attrs, "nsAccountLock") or "").upper() == "TRUE":
        return f"the account {username} is disabled {where} (nsAccountLock)"
    shadow = _first(attrs, "shadowExpire")
    if shadow not in (None, "") and int(shadow) > 0:
        when = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=int(shadow))
        if when <= now:
            return f"the account {username} expired on {when:%Y-%m-%d} {where} (shadowExpire)"
    return None


def _rdn_value(dn: str) -> str:
    from ldap3.utils.dn import parse_dn

    try:
        return parse_dn(dn, escape=False)[0][1]
    except Exception:
        return dn.split(",", 1)[0].split("=", 1)[-1]


def groups_of(conn, cfg: DirectorySettings, dn: str, username: str, attrs: dict) -> list[dict]:
    """Every group the user is in, directly or through nested groups: [{name, dn, nested}]."""
    from ldap3 import SUBTREE
    from ldap3.utils.conv import escape_filter_chars

    found: dict[str, dict] = {}

    def add(entries, nested: bool) -> list[str]:
        new = []
        for e in entries:
            key = e["dn"].lower()
            if key not in found:
                name = _first(e.get("attributes") or {}, "cn") or _rdn_value(e["dn"])
                found[key] = {"name": str(name), "dn": e["dn"], "nested": nested}
                new.append(e["dn"])
        return new

    if cfg.kind == "ad":
        chain = f"(member:1.2.840.113556.1.4.1941:={escape_filter_chars(dn)})"
        conn.search(cfg.base_dn, f"(&(objectClass=group){chain})", SUBTREE, attributes=["cn"])
        direct = {g.lower() for g in _all(attrs, "memberOf")}
        for e in _entries(conn):
            add([e], nested=e["dn"].lower() not in direct)
        return sorted(found.values(), key=lambda g: g["name"].lower())

    member = escape_filter_chars(username if cfg.group_attribute == "memberUid" else dn)
    conn.search(cfg.base_dn, f"({cfg.group_attribute}={member})", SUBTREE, attributes=["cn"])
    frontier = add(_entries(conn), nested=False)
    for g in _all(attrs, "memberOf"):
        if g.lower() not in found:
            found[g.lower()] = {"name": _rdn_value(g), "dn": g, "nested": False}
            frontier.append(g)
    attr = "member" if cfg.group_attribute == "memberUid" else cfg.group_attribute
    for _depth in range(MAX_NESTING):
        if not frontier:
            break
        terms = "".join(f"({attr}={escape_filter_chars(g)})" for g in frontier)
        conn.search(cfg.base_dn, f"(|{terms})", SUBTREE, attributes=["cn"])
        frontier = add(_entries(conn), nested=True)
    return sorted(found.values(), key=lambda g: g["name"].lower())


class BadCredentials(Exception):
    pass


def authenticate(cfg: DirectorySettings, username: str, password: str) -> DirectoryUser | None:
    """The user found and bound in this directory; None when the directory has no such user.

    Raises BadCredentials (wrong password), AccountRefused (disabled/expired), DirectoryUnavailable."""
    conn = _service_connection(cfg)
    try:
        found = find_user(conn, cfg, username)
        if found is None:
            return None
        dn, attrs = found
        why = refusal(cfg, username, attrs)
        if why:
            raise AccountRefused(why)
        if not password:
            raise BadCredentials()
        user_conn, failure = _connect(cfg, dn, password)
        if user_conn is None:
            data = str(failure.get("message") or "")
            for code, text in (("data 533", "disabled"), ("data 701", "expired"), ("data 532", "password has expired"),
                               ("data 775", "locked out"), ("data 773", "must change its password")):
                if code in data:  # AD names the reason once the password was right
                    raise AccountRefused(f"the account {username} is {text} in directory {cfg.name}".replace("is password", "password"))
            raise BadCredentials()
        user_conn.unbind()
        groups = groups_of(conn, cfg, dn, username, attrs)
        return DirectoryUser(dn=dn, name=username, groups=groups, attributes=attrs)
    finally:
        conn.unbind()


def lookup_user(cfg: DirectorySettings, username: str) -> DirectoryUser | None:
    """The user and their groups as the service account sees them (no password): for explain and test."""
    conn = _service_connection(cfg)
    try:
        found = find_user(conn, cfg, username)
        if found is None:
            return None
        dn, attrs = found
        return DirectoryUser(dn=dn, name=username, groups=groups_of(conn, cfg, dn, username, attrs), attributes=attrs)
    finally:
        conn.unbind()


def probe(cfg: DirectorySettings, username: str | None = None) -> dict:
    """Connect with TLS, bind as the service account, read the base DN; optionally look a user up."""
    from ldap3 import BASE

    started = time.perf_counter()
    conn = _service_connection(cfg)
    try:
        connected_ms = (time.perf_counter() - started) * 1000
        conn.search(cfg.base_dn, "(objectClass=*)", BASE, attributes=["objectClass"])
        if not _entries(conn):
            raise UserError(f"directory {cfg.name}: the base DN {cfg.base_dn} cannot be read by {cfg.bind_dn} "
                            f"({conn.result.get('description')})")
        out: dict = {"directory": cfg.name, "uri": cfg.uri, "tls": cfg.tls, "bind_dn": cfg.bind_dn, "base_dn": cfg.base_dn,
                     "ok": True, "connect_bind_ms": round(connected_ms, 1), "tls_version": _tls_version(conn)}
        if username:
            found = find_user(conn, cfg, username)
            if found is None:
                out["user"] = None
                out["user_found"] = False
            else:
                dn, attrs = found
                out.update(user_found=True, user={"dn": dn, "refused": refusal(cfg, username, attrs),
                                                  "groups": groups_of(conn, cfg, dn, username, attrs)})
        out["total_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return out
    finally:
        conn.unbind()


def _tls_version(conn) -> str | None:
    try:
        return conn.socket.version()
    except Exception:
        return None
