"""How the agent obtains its machine credential (issue 13), standard library only.

At start, and again while it waits for approval or before its credential runs out:
- a machine with a TPM 2.0 (`/dev/tpmrm0`, `/dev/tpm0`, or `NETSLATE_TPM_TCTI`) runs the TPM
  protocol (`tpm_enroll`): hello (EK, AK, MACs, SMBIOS UUID, serial) → pending, or a challenge;
  ActivateCredential answers the MakeCredential challenge; a quote over the server's nonce gets a
  short-lived credential at trust `tpm`;
- otherwise a one-time enrollment token (SMBIOS type 11 OEM strings or a token file:
  `agent/enroll_token.py`), else nothing: the machine stays at trust `none` and gets no secrets.

The credential goes where the agent already reads it (`<lkg dir>/credential`, mode 0600) with its
expiry beside it (`credential.json`); the TPM is asked again at every boot and when half of the
credential's lifetime has passed.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from pathlib import Path

from netslate.agent import facts as facts_mod
from netslate.agent import enroll_token, http
from netslate.agent import tpm as tpm_mod
from netslate.agent.util import atomic_write, read_json, write_json

PENDING_RETRY = 15.0  # seconds between hellos while an admin has not approved yet
REFUSED_RETRY = 300.0
MAX_STEPS = 4  # hello → activate → quote, plus one hello again if the AK had to be proven anew


class EnrollRefused(Exception):
    """The server refused this machine (revoked, replay, bad proof): HTTP 403 with its reason."""


def _post(url: str, path: str, body: dict, timeout: float) -> dict:
    r = http.post_json(f"{url}{path}", body, timeout=timeout)
    if r.status == 403:
        raise EnrollRefused(_detail(r))
    if r.status != 200:
        raise http.HttpError(f"{path}: HTTP {r.status} {_detail(r)}")
    return r.json()


def _detail(r) -> str:
    try:
        return str(r.json().get("detail"))[:300]
    except (http.HttpError, AttributeError):
        return r.body[:160].decode(errors="replace")


def hello_body(t: tpm_mod.Tpm, facts: dict) -> dict:
    dmi = facts.get("dmi") or {}
    cert = t.ek_cert()
    return {
        "ek_public": base64.b64encode(t.ek_public()).decode(), "ak_public": base64.b64encode(t.ak_public()).decode(),
        "ek_cert": base64.b64encode(cert).decode() if cert else None,
        "macs": facts_mod.macs(facts)[:32], "uuid": dmi.get("product_uuid"), "serial": _serial(dmi.get("product_serial")),
    }


def _serial(value: str | None) -> str | None:
    if not value or not value.strip() or value.strip().lower() in ("0", "none", "not specified", "default string"):
        return None
    return value.strip()[:128]


def tpm_enroll(url: str, facts: dict, tcti: str, timeout: float = 10.0, t: tpm_mod.Tpm | None = None) -> dict:
    """One pass of the TPM protocol. Returns the last answer: {"status": "pending", ...} or the
    credential {"credential", "trust", "expires_at", "machine_id"}. Raises EnrollRefused, HttpError,
    TpmUnavailable."""
    if http.PIN and not url.startswith("https://"):  # as the token path: no credential over plain HTTP
        raise http.HttpError(f"{url} is plain HTTP and this machine pins the server's TLS certificate: "
                             "TPM enrollment only over https")
    own = t is None
    t = t or tpm_mod.Tpm(tcti)
    try:
        step = _post(url, "/api/v1/enroll/tpm", hello_body(t, facts), timeout)
        for _ in range(MAX_STEPS):
            if step.get("activate"):
                a = step["activate"]
                blob = base64.b64decode(a["credential_blob"]), base64.b64decode(a["encrypted_secret"])
                secret = t.activate(credential_file(*blob))
                step = _post(url, "/api/v1/enroll/tpm/activate",
                             {"challenge": a["challenge"], "secret": base64.b64encode(secret).decode()}, timeout)
            elif step.get("quote"):
                q = step["quote"]
                attest, sig = t.quote(q["nonce"])
                return _post(url, "/api/v1/enroll/tpm/quote", {"challenge": q["challenge"],
                             "attest": base64.b64encode(attest).decode(), "signature": base64.b64encode(sig).decode()}, timeout)
            else:
                return step  # pending
        raise http.HttpError("enrollment did not finish")
    finally:
        if own:
            t.close()


def credential_file(id_object: bytes, encrypted_secret: bytes) -> bytes:
    """What tpm2_activatecredential reads: magic 0xBADCC0DE, version 1, the two TPM2B structures."""
    return bytes.fromhex("badcc0de00000001") + id_object + encrypted_secret


def save(lkg_dir: Path, answer: dict) -> None:
    """The credential where `Agent.credential()` reads it (0600), its expiry beside it."""
    lkg_dir = Path(lkg_dir)
    lkg_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(lkg_dir / "credential", (answer["credential"] + "\n").encode(), 0o600)
    write_json(lkg_dir / "credential.json", {"trust": answer.get("trust"), "expires_at": answer.get("expires_at"),
                                             "machine_id": answer.get("machine_id"), "obtained_at": _now_iso()}, 0o600)


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat() + "Z"


def _parse(value) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value).rstrip("Z"))
    except ValueError:
        return None


class Enroller:
    """The agent's enrollment state: what it did this boot, when to try again."""

    def __init__(self, root: Path, lkg_dir: Path, timeout: float = 10.0):
        self.root = Path(root)
        self.lkg_dir = Path(lkg_dir)
        self.timeout = timeout
        self.tcti = tpm_mod.tcti(self.root)
        self.method = "tpm" if self.tcti else "token"  # no TPM: a one-time token, if there is one
        self.state = "start"  # start | pending | enrolled | refused | failed | none
        self.last_try = 0.0

    def due(self) -> bool:
        """Try (again) now? At start; every PENDING_RETRY while pending or failing; REFUSED_RETRY after a
        refusal (an admin may approve again); after half the credential's lifetime."""
        if self.method is None:
            return False
        if self.state == "start":
            return True
        waited = time.monotonic() - self.last_try
        if self.state in ("pending", "failed"):
            return waited > PENDING_RETRY
        if self.state == "refused":
            return waited > REFUSED_RETRY
        meta = read_json(self.lkg_dir / "credential.json") or {}
        exp, got = _parse(meta.get("expires_at")), _parse(meta.get("obtained_at"))
        if exp is None or got is None:
            return False
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        return now >= got + (exp - got) / 2

    def step(self, url: str, facts: dict) -> str | None:
        """Run the protocol once; returns a problem line for the report, or None."""
        self.last_try = time.monotonic()
        if self.method is None:
            self.state = "none"
            return None
        if self.method == "token":
            return self._token_step(url, facts)
        try:
            answer = tpm_enroll(url, facts, self.tcti, self.timeout)
        except EnrollRefused as exc:
            self.state = "refused"
            (self.lkg_dir / "credential").unlink(missing_ok=True)  # revoked on the server anyway
            return f"TPM enrollment refused: {exc}"
        except (http.HttpError, tpm_mod.TpmUnavailable, OSError, KeyError, ValueError) as exc:
            self.state = "failed"
            return f"TPM enrollment failed: {exc}"
        if answer.get("credential"):
            return self._keep(answer)
        self.state = "pending"
        flags = answer.get("flags") or []
        return f"TPM enrollment {answer.get('enrollment_id')} waits for approval" + (f" ({', '.join(flags)})" if flags else "")

    def _token_step(self, url: str, facts: dict) -> str | None:
        """No TPM: trade a one-time token (SMBIOS OEM strings or a token file) once, unless a
        credential is already in place (cache mode keeps it on the NETSLATE disk)."""
        if (self.lkg_dir / "credential").exists():
            self.state = "enrolled"
            return None
        try:
            answer = enroll_token.enroll_with_token(url, facts, self.root, self.lkg_dir, self.timeout)
        except enroll_token.EnrollTokenRefused as exc:
            self.state = "refused"
            return str(exc)
        except (http.HttpError, OSError, ValueError) as exc:
            self.state = "failed"
            return f"enrollment token not exchanged: {exc}"
        if answer is None:
            self.state = "none"  # no TPM, no token: trust none, no secrets
            return None
        return self._keep(answer)

    def _keep(self, answer: dict) -> str | None:
        """Store the credential an enrollment answered with; a problem line when the disk refuses."""
        try:
            save(self.lkg_dir, answer)
        except OSError as exc:
            self.state = "failed"
            return f"could not store the credential in {self.lkg_dir}: {exc}"
        self.state = "enrolled"
        return None
