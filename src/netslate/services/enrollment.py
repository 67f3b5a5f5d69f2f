"""Enrollment: how machines prove who they are (issue 13).

Machine-facing operations (`/api/v1/enroll/tpm...`) need no API token: the proof is the TPM's. The
admin side lists enrollments, approves or revokes them, and keeps the site policies that approve a
TPM without an admin (an EK fingerprint or serial allow-list, a subnet).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from netslate import inventory
from netslate.enrollment import attest
from netslate.enrollment import store as enrollment_store
from netslate.enrollment import tokens as enroll_tokens
from netslate.errors import NotFound
from netslate.services.framework import Forbidden, Service, op


class TpmHello(BaseModel):
    """First message of a boot: the TPM's EK (+ its certificate), the AK, the hardware facts."""

    ek_public: str = Field(description="base64 TPM2B_PUBLIC (or TPMT_PUBLIC) of the endorsement key")
    ek_cert: str | None = Field(None, description="base64 DER EK certificate, if the TPM has one")
    ak_public: str = Field(description="base64 TPM2B_PUBLIC of the attestation key")
    macs: list[str] = Field(default_factory=list, max_length=32)
    uuid: str | None = None
    serial: str | None = None


class ActivationChallenge(BaseModel):
    challenge: str
    credential_blob: str  # base64 TPM2B_ID_OBJECT
    encrypted_secret: str  # base64 TPM2B_ENCRYPTED_SECRET
    expires_at: str


class QuoteChallenge(BaseModel):
    challenge: str
    nonce: str  # hex; the quote's extraData
    expires_at: str


class TpmStep(BaseModel):
    """What the machine does next: wait (pending), answer `activate`, or answer `quote`."""

    enrollment_id: int
    machine_id: int
    status: str  # pending | approved
    flags: list[str] = []
    activate: ActivationChallenge | None = None
    quote: QuoteChallenge | None = None


class ActivationAnswer(BaseModel):
    challenge: str
    secret: str  # base64: what ActivateCredential returned


class QuoteAnswer(BaseModel):
    challenge: str
    attest: str  # base64 TPMS_ATTEST (tpm2_quote -m)
    signature: str  # base64 TPMT_SIGNATURE (tpm2_quote -s)


class IssuedCredential(BaseModel):
    machine_id: int
    credential: str  # nsm_..., shown once
    trust: str
    expires_at: str | None


class TpmEnrollment(BaseModel):
    id: int
    machine_id: int
    status: str
    flags: list[str]
    ek_sha256: str
    ek_cert: bool
    ak_name: str
    activated: bool
    claimed: dict[str, Any]
    remote: str | None
    approved_by: str | None
    created_at: str | None
    approved_at: str | None
    activated_at: str | None
    last_attested_at: str | None


class EnrollmentApproval(BaseModel):
    enrollment: int | None = None


class Revocation(BaseModel):
    machine_id: int
    enrollments_revoked: int
    credentials_revoked: int


class EnrollmentPolicyRecord(BaseModel):
    id: int
    kind: str  # ek | serial | subnet
    value: str
    created_by: str
    created_at: str | None


class EnrollmentPolicyCreate(BaseModel):
    kind: str
    value: str


class TokenExchange(BaseModel):
    """A one-time enrollment token and what the machine says about itself."""

    token: str = Field(max_length=64, description="nse_...: from `netslate machine enroll`, a token file or the SMBIOS OEM strings")
    uuid: str | None = Field(None, max_length=64, description="the SMBIOS UUID (a domain-bound token checks it)")
    macs: list[str] = Field(default_factory=list, max_length=32)


class EnrollTokenCreate(BaseModel):
    machine: str | None = Field(None, description="the machine the token is for (id, name, MAC, UUID, serial)")
    domain_uuid: str | None = Field(None, description="bind it to this SMBIOS/libvirt domain UUID")
    kind: str = Field("token", description="token (entered by an admin) | host (put in a VM netslate defines; admin only)")
    ttl_seconds: int | None = Field(None, description="lifetime (default 1 h; host tokens 1 day)")


class EnrollTokenRecord(BaseModel):
    id: int
    kind: str
    machine_id: int | None
    domain_uuid: str | None
    created_at: str
    expires_at: str
    used_at: str | None
    token: str | None = None  # only in the answer that made it


