"""Site-scoped signing, pure (issue 15 §3): the chain check machines run (onmachine/sitecert.py),
with real Ed25519 keys made by the server-side signer (crypto/keys.py)."""

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netslate.agent import bundle
from netslate.crypto.keys import SigningKey, SiteScopeError
from netslate.onmachine import sitecert
from netslate.onmachine.envelope import SignatureError

NOW = time.time()


def _root():
    return SigningKey(Ed25519PrivateKey.generate())


def _site_signer(root: SigningKey, site: str, serial: int = 1, days: int = 30, now: float = NOW, revocations=None):
    cert, pem = root.issue_site_cert(site, serial, days, now=now)
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(pem, password=None)
    return SigningKey(private, cert=cert, root=root.public_bytes, revocations=revocations)


def _bundle(machine_id=5, generation=3):
    return {"kind": bundle.BUNDLE_KIND, "machine_id": machine_id, "generation": generation, "document": {}}


def test_root_signed_envelope_without_chain_still_verifies():
    root = _root()
    env = root.sign({"kind": "x", "n": 1})
    assert "chain" not in env
    assert sitecert.open_signed(env, root.public_bytes) == {"kind": "x", "n": 1}


def test_good_chain_verifies_and_site_key_names_its_site():
    root = _root()
    b = _site_signer(root, "branch-b")
    env = b.sign_site(_bundle(), "branch-b")
    assert env["chain"][0]["payload"]["site"] == "branch-b"
    assert env["key"] == b.signer_fingerprint != root.fingerprint
    assert b.public_b64 == root.public_b64  # what machines pin is still the root
    payload = sitecert.open_signed(env, root.public_bytes, site="branch-b")
    assert payload["site"] == "branch-b"
    assert bundle.verify(env, root.public_bytes, 5, None)["generation"] == 3


def test_forged_certificate_is_refused():
    root, rogue = _root(), _root()
    b = _site_signer(rogue, "branch-b")  # certified by a key that is not the pinned root
    env = b.sign_site(_bundle(), "branch-b")
    with pytest.raises(SignatureError, match="site certificate not signed by the pinned root"):
        sitecert.open_signed(env, root.public_bytes)
    # a genuine certificate whose payload was edited (site widened to every site)
    good = _site_signer(root, "branch-b")
    env = good.sign_site(_bundle(), "branch-b")
    env["chain"][0]["payload"]["site"] = "*"
    with pytest.raises(SignatureError, match="not signed by the pinned root"):
        sitecert.open_signed(env, root.public_bytes)
    # a genuine certificate over a key other than the one that signed
    other = _site_signer(root, "branch-b", serial=2)
    env = other.sign_site(_bundle(), "branch-b")
    env["chain"] = good.sign_site(_bundle(), "branch-b")["chain"]
    with pytest.raises(SignatureError, match="site branch-b: signed by key"):
        sitecert.open_signed(env, root.public_bytes)
    with pytest.raises(bundle.BundleRejected, match="bad signature"):
        bundle.verify(env, root.public_bytes, 5, None)


def test_wrong_root_is_refused():
    root, other_root = _root(), _root()
    env = _site_signer(root, "b").sign_site(_bundle(), "b")
    with pytest.raises(SignatureError, match="pinned root"):
        sitecert.open_signed(env, other_root.public_bytes)


def test_expired_and_not_yet_valid_certificates_are_refused():
    root = _root()
    old = _site_signer(root, "b", days=1, now=NOW - 3 * 86400)
    with pytest.raises(SignatureError, match=r"site certificate 1 for site b expired at \d{4}-"):
        sitecert.open_signed(old.sign_site(_bundle(), "b"), root.public_bytes)
    future = _site_signer(root, "b", days=1, now=NOW + 3 * 86400)
    with pytest.raises(SignatureError, match="is not valid before"):
        sitecert.open_signed(future.sign_site(_bundle(), "b"), root.public_bytes)


