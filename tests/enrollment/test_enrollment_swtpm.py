"""The server's TPM code (enrollment/tpm.py, no TPM) against a real TPM 2.0 (swtpm + tpm2-tools):
names, MakeCredential → tpm2_activatecredential, quotes, and the agent's Tpm wrapper."""

from __future__ import annotations

import secrets

import pytest

from netslate.agent import tpm as agent_tpm
from netslate.agent.enroll import credential_file as agent_credential_file
from netslate.enrollment import tpm


def test_names_and_attributes_match_the_tpm(swtpm_factory, tmp_path):
    t = swtpm_factory()
    with agent_tpm.Tpm(t.tcti) as a:
        ak = tpm.parse_public(a.ak_public())
        ek = tpm.parse_public(a.ek_public())
        t.tools("tpm2_readpublic", "-c", str(a.dir / "ak.ctx"), "-n", str(tmp_path / "ak.name"))
    assert ak.name == (tmp_path / "ak.name").read_bytes()  # nameAlg ‖ SHA-256(TPMT_PUBLIC), as the TPM says
    tpm.check_ak(ak)
    tpm.check_ek(ek)
    assert {"fixedTPM", "fixedParent", "restricted", "sign"} <= set(ak.attribute_names())
    with pytest.raises(tpm.TpmError, match="lacks the attribute"):
        tpm.check_ak(ek)  # the EK cannot serve as an AK: it does not sign
    with pytest.raises(tpm.TpmError, match="restricted decryption"):
        tpm.check_ek(ak)


def test_ek_certificate_read_and_matched(swtpm_factory):
    t = swtpm_factory()
    with agent_tpm.Tpm(t.tcti) as a:
        ek = tpm.parse_public(a.ek_public())
        cert = a.ek_cert()
    assert cert is not None and tpm.ek_cert_matches(ek, cert)
    other = swtpm_factory("other")
    with agent_tpm.Tpm(other.tcti) as a:
        assert not tpm.ek_cert_matches(tpm.parse_public(a.ek_public()), cert)


@pytest.mark.parametrize("ek_alg", ["rsa", "ecc"])
def test_make_credential_without_a_tpm_activates_in_the_tpm(swtpm_factory, ek_alg):
    t = swtpm_factory()
    with agent_tpm.Tpm(t.tcti, ek_alg=ek_alg) as a:
        ek, ak = tpm.parse_public(a.ek_public()), tpm.parse_public(a.ak_public())
        assert ek.type == (tpm.ALG_RSA if ek_alg == "rsa" else tpm.ALG_ECC)
        secret = secrets.token_bytes(32)
        blob, seed = tpm.make_credential(ek, secret, ak.name)
        assert a.activate(agent_credential_file(blob, seed)) == secret
        # bound to the AK's name: a challenge made for another key's name does not activate with this AK
        wrong = tpm.make_credential(ek, secret, b"\x00\x0b" + bytes(32))
        with pytest.raises(agent_tpm.TpmUnavailable):
            a.activate(agent_credential_file(*wrong))


def test_credential_for_another_tpm_does_not_activate(swtpm_factory):
    first, second = swtpm_factory("a"), swtpm_factory("b")
    with agent_tpm.Tpm(first.tcti) as a:
        ek_a, ak_a = tpm.parse_public(a.ek_public()), tpm.parse_public(a.ak_public())
    with agent_tpm.Tpm(second.tcti) as b:
        tpm.parse_public(b.ak_public())
        blob = tpm.make_credential(ek_a, b"x" * 32, ak_a.name)  # encrypted to A's EK
        with pytest.raises(agent_tpm.TpmUnavailable):
            b.activate(agent_credential_file(*blob))


def test_quote_verifies_over_the_nonce_only(swtpm_factory):
    t = swtpm_factory()
    nonce = secrets.token_bytes(32)
    with agent_tpm.Tpm(t.tcti) as a:
        ak = tpm.parse_public(a.ak_public())
        attest, sig = a.quote(nonce.hex())
    q = tpm.verify_quote(ak, attest, sig, nonce)
    assert q.extra_data == nonce and q.pcr_select == [(tpm.ALG_SHA256, list(range(8)))] and len(q.pcr_digest) == 32
    with pytest.raises(tpm.TpmError, match="nonce"):
        tpm.verify_quote(ak, attest, sig, secrets.token_bytes(32))
    tampered = bytearray(attest)
    tampered[-1] ^= 1
    with pytest.raises(tpm.TpmError, match="signature"):
        tpm.verify_quote(ak, bytes(tampered), sig, nonce)
    other = swtpm_factory("other")
    with agent_tpm.Tpm(other.tcti) as b:
        with pytest.raises(tpm.TpmError, match="signature"):
            tpm.verify_quote(tpm.parse_public(b.ak_public()), attest, sig, nonce)


def test_ak_is_the_same_every_boot_without_storing_anything(swtpm_factory):
    t = swtpm_factory()
    with agent_tpm.Tpm(t.tcti) as a:
        first = a.ak_public(), a.ek_public()
    t.stop()
    t.start()  # a reboot: the TPM restarts, nothing was saved on the machine
    with agent_tpm.Tpm(t.tcti) as a:
        assert (a.ak_public(), a.ek_public()) == first
