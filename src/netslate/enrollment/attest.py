"""The TPM enrollment protocol, server side (issue 13 §2).

    machine                                             server
    EK pub (+cert), AK pub, MACs/UUID/serial ── hello ─▶ new EK: enrollment `pending` (a site policy
                                                         may approve it); claims a machine another
                                                         EK holds: pending + `identity_conflict`
    ◀── approved, AK never proven: activation challenge = MakeCredential(EK, secret, AK name)
    ActivateCredential → secret ────────── activate ──▶ secret matches: the EK/AK binding is recorded
    ◀── a quote challenge: fresh nonce
    TPM2_Quote(AK, nonce) ────────────────── quote ───▶ AK signature over a TPM-made quote whose
                                                         extraData is this nonce → a short-lived
    ◀── credential (trust `tpm`)                          credential (config.credentials.issue)

Every later boot: hello (known EK, same AK, activated) → quote challenge → quote → credential, no
admin. Each challenge is single-use with a 5-minute expiry (store.consume), so a replayed
activation answer or quote is refused. A revoked enrollment is refused at hello. The protocol
stores nothing secret: the activation secret only as SHA-256, nonces are public.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import os
import secrets as pysecrets
from typing import Any

from netslate import audit, inventory
from netslate.config import credentials
from netslate.enrollment import store, tpm
from netslate.enrollment.store import EnrollmentRefused
from netslate.errors import UserError
from netslate.inventory.idents import normalize_mac, normalize_text, normalize_uuid

NONCE_BYTES = 32
SECRET_BYTES = 32
DEFAULT_TTL = 24 * 3600  # the per-boot credential; the agent re-attests before it runs out


def credential_ttl() -> int:
    try:
        return max(60, int(os.environ.get("NETSLATE_TPM_CREDENTIAL_TTL", "")))
    except ValueError:
        return DEFAULT_TTL


def _b64(value: str | None, what: str, required: bool = True) -> bytes | None:
    if value in (None, ""):
        if required:
            raise UserError(f"{what} is missing")
        return None
    if not isinstance(value, str) or len(value) > 8192:
        raise UserError(f"{what} is not base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{what} is not base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _parse(blob: bytes, what: str) -> tpm.TpmPublic:
    try:
        return tpm.parse_public(blob)
    except tpm.TpmError as exc:
        raise UserError(f"{what}: {exc}") from None


def _claims(macs: list[str] | None, uuid: str | None, serial: str | None) -> dict[str, Any]:
    norm = sorted({normalize_mac(m) for m in (macs or [])[:32]})
    if not norm:
        raise UserError("a TPM enrollment names at least one MAC address")
    return {"macs": norm, "uuid": normalize_uuid(uuid) if uuid else None,
            "serial": normalize_text(serial, "serial") if serial else None}


def _challenge_out(s, row, remote: str | None) -> dict[str, Any]:
    """The next step for an enrollment: wait (pending), activate (AK not proven yet) or quote."""
    out: dict[str, Any] = {"enrollment_id": row.id, "machine_id": row.machine_id, "status": row.status,
                           "flags": list(row.flags or [])}
    if row.status != "approved":
        return out
    ek = _parse(base64.b64decode(row.ek_public), "EK")
    if row.activated_ak != row.ak_name:
        secret = pysecrets.token_bytes(SECRET_BYTES)
        id_object, encrypted_secret = tpm.make_credential(ek, secret, bytes.fromhex(row.ak_name))
        c = store.new_challenge(s, row, "activate", expect=secret)
        out["activate"] = {"challenge": c.handle, "credential_blob": b64(id_object), "encrypted_secret": b64(encrypted_secret),
                           "expires_at": store._iso(c.expires_at)}
    else:
        nonce = pysecrets.token_bytes(NONCE_BYTES)
        c = store.new_challenge(s, row, "quote", nonce=nonce)
        out["quote"] = {"challenge": c.handle, "nonce": nonce.hex(), "expires_at": store._iso(c.expires_at)}
    return out


def hello(ctx, ek_public: str, ak_public: str, macs: list[str], uuid: str | None = None, serial: str | None = None,
          ek_cert: str | None = None, remote: str | None = None) -> dict[str, Any]:
    """A machine presents its EK, AK and hardware facts; the answer says what comes next."""
    ek = _parse(_b64(ek_public, "ek_public"), "EK")
    ak = _parse(_b64(ak_public, "ak_public"), "AK")
    try:
        tpm.check_ek(ek)
        tpm.check_ak(ak)
    except tpm.TpmError as exc:
        raise UserError(str(exc)) from None
    cert = _b64(ek_cert, "ek_cert", required=False)
    if cert is not None:
        try:
            if not tpm.ek_cert_matches(ek, cert):
                raise UserError("the EK certificate is for another key than this EK")
        except tpm.TpmError as exc:
            raise UserError(str(exc)) from None
    claims = _claims(macs, uuid, serial)
    ek_sha, ak_name = ek.fingerprint, ak.name.hex()

    with ctx.db.session() as s:
        row = store.by_ek(s, ek_sha)
        if row is not None:
            if row.status == "revoked":
                audit.record(s, f"machine:{row.machine_id}", "enrollment.tpm.refused", f"machine:{row.machine_id}",
                             enrollment=row.id, reason="revoked", remote=remote)
                refused = row.machine_id
            else:
                refused = None
                if row.ak_name != ak_name:  # another AK in the same TPM: prove it again with ActivateCredential
                    audit.record(s, f"machine:{row.machine_id}", "enrollment.tpm.ak_changed", f"machine:{row.machine_id}",
                                 enrollment=row.id, old=row.ak_name, new=ak_name)
                    row.ak_public, row.ak_name = b64(ak.tpmt), ak_name
                row.remote = remote
                return _challenge_out(s, row, remote)
        else:
            refused = None
    if refused is not None:
        raise EnrollmentRefused(f"machine {refused}'s TPM enrollment is revoked")

    machine_id = _machine_for(ctx, claims, remote)
    with ctx.db.session() as s:
        others = [r for r in store.of_machine(s, machine_id) if r.status != "revoked"]
        flags = ["identity_conflict"] if others else []
        policy = None if others else store.policy_match(s, ek_sha, claims["serial"], remote)
        t = store.now()
        row = store.create(s, machine_id=machine_id, ek_sha256=ek_sha, ek_public=b64(ek.tpmt), ek_cert=b64(cert) if cert else None,
                           ak_public=b64(ak.tpmt), ak_name=ak_name, status="approved" if policy else "pending", flags=flags,
                           claimed=claims, remote=remote, approved_by=f"policy:{policy}" if policy else None,
                           approved_at=t if policy else None, created_at=t)
        audit.record(s, f"machine:{machine_id}", "enrollment.tpm.new", f"machine:{machine_id}", enrollment=row.id,
                     ek_sha256=ek_sha, status=row.status, flags=flags, remote=remote,
                     conflicts_with=[r.id for r in others] or None)
        out = _challenge_out(s, row, remote)
    if policy:
        inventory.approve_machine(ctx, machine_id, actor=f"policy:{policy}")
    return out


def _machine_for(ctx, claims: dict, remote: str | None) -> int:
    """The machine these facts name (SMBIOS UUID first, then any MAC); an unknown one is discovered."""
    with ctx.db.session() as s:
        m = inventory.identify(s, None, claims["macs"], claims["uuid"])
        if m is not None:
            return m.id
    facts = {"mac": claims["macs"][0], "uuid": claims["uuid"], "serial": claims["serial"]}
    return inventory.discover_machine(ctx, facts, remote, actor="enrollment")


def activate(ctx, challenge: str, secret: str, remote: str | None = None) -> dict[str, Any]:
    """The machine's ActivateCredential result: right → the EK/AK binding is recorded and a quote challenge follows."""
    got = _b64(secret, "secret")
    c = store.consume(ctx, challenge, "activate")
    with ctx.db.session() as s:
        row = store.get(s, c["enrollment_id"])
        ok = (row.status == "approved" and row.ak_name == c["ak_name"]
              and hmac.compare_digest(hashlib.sha256(got).hexdigest(), c["expect_sha256"] or ""))
        if ok:
            row.activated_ak, row.activated_at = row.ak_name, store.now()
            audit.record(s, f"machine:{row.machine_id}", "enrollment.tpm.activate", f"machine:{row.machine_id}",
                         enrollment=row.id, ak_name=row.ak_name)
            return _challenge_out(s, row, remote)
        audit.record(s, f"machine:{row.machine_id}", "enrollment.tpm.refused", f"machine:{row.machine_id}",
                     enrollment=row.id, reason="activation answer wrong", remote=remote)
    raise EnrollmentRefused("the activation answer does not match the challenge")


