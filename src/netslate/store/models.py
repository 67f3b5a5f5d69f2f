"""Core tables shared by every part: API tokens, the audit log, and the machine inventory.

Each part keeps its own tables in `netslate/<part>/models.py` and its own Alembic branch.
"""

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from netslate.store.db import Base, utcnow


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | operator | viewer
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(256))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Machine(Base):
    """One physical or virtual machine. Boot, config and fleet status all hang off this row."""

    __tablename__ = "machines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(63), unique=True, nullable=True)
    uuid: Mapped[str | None] = mapped_column(String(36), unique=True, nullable=True)
    serial: Mapped[str | None] = mapped_column(String(128), nullable=True)
    manufacturer: Mapped[str | None] = mapped_column(String(128), nullable=True)
    product: Mapped[str | None] = mapped_column(String(128), nullable=True)
    hostname: Mapped[str | None] = mapped_column(String(253), nullable=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="discovered")
    approved: Mapped[bool] = mapped_column(default=False)
    tree_path: Mapped[str] = mapped_column(String(512), default="/")
    ip_address: Mapped[str | None] = mapped_column(String(45), nullable=True)
    credential_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # none < token < host < tpm: how the machine proved who it is (issue 13); written by inventory.set_trust
    trust: Mapped[str] = mapped_column(String(8), default="none", server_default="none")
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    status: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    macs: Mapped[list["MachineMac"]] = relationship(
        back_populates="machine", cascade="all, delete-orphan", lazy="selectin"
    )


class MachineMac(Base):
    __tablename__ = "machine_macs"
    __table_args__ = (UniqueConstraint("mac"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"), index=True)
    mac: Mapped[str] = mapped_column(String(17))
    machine: Mapped[Machine] = relationship(back_populates="macs")


class Setting(Base):
    """Small key/value facts about the installation (for example the store format version)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
