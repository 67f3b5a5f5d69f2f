"""Image library tables. A version row exists only once all its chunks are stored (atomic import)."""

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, BigInteger
from sqlalchemy.orm import Mapped, mapped_column

from netslate.store.db import Base, utcnow


class Image(Base):
    __tablename__ = "images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ImageVersion(Base):
    __tablename__ = "image_versions"
    __table_args__ = (UniqueConstraint("image_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(Text)
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    bytes_total: Mapped[int] = mapped_column(BigInteger)
    bytes_new: Mapped[int] = mapped_column(BigInteger)
    # The signed envelope as canonical JSON; deferred (it can be megabytes) and cached once parsed.
    manifest_json: Mapped[str] = mapped_column(Text, deferred=True)
    manifest_digest: Mapped[str] = mapped_column(String(71))


class ImageTag(Base):
    __tablename__ = "image_tags"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)  # id of the TagEvent that set it; clients refuse lower


class TagEvent(Base):
    __tablename__ = "image_tag_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    tag: Mapped[str] = mapped_column(String(63))
    old_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    new_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