def quote(ctx, challenge: str, attest: str, signature: str, remote: str | None = None) -> dict[str, Any]:
    """An AK-signed quote over the challenge's nonce → a short-lived credential at trust `tpm`."""
    attest_blob, sig_blob = _b64(attest, "attest"), _b64(signature, "signature")
    c = store.consume(ctx, challenge, "quote")
    reason = None
    with ctx.db.session() as s:
        row = store.get(s, c["enrollment_id"])
        machine_id = row.machine_id
        if row.status != "approved":
            reason = f"the enrollment is {row.status}"
        elif row.activated_ak != row.ak_name or row.ak_name != c["ak_name"]:
            reason = "the AK is not the one proven by ActivateCredential"
        else:
            try:
                q = tpm.verify_quote(tpm.parse_public(base64.b64decode(row.ak_public)), attest_blob, sig_blob,
                                     bytes.fromhex(c["nonce"] or ""))
            except tpm.TpmError as exc:
                reason = str(exc)
        if reason is None:
            row.last_attested_at, row.last_pcr_digest = store.now(), q.pcr_digest.hex()
            audit.record(s, f"machine:{machine_id}", "enrollment.tpm.attest", f"machine:{machine_id}", enrollment=row.id,
                         pcr_digest=row.last_pcr_digest, remote=remote)
        else:
            audit.record(s, f"machine:{machine_id}", "enrollment.tpm.refused", f"machine:{machine_id}",
                         enrollment=row.id, reason=reason, remote=remote)
    if reason is not None:
        raise EnrollmentRefused(f"quote refused: {reason}")
    ttl = credential_ttl()
    token = credentials.issue(ctx, machine_id, "tpm", f"machine:{machine_id}", ttl_seconds=ttl)
    expires = store.now() + dt.timedelta(seconds=ttl)
    return {"machine_id": machine_id, "credential": token, "trust": "tpm", "expires_at": store._iso(expires)}


