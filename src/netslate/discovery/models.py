"""Sites, their subnets, and the netslate servers that registered themselves (one row per server)."""

import datetime as dt

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from netslate.store.db import Base, utcnow


class Site(Base):
    __tablename__ = "discovery_sites"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    subnets: Mapped[list["SiteSubnet"]] = relationship(
        back_populates="site", cascade="all, delete-orphan", lazy="selectin", order_by="SiteSubnet.cidr"
    )


class SiteSubnet(Base):
    """A CIDR (IPv4 or IPv6, normalised) that belongs to one site; the longest matching prefix wins."""

    __tablename__ = "discovery_subnets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("discovery_sites.id", ondelete="CASCADE"), index=True)
    cidr: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    site: Mapped[Site] = relationship(back_populates="subnets")


class DiscoveryServer(Base):
    """A running `netslate serve`, kept fresh by its heartbeat; stale rows are left out of answers."""

    __tablename__ = "discovery_servers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    # The site by name (not a foreign key) so a server can keep running while its site is edited.
    site: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    port: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    weight: Mapped[int] = mapped_column(Integer, default=100)
    # its HTTPS listener (`serve --tls-listen`): port and certificate pin (sha256:HEX); None without TLS
    tls_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tls_pin: Mapped[str | None] = mapped_column(String(80), nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_heartbeat: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
