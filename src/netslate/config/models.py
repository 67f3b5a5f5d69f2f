"""Config tables: the shared working copy, immutable generations, the rollout state, and IP pools."""

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from netslate.store.db import Base, utcnow


class ConfigWorkingNode(Base):
    """One node's document in the working copy (what `config set/edit/apply` change)."""

    __tablename__ = "config_working"
    path: Mapped[str] = mapped_column(String(512), primary_key=True)  # tree path or @<machine id>
    document: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128), default="")


class ConfigGeneration(Base):
    """A published generation: a full snapshot of every node document. Never changed afterwards."""

    __tablename__ = "config_generations"
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    author: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(16), default="publish")  # publish | rollback
    canary_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    rollback_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # node path -> document
    diff: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # redacted per-node diff
    digest: Mapped[str] = mapped_column(String(71))


class ConfigState(Base):
    """Single row (id 1): which generation is effective, and a pending canary if any."""

    __tablename__ = "config_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    current: Mapped[int] = mapped_column(Integer, default=0)  # effective for every machine
    latest: Mapped[int] = mapped_column(Integer, default=0)  # newest generation number
    canary_generation: Mapped[int | None] = mapped_column(Integer, nullable=True)
    canary_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    working_base: Mapped[int] = mapped_column(Integer, default=0)  # generation the working copy started from
    serial: Mapped[int] = mapped_column(Integer, default=0)  # bumped on every change that can alter a bundle


class IpPool(Base):
    """A named range of addresses that `network.mode: pool` documents lease from (see ippools.py)."""

    __tablename__ = "config_ip_pools"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    first: Mapped[str] = mapped_column(String(45))
    last: Mapped[str] = mapped_column(String(45))
    prefix: Mapped[int] = mapped_column(Integer)
    gateway: Mapped[str | None] = mapped_column(String(45), nullable=True)
    dns: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")


class IpLease(Base):
    """One machine's address in one pool. The unique constraints are what make allocation safe
    under concurrency: one lease per machine, one machine per address."""

    __tablename__ = "config_ip_leases"
    __table_args__ = (UniqueConstraint("pool_id", "address", name="uq_config_ip_leases_pool_address"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("config_ip_pools.id", ondelete="CASCADE"), index=True)
    # a removed machine frees its address with it
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"), unique=True)
    address: Mapped[str] = mapped_column(String(45))
    leased_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class MachineCredential(Base):
    """A machine's bearer credential (`nsm_...`), shown once: stored as its SHA-256 and the bundle key
    derived from it, sealed under the KEK (config/credentials.py is the only reader and writer)."""

    __tablename__ = "machine_credentials"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    sealed_key: Mapped[str | None] = mapped_column(Text, nullable=True)  # bundle_key(token), atrest envelope
    trust: Mapped[str] = mapped_column(String(8))  # token | host | tpm
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)  # None: long-lived
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
