"""Enrollment tables: how a machine proves who it is (alembic branch `enrollment`).

- `EnrollmentTpm`: one row per TPM (EK) that asked to enroll: the EK (+ certificate), the AK and its
  name, the machine it claims, its status (pending | approved | revoked) and flags
  (`identity_conflict` when it claims a machine another EK already holds).
- `EnrollmentChallenge`: single-use challenges with an expiry: `activate` (a MakeCredential whose
  secret is kept only as SHA-256) and `quote` (a nonce the AK must sign).
- `EnrollmentPolicy`: site policies that approve a TPM without an admin: an EK fingerprint or a
  serial allow-list, or a subnet the enrollment request comes from.
"""

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from netslate.store.db import Base, utcnow


class EnrollmentTpm(Base):
    __tablename__ = "enrollment_tpm"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"), index=True)
    ek_sha256: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the EK's TPMT_PUBLIC
    ek_public: Mapped[str] = mapped_column(Text)  # base64 TPMT_PUBLIC
    ek_cert: Mapped[str | None] = mapped_column(Text, nullable=True)  # base64 DER, if the TPM has one
    ak_public: Mapped[str] = mapped_column(Text)  # base64 TPMT_PUBLIC
    ak_name: Mapped[str] = mapped_column(String(132))  # hex: nameAlg ‖ H(TPMT_PUBLIC)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | approved | revoked
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    claimed: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # macs, uuid, serial as sent
    remote: Mapped[str | None] = mapped_column(String(45), nullable=True)
    approved_by: Mapped[str | None] = mapped_column(String(128), nullable=True)  # actor or "policy:<kind>"
    activated_ak: Mapped[str | None] = mapped_column(String(132), nullable=True)  # AK name proven by ActivateCredential
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    approved_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    activated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    last_attested_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    last_pcr_digest: Mapped[str | None] = mapped_column(String(128), nullable=True)


class EnrollmentChallenge(Base):
    __tablename__ = "enrollment_challenges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    handle: Mapped[str] = mapped_column(String(64), unique=True)  # random, what the machine quotes back
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("enrollment_tpm.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # activate | quote
    expect_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # activate: SHA-256 of the secret
    nonce: Mapped[str | None] = mapped_column(String(128), nullable=True)  # quote: hex nonce
    ak_name: Mapped[str] = mapped_column(String(132))  # the AK this challenge is bound to
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class EnrollmentPolicy(Base):
    __tablename__ = "enrollment_policies"
    __table_args__ = (UniqueConstraint("kind", "value"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # ek | serial | subnet
    value: Mapped[str] = mapped_column(String(128))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class EnrollmentToken(Base):
    """A one-time enrollment token (`enrollment/tokens.py`): only its SHA-256 is kept. `kind` token
    (an admin's, `netslate machine enroll`) or host (netslate put it in a VM's SMBIOS OEM strings)."""

    __tablename__ = "enrollment_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(8))  # token | host
    machine_id: Mapped[int | None] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"), nullable=True, index=True)
    domain_uuid: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    used_from: Mapped[str | None] = mapped_column(String(45), nullable=True)
    used_by: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the machine that got the credential