def test_revoked_site_key_is_refused_from_the_envelope_or_the_cached_list():
    root = _root()
    stmt = root.issue_revocations(1, [{"serial": 1, "site": "b", "key": "sha256:x"}])
    b = _site_signer(root, "b", revocations=lambda: stmt)
    env = b.sign_site(_bundle(), "b")
    assert env["revocations"] == stmt
    with pytest.raises(SignatureError, match=r"site key 1 for site b is revoked \(revocation list 1\)"):
        sitecert.open_signed(env, root.public_bytes)
    # the server leaves the list out: the machine's cached list still refuses it
    bare_signer = _site_signer(root, "b")
    bare = bare_signer.sign_site(_bundle(), "b")
    assert "revocations" not in bare
    known = sitecert.open_revocations(stmt, root.public_bytes)
    with pytest.raises(SignatureError, match="revoked"):
        sitecert.open_signed(bare, root.public_bytes, revocations=known)
    # revoked by key fingerprint too
    by_key = root.issue_revocations(2, [{"serial": 99, "site": "b", "key": bare_signer.signer_fingerprint}])
    with pytest.raises(SignatureError, match="revoked"):
        sitecert.open_signed(bare, root.public_bytes, revocations=sitecert.open_revocations(by_key, root.public_bytes))
    # another serial of the same site is not touched
    two = _site_signer(root, "b", serial=2)
    assert sitecert.open_signed(two.sign_site(_bundle(), "b"), root.public_bytes, revocations=known)["site"] == "b"


def test_older_revocation_list_refused_newer_accepted():
    root = _root()
    one = root.issue_revocations(1, [])
    five = root.issue_revocations(5, [{"serial": 1, "site": "b", "key": "sha256:k"}])
    current = sitecert.accept_revocations(five, root.public_bytes, None)
    with pytest.raises(SignatureError, match="revocation list 1 is older than list 5 already seen: refused"):
        sitecert.accept_revocations(one, root.public_bytes, current)
    six = root.issue_revocations(6, [])
    assert sitecert.accept_revocations(six, root.public_bytes, current)["number"] == 6
    # an older list attached to an envelope never lowers what the machine knows
    b = _site_signer(root, "b", revocations=lambda: one)
    env = b.sign_site(_bundle(), "b")
    with pytest.raises(SignatureError, match="revoked"):
        sitecert.open_signed(env, root.public_bytes, revocations=current)
    # a list not signed by the root is refused, and ignored when attached
    forged = _root().issue_revocations(9, [])
    with pytest.raises(SignatureError, match="revocation list not signed by the pinned root"):
        sitecert.accept_revocations(forged, root.public_bytes, current)
    assert sitecert.newest_revocations({"revocations": forged}, root.public_bytes, current) == current


def test_site_mismatch_is_refused():
    root = _root()
    b = _site_signer(root, "b")
    # the signer itself refuses to sign for another site
    with pytest.raises(SiteScopeError, match="signs for site b only, not for site a"):
        b.sign_site(_bundle(), "a")
    with pytest.raises(SiteScopeError, match="not for site \\(none\\)"):
        b.sign_site(_bundle(), None)
    # a payload for site A signed by B's key (made by hand, as a thief holding B's key would)
    env = b._envelope({**_bundle(), "site": "a"})
    env["chain"] = [b.cert]
    with pytest.raises(SignatureError, match="signed by the key of site b for site 'a': a site key signs only for its own site"):
        sitecert.open_signed(env, root.public_bytes)
    # B's key claiming the payload is for B, to a machine that knows it is in A
    env = b.sign_site(_bundle(), "b")
    with pytest.raises(SignatureError, match="signed by the key of site b, but this machine is in site a"):
        sitecert.open_signed(env, root.public_bytes, site="a")
    with pytest.raises(bundle.BundleRejected, match="this machine is in site a"):
        bundle.verify(env, root.public_bytes, 5, None, site="a")
    # the root signs for any site; a "*" key (central with an offline root) too
    assert sitecert.open_signed(root.sign_site(_bundle(), "b"), root.public_bytes, site="a")["site"] == "b"
    star = _site_signer(root, "*", serial=3)
    assert sitecert.open_signed(star.sign_site(_bundle(), "a"), root.public_bytes, site="a")["site"] == "a"


def test_malformed_chains_are_refused():
    root = _root()
    b = _site_signer(root, "b")
    env = b.sign_site(_bundle(), "b")
    for chain in ([], [b.cert, b.cert], "x", [{"payload": "x"}]):
        with pytest.raises(SignatureError):
            sitecert.open_signed({**env, "chain": chain}, root.public_bytes)
    wrong_kind = root.sign({"kind": "netslate-bundle/1", "site": "b"})
    with pytest.raises(SignatureError, match="wrong kind"):
        sitecert.open_signed({**env, "chain": [wrong_kind]}, root.public_bytes)
