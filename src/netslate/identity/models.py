"""Identity tables for people: local users, directories, entitlements, web sessions, failed logins.

API tokens stay in the core tables (`netslate.store.models.ApiToken`).
"""

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from netslate.store.db import Base, utcnow


class LocalUser(Base):
    """A break-glass account kept in the database; the password only as an argon2id hash."""

    __tablename__ = "identity_users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)  # admin | operator | viewer | None
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    password_changed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Directory(Base):
    """An LDAP or Active Directory server people log in through (search, then bind)."""

    __tablename__ = "identity_directories"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    kind: Mapped[str] = mapped_column(String(8))  # ldap | ad
    uri: Mapped[str] = mapped_column(String(512))
    tls: Mapped[str] = mapped_column(String(8))  # ldaps | starttls
    ca_pem: Mapped[str] = mapped_column(Text)
    base_dn: Mapped[str] = mapped_column(String(1024))
    bind_dn: Mapped[str] = mapped_column(String(1024))
    bind_secret: Mapped[str] = mapped_column(Text)  # AES-GCM under DATA/keys/secrets.key, never returned
    user_filter: Mapped[str] = mapped_column(String(1024))
    group_attribute: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Entitlement(Base):
    """A grant to a directory group or a single user: a role (admin/operator/viewer) or a desktop pool.

    A group counts for anyone only when at least one entitlement names it ("registered")."""

    __tablename__ = "identity_entitlements"
    __table_args__ = (UniqueConstraint("subject_kind", "subject", "grant", "value"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_kind: Mapped[str] = mapped_column(String(8))  # group | user
    subject: Mapped[str] = mapped_column(String(1024))  # group cn or DN; user name
    grant: Mapped[str] = mapped_column(String(8))  # role | pool
    value: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class WebSession(Base):
    """A logged-in person's session. Only the SHA-256 of the session id is stored."""

    __tablename__ = "identity_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    id_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user: Mapped[str] = mapped_column(String(256), index=True)
    source: Mapped[str] = mapped_column(String(80))  # local | directory:NAME
    groups: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    csrf_token: Mapped[str] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(45), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)  # absolute time-out
    idle_seconds: Mapped[int] = mapped_column(Integer)


class LoginFailure(Base):
    """One failed login, counted per `user:NAME` and per `address:IP` over a sliding window."""

    __tablename__ = "identity_login_failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(320), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
