"""Boot tables: profiles, rule sets (working + active), pins, per-site policies, boot events, state.

Machines themselves are the core `machines` / `machine_macs` tables (netslate.store.models).
"""

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from netslate.store.db import Base, utcnow


class BootProfile(Base):
    """What to boot: an image at a version or tag (kind=image), the local disk (local), or a menu (menu)."""

    __tablename__ = "boot_profiles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="image")  # image | local | menu
    image: Mapped[str | None] = mapped_column(String(63), nullable=True)
    ref: Mapped[str | None] = mapped_column(String(63), nullable=True)  # version number or tag
    mode: Mapped[str] = mapped_column(String(16), default="ram")
    args: Mapped[list[str]] = mapped_column(JSON, default=list)
    console: Mapped[str | None] = mapped_column(String(64), nullable=True)  # e.g. ttyS0,115200n8
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class BootRule(Base):
    """One rule of the working or the active rule set; activation copies working → active."""

    __tablename__ = "boot_rules"
    __table_args__ = (UniqueConstraint("ruleset", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ruleset: Mapped[str] = mapped_column(String(8), index=True)  # working | active
    name: Mapped[str] = mapped_column(String(63))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    selectors: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    profile: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class BootState(Base):
    """One row. `generation` moves on every change that can alter a boot script (the cache key)."""

    __tablename__ = "boot_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    active_version: Mapped[int] = mapped_column(Integer, default=0)
    activated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    activated_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class BootPin(Base):
    """Pins one machine to one image version, whatever the rules say (rollback of one machine)."""

    __tablename__ = "boot_pins"
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"), primary_key=True)
    image: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class BootPolicy(Base):
    """What happens to a machine nobody approved yet, per site: boot-default (rules apply) or hold."""

    __tablename__ = "boot_policies"
    site: Mapped[str] = mapped_column(String(63), primary_key=True)
    policy: Mapped[str] = mapped_column(String(16), default="boot-default")
    retry_seconds: Mapped[int] = mapped_column(Integer, default=30)
    default_profile: Mapped[str | None] = mapped_column(String(63), nullable=True)


class BootEvent(Base):
    """One script served: to whom, by which rule and profile, which image version."""

    __tablename__ = "boot_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    machine_id: Mapped[int | None] = mapped_column(ForeignKey("machines.id", ondelete="SET NULL"), nullable=True, index=True)
    mac: Mapped[str | None] = mapped_column(String(17), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))  # image | local | menu | hold | wait
    rule: Mapped[str | None] = mapped_column(String(63), nullable=True)
    profile: Mapped[str | None] = mapped_column(String(63), nullable=True)
    image: Mapped[str | None] = mapped_column(String(63), nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    remote: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