class EnrollmentService(Service):
    noun = "enrollment"

    # ---- machines (no API token: the TPM is the proof)

    @op("POST", "/api/v1/enroll/tpm")
    def tpm_hello(self, request: TpmHello) -> TpmStep:
        """A machine presents its EK, AK and facts: pending, or the next challenge."""
        raise NotImplementedError

    @op("POST", "/api/v1/enroll/tpm/activate")
    def tpm_activate(self, request: ActivationAnswer) -> TpmStep:
        """The ActivateCredential answer: the EK/AK binding is recorded; a quote challenge follows."""
        raise NotImplementedError

    @op("POST", "/api/v1/enroll/tpm/quote")
    def tpm_quote(self, request: QuoteAnswer) -> IssuedCredential:
        """An AK-signed quote over the server's nonce: a short-lived credential at trust `tpm`."""
        raise NotImplementedError

    @op("POST", "/api/v1/enroll/token")
    def token_exchange(self, request: TokenExchange) -> IssuedCredential:
        """Trade a one-time enrollment token for a credential (once): trust `host` or `token`."""
        raise NotImplementedError

    # ---- admins

    @op("POST", "/api/v1/enroll-tokens", role="operator", status=201)
    def create_token(self, request: EnrollTokenCreate) -> EnrollTokenRecord:
        """A one-time enrollment token for a machine without a TPM (shown once)."""
        raise NotImplementedError

    @op("GET", "/api/v1/enroll-tokens", role="viewer")
    def tokens(self, machine: str | None = None) -> list[EnrollTokenRecord]:
        """Enrollment tokens (never the tokens themselves), newest first."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/enroll-tokens/{token_id}", role="operator")
    def revoke_token(self, token_id: int) -> EnrollTokenRecord:
        """End an unused enrollment token now."""
        raise NotImplementedError

    @op("GET", "/api/v1/enrollments")
    def list(self, machine: str | None = None, status: str | None = None) -> list[TpmEnrollment]:
        """TPM enrollments (public keys only), optionally of one machine or in one status."""
        raise NotImplementedError

    @op("POST", "/api/v1/machines/{ident}/enrollment/approve", role="operator")
    def approve(self, ident: str, request: EnrollmentApproval) -> TpmEnrollment:
        """Approve a machine's pending TPM enrollment (and the machine)."""
        raise NotImplementedError

    @op("POST", "/api/v1/machines/{ident}/revoke", role="operator")
    def revoke(self, ident: str) -> Revocation:
        """Revoke a machine's TPM enrollments and every credential it holds."""
        raise NotImplementedError

    @op("GET", "/api/v1/enrollment-policies", role="viewer")
    def policies(self) -> list[EnrollmentPolicyRecord]:
        """Site policies that approve a TPM without an admin."""
        raise NotImplementedError

    @op("POST", "/api/v1/enrollment-policies", role="admin", status=201)
    def add_policy(self, request: EnrollmentPolicyCreate) -> EnrollmentPolicyRecord:
        """Approve TPMs by EK fingerprint, serial or subnet."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/enrollment-policies/{policy_id}", role="admin")
    def remove_policy(self, policy_id: int) -> EnrollmentPolicyRecord:
        """Remove a site policy."""
        raise NotImplementedError


class LocalEnrollment(EnrollmentService):
    def tpm_hello(self, request: TpmHello) -> TpmStep:
        return TpmStep(**attest.hello(self.parts.ctx, request.ek_public, request.ak_public, request.macs, request.uuid,
                                      request.serial, request.ek_cert, remote=self.caller.address))

    def tpm_activate(self, request: ActivationAnswer) -> TpmStep:
        return TpmStep(**attest.activate(self.parts.ctx, request.challenge, request.secret, remote=self.caller.address))

    def _in_clear(self) -> bool:
        """Over plain HTTP to a server that has a TLS listener: no credential is issued then (426)."""
        return self.caller.transport == "http" and bool(self.parts.options.get("tls"))

    def tpm_quote(self, request: QuoteAnswer) -> IssuedCredential:
        if self._in_clear():
            raise enroll_tokens.NeedsTls("this server issues machine credentials only over HTTPS (its TLS listener)")
        return IssuedCredential(**attest.quote(self.parts.ctx, request.challenge, request.attest, request.signature,
                                               remote=self.caller.address))

    def token_exchange(self, request: TokenExchange) -> IssuedCredential:
        got = enroll_tokens.exchange(self.parts.ctx, request.token, request.uuid, request.macs, remote=self.caller.address,
                                     in_clear=self._in_clear())
        return IssuedCredential(machine_id=got.machine_id, credential=got.credential, trust=got.trust, expires_at=None)

    def create_token(self, request: EnrollTokenCreate) -> EnrollTokenRecord:
        if request.kind == "host" and not self.caller.has("admin"):
            raise Forbidden("a host token (netslate vouches for the VM) needs the admin role", authenticated=True)
        return EnrollTokenRecord(**enroll_tokens.create(self.parts.ctx, self.actor, request.machine, request.domain_uuid,
                                                        request.kind, request.ttl_seconds))

    def tokens(self, machine: str | None = None) -> list[EnrollTokenRecord]:
        return [EnrollTokenRecord(**r) for r in enroll_tokens.list_tokens(self.parts.ctx, machine)]

    def revoke_token(self, token_id: int) -> EnrollTokenRecord:
        return EnrollTokenRecord(**enroll_tokens.revoke(self.parts.ctx, token_id, self.actor))

    def list(self, machine: str | None = None, status: str | None = None) -> list[TpmEnrollment]:
        ctx = self.parts.ctx
        machine_id = inventory.machine_id(ctx, machine) if machine else None
        return [TpmEnrollment(**r) for r in enrollment_store.list_enrollments(ctx, machine_id, status)]

    def approve(self, ident: str, request: EnrollmentApproval) -> TpmEnrollment:
        ctx = self.parts.ctx
        machine_id = inventory.machine_id(ctx, ident)
        done = attest.approve(ctx, machine_id, request.enrollment, self.actor)
        if done is None:
            raise NotFound(f"machine {machine_id} has no TPM enrollment waiting for approval")
        inventory.approve_machine(ctx, machine_id, actor=self.actor)
        return TpmEnrollment(**done)

    def revoke(self, ident: str) -> Revocation:
        ctx = self.parts.ctx
        return Revocation(**attest.revoke(ctx, inventory.machine_id(ctx, ident), self.actor))

    def policies(self) -> list[EnrollmentPolicyRecord]:
        return [EnrollmentPolicyRecord(**p) for p in enrollment_store.list_policies(self.parts.ctx)]

    def add_policy(self, request: EnrollmentPolicyCreate) -> EnrollmentPolicyRecord:
        return EnrollmentPolicyRecord(**enrollment_store.add_policy(self.parts.ctx, request.kind, request.value, self.actor))

    def remove_policy(self, policy_id: int) -> EnrollmentPolicyRecord:
        return EnrollmentPolicyRecord(**enrollment_store.remove_policy(self.parts.ctx, policy_id, self.actor))
