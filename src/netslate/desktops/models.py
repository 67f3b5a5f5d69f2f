"""Desktop tables: hypervisor hosts, golden images, pools, desktops, addresses and snapshots."""

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from netslate.store.db import Base, utcnow


class DesktopHost(Base):
    __tablename__ = "desktop_hosts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    uri: Mapped[str] = mapped_column(String(512))
    accel: Mapped[str] = mapped_column(String(8), default="auto")  # auto | kvm | tcg
    max_starting: Mapped[int] = mapped_column(Integer, default=4)
    reserve_mib: Mapped[int] = mapped_column(Integer, default=512)
    console_address: Mapped[str] = mapped_column(String(255), default="127.0.0.1")
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    reachable: Mapped[bool] = mapped_column(Boolean, default=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    capacity: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_seen: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class GoldenImage(Base):
    """One version of a golden base disk: DATA/desktops/golden/NAME/VERSION.qcow2, read-only."""

    __tablename__ = "desktop_goldens"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    virtual_size: Mapped[int] = mapped_column(BigInteger)
    actual_size: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(Text, default="")
    kernel: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # direct kernel boot, if any
    initrd: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    cmdline: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class DesktopPool(Base):
    __tablename__ = "desktop_pools"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    golden: Mapped[str] = mapped_column(String(63))
    golden_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: follow the newest
    size: Mapped[int] = mapped_column(Integer)
    spare: Mapped[int] = mapped_column(Integer)
    max: Mapped[int] = mapped_column(Integer)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    display: Mapped[str] = mapped_column(String(8))
    video: Mapped[str] = mapped_column(String(8), default="qxl")
    usb_redirect: Mapped[int] = mapped_column(Integer, default=0)
    smartcard: Mapped[bool] = mapped_column(Boolean, default=False)
    persistent: Mapped[bool] = mapped_column(Boolean, default=False)
    dedicated: Mapped[bool] = mapped_column(Boolean, default=False)
    ip_first: Mapped[str] = mapped_column(String(45))
    ip_last: Mapped[str] = mapped_column(String(45))
    hosts_selector: Mapped[str] = mapped_column(String(255), default="*")
    network: Mapped[str] = mapped_column(String(128), default="none")
    grace_seconds: Mapped[float] = mapped_column(Float, default=60.0)
    # scheduled snapshots of persistent desktops: every N hours, keep the newest K (None: off)
    snapshot_every_hours: Mapped[float | None] = mapped_column(Float, nullable=True)
    snapshot_keep: Mapped[int] = mapped_column(Integer, default=7, server_default="7")
    # diskless pools: "IMAGE@REF" of a netslate image; desktops PXE-boot it in ram mode (no disk, no golden)
    diskless: Mapped[str | None] = mapped_column(String(130), nullable=True)
    # what the end-user portal offers a pool's users on their own desktop
    allow_reset: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    allow_release: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Desktop(Base):
    __tablename__ = "desktops"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)  # the libvirt domain name
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("desktop_pools.id", ondelete="SET NULL"), nullable=True, index=True)
    pool_name: Mapped[str] = mapped_column(String(40), index=True)
    number: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(63), index=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    prior_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    user: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    golden_version: Mapped[int] = mapped_column(Integer)
    disk: Mapped[str] = mapped_column(String(1024))  # the active overlay
    reason: Mapped[str] = mapped_column(Text, default="")
    failures: Mapped[int] = mapped_column(Integer, default=0)
    logged_off_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    assigned_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    session: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class DesktopAddress(Base):
    """An address from a pool's range, held by one desktop; also its DHCP reservation."""

    __tablename__ = "desktop_addresses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ip: Mapped[str] = mapped_column(String(45), unique=True)  # unique: two desktops never share one
    pool_name: Mapped[str] = mapped_column(String(40), index=True)
    desktop_id: Mapped[int | None] = mapped_column(ForeignKey("desktops.id", ondelete="SET NULL"), nullable=True, unique=True)
    mac: Mapped[str] = mapped_column(String(17))
    hostname: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class DesktopSnapshot(Base):
    """A frozen qcow2 layer of a persistent desktop (external snapshot, works for UEFI too)."""

    __tablename__ = "desktop_snapshots"
    __table_args__ = (UniqueConstraint("desktop_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    desktop_id: Mapped[int] = mapped_column(ForeignKey("desktops.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    file: Mapped[str] = mapped_column(String(1024))
    note: Mapped[str] = mapped_column(Text, default="")
    scheduled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