# ---------------------------------------------------------------- admin


def approve(ctx, machine_id: int, enrollment_id: int | None, actor: str) -> dict[str, Any] | None:
    """Approve the machine's pending TPM enrollment (the one named, or its only pending one); the
    machine's other enrollments (an EK it had before) are revoked. None when nothing is pending."""
    with ctx.db.session() as s:
        pending = [r for r in store.of_machine(s, machine_id) if r.status == "pending"]
        if enrollment_id is not None:
            row = store.get(s, enrollment_id)
            if row.machine_id != machine_id:
                raise UserError(f"TPM enrollment {enrollment_id} is not machine {machine_id}'s")
            if row.status == "approved":
                return store.record(row)
        elif not pending:
            return None
        elif len(pending) > 1:
            raise UserError(f"{len(pending)} TPMs wait for machine {machine_id} (enrollments "
                            f"{', '.join(str(r.id) for r in pending)}): approve one with --enrollment N")
        else:
            row = pending[0]
        for other in store.of_machine(s, machine_id):
            if other.id != row.id and other.status != "revoked":
                other.status = "revoked"
                audit.record(s, actor, "enrollment.tpm.revoke", f"machine:{machine_id}", enrollment=other.id, reason="replaced")
        row.status, row.flags = "approved", []
        row.approved_by, row.approved_at = actor[:128], store.now()
        audit.record(s, actor, "enrollment.tpm.approve", f"machine:{machine_id}", enrollment=row.id, ek_sha256=row.ek_sha256)
        return store.record(row)


def revoke(ctx, machine_id: int, actor: str) -> dict[str, Any]:
    """Revoke every TPM enrollment of the machine and every credential it holds."""
    with ctx.db.session() as s:
        rows = [r for r in store.of_machine(s, machine_id) if r.status != "revoked"]
        for r in rows:
            r.status = "revoked"
        audit.record(s, actor, "enrollment.tpm.revoke", f"machine:{machine_id}", enrollments=[r.id for r in rows])
    revoked = credentials.revoke_all(ctx, machine_id, actor)
    return {"machine_id": machine_id, "enrollments_revoked": len(rows), "credentials_revoked": revoked}
