"""The machine's TPM 2.0 through tpm2-tools (standard library + subprocess only).

Nothing is stored on the machine: the EK comes from the TCG template (`tpm2_createek`), the AK is a
primary key in the endorsement hierarchy made from one fixed template (`tpm2_createprimary`), so the
TPM derives the same AK from its endorsement seed on every boot. The AK is restricted + sign: the
TPM signs with it only what it produced itself (quotes), and fixedTPM + fixedParent: it never
leaves the TPM.

TCTI: `NETSLATE_TPM_TCTI` (tests: `swtpm:host=127.0.0.1,port=N`), else the kernel's resource
manager `/dev/tpmrm0`, else `/dev/tpm0`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

AK_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"
AK_ALG = "ecc256:ecdsa-sha256:null"
QUOTE_PCRS = "sha256:0,1,2,3,4,5,6,7"
EK_CERT_INDEX = {"rsa": "0x01c00002", "ecc": "0x01c0000a"}
TOOL_TIMEOUT = 60.0


class TpmUnavailable(Exception):
    """No TPM, no tpm2-tools, or a tpm2-tools command failed (the message says which)."""


def tcti(root: Path = Path("/")) -> str | None:
    """The TCTI to use, or None when this machine has no TPM."""
    env = os.environ.get("NETSLATE_TPM_TCTI")
    if env:
        return env
    for dev in ("dev/tpmrm0", "dev/tpm0"):
        if (Path(root) / dev).exists():
            return f"device:/{dev}"
    return None


class Tpm:
    """One session with the TPM: a private work directory for context files, removed on close."""

    def __init__(self, tcti_spec: str, ek_alg: str = "rsa"):
        if shutil.which("tpm2_createek") is None:
            raise TpmUnavailable("tpm2-tools is not installed (tpm2_createek not found)")
        self.tcti = tcti_spec
        self.ek_alg = ek_alg
        self.dir = Path(tempfile.mkdtemp(prefix="netslate-tpm-"))
        self._ek = self._ak = False

    def close(self) -> None:
        self._flush()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Tpm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, TPM2TOOLS_TCTI=self.tcti)
        try:
            p = subprocess.run(list(args), cwd=self.dir, env=env, capture_output=True, timeout=TOOL_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TpmUnavailable(f"{args[0]}: {exc}") from None
        if check and p.returncode != 0:
            err = p.stderr.decode(errors="replace").strip().splitlines()
            raise TpmUnavailable(f"{args[0]} failed: {err[-1] if err else f'exit {p.returncode}'}")
        return p

    def _flush(self) -> None:
        """Transient objects and sessions go (a TCTI without a resource manager keeps them loaded)."""
        self._run("tpm2_flushcontext", "-t", check=False)
        self._run("tpm2_flushcontext", "-l", check=False)

    def _load(self) -> None:
        if not self._ek:
            self._run("tpm2_createek", "-c", "ek.ctx", "-G", self.ek_alg, "-u", "ek.pub")
            self._flush()
            self._ek = True
        if not self._ak:
            self._run("tpm2_createprimary", "-C", "e", "-G", AK_ALG, "-g", "sha256", "-a", AK_ATTRIBUTES, "-c", "ak.ctx")
            self._run("tpm2_readpublic", "-c", "ak.ctx", "-o", "ak.pub", "-f", "tss")
            self._flush()
            self._ak = True

    def ek_public(self) -> bytes:
        """TPM2B_PUBLIC of the endorsement key (TCG template)."""
        self._load()
        return (self.dir / "ek.pub").read_bytes()

    def ek_cert(self) -> bytes | None:
        """The EK certificate from its TCG NV index, if the manufacturer put one there."""
        p = self._run("tpm2_nvread", EK_CERT_INDEX[self.ek_alg], "-C", "o", "-o", "ekcert.der", check=False)
        self._flush()
        f = self.dir / "ekcert.der"
        if p.returncode != 0 or not f.exists() or f.stat().st_size == 0:
            return None
        return _der_only(f.read_bytes())

    def ak_public(self) -> bytes:
        """TPM2B_PUBLIC of the attestation key (the same on every boot)."""
        self._load()
        return (self.dir / "ak.pub").read_bytes()

    def activate(self, credential_file: bytes) -> bytes:
        """TPM2_ActivateCredential with the EK (policy: PolicySecret(endorsement)) and the AK."""
        self._load()
        (self.dir / "cred.in").write_bytes(credential_file)
        self._run("tpm2_startauthsession", "--policy-session", "-S", "session.ctx")
        try:
            self._run("tpm2_policysecret", "-S", "session.ctx", "-c", "e")
            self._run("tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", "cred.in", "-o", "secret.out",
                      "-P", "session:session.ctx")
        finally:
            self._run("tpm2_flushcontext", "session.ctx", check=False)
            self._flush()
        out = self.dir / "secret.out"
        data = out.read_bytes()
        out.unlink()
        return data

    def quote(self, nonce_hex: str) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, TPMT_SIGNATURE): a quote of PCRs 0-7 (SHA-256) with the nonce as extraData."""
        self._load()
        try:
            self._run("tpm2_quote", "-c", "ak.ctx", "-l", QUOTE_PCRS, "-q", nonce_hex, "-g", "sha256",
                      "-m", "quote.msg", "-s", "quote.sig")
        finally:
            self._flush()
        return (self.dir / "quote.msg").read_bytes(), (self.dir / "quote.sig").read_bytes()


def _der_only(data: bytes) -> bytes:
    """An NV index is read whole; the DER certificate may be followed by padding."""
    if len(data) >= 4 and data[0] == 0x30 and data[1] == 0x82:
        return data[: 4 + int.from_bytes(data[2:4], "big")]
    return data
