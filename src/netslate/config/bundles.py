"""Signed per-machine bundles: the machine's document resolved from its effective generation,
its IP pool lease, templates rendered, and the image version the boot side assigns it (`image_pin`,
from an assignment function the caller passes: the composition root's one boot engine). Database
edge over `resolution.py` (pure).

Secrets (issue 13 §5) never travel in the document. A bundle fetched with the machine's own
credential carries the secrets at or below the credential's trust level in `sealed_secrets`:
ChaCha20-Poly1305 under `credentials.bundle_key(credential)`, the machine id and generation as
associated data, the nonce derived from key and content (the same content gives the same bytes, so
the ETag stays stable while nothing changes). A bundle asked for by MAC, UUID, serial or an API
token alone (no credential) carries no secret at all; `secrets_withheld` names those left out.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from typing import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from netslate.canonical import canonical_json
from netslate.config import credentials, machines, secrets, state
from netslate.config.generation_cache import cache_for
from netslate.config.leases import machine_lease
from netslate.config.machines import MachineView
from netslate.config.resolution import Tree, effective_generation, pool_name, render, with_lease
from netslate.errors import IntegrityError, Unavailable

BUNDLE_KIND = "netslate-bundle/1"
SECRETS_ALG = "chacha20-poly1305/hkdf-sha256"

# machine id → {"name", "version", "digest", "source"} or None; the boot engine's `assignment`
Assign = Callable[[int], "dict | None"]


def machine_facts(m) -> dict:
    """The `machine` variable of templates."""
    return {
        "id": m.id, "name": m.name, "hostname": m.hostname, "uuid": m.uuid, "serial": m.serial,
        "manufacturer": m.manufacturer, "product": m.product, "labels": dict(m.labels or {}),
        "macs": sorted(x if isinstance(x, str) else x.mac for x in m.macs), "tree_path": m.tree_path,
        "ip_address": m.ip_address,
    }


def secrets_aad(machine_id: int, generation: int) -> bytes:
    return f"netslate-bundle-secrets/1:{machine_id}:{generation}".encode()


def seal_secrets(token: str, machine_id: int, generation: int, values: dict, key: bytes | None = None) -> dict:
    """The `sealed_secrets` section: `values` encrypted to the machine's credential (`key`: its
    `credentials.bundle_key`, when the caller has it already)."""
    key = key or credentials.bundle_key(token)
    aad = secrets_aad(machine_id, generation)
    plain = json.dumps(values, sort_keys=True, separators=(",", ":")).encode()
    nonce = hmac.new(key, aad + b"\0" + plain, hashlib.sha256).digest()[:12]  # deterministic: a stable ETag
    data = ChaCha20Poly1305(key).encrypt(nonce, plain, aad)
    return {"alg": SECRETS_ALG, "nonce": base64.b64encode(nonce).decode("ascii"), "data": base64.b64encode(data).decode("ascii")}


def build_payload(m: MachineView, st, cache: Tree, generation: int, authenticated: bool, now: dt.datetime | None = None,
                  ctx=None, trust: str = "none", credential: str | None = None,
                  sealing_key: bytes | None = None) -> tuple[dict, str]:
    """The bundle payload for one machine, and its ETag (stable while the content is).
    With `ctx`, a document in network mode 'pool' gets the machine's leased address. `image_pin` is
    `m.image_pin` (bundle() sets it from the assignment function), else None. Secrets at or below
    `trust` are sealed to `credential` when `authenticated` (opened with `ctx`'s KEK)."""
    doc, _ = cache.resolve_machine(m.tree_path, m.id)
    if ctx is not None and pool_name(doc) is not None:
        doc = with_lease(doc, *machine_lease(ctx, m.id, doc))
    machine = machine_facts(m)
    facts = (m.status or {}).get("facts") or {}
    doc = render(doc, machine, facts, generation)
    stored = doc.get("secrets") if isinstance(doc.get("secrets"), dict) else {}
    names = sorted(k for k, v in stored.items() if v is not None)
    given = [k for k in names if authenticated and credential and ctx is not None
             and credentials.at_least(trust, secrets.level_of(doc, k))]
    withheld = [k for k in names if k not in given]
    sealed = None
    if given:
        sealed = seal_secrets(credential, m.id, generation, secrets.open_secrets(ctx.data_dir, {k: stored[k] for k in given}),
                              sealing_key)
    if "secrets" in doc or "secret_levels" in doc:
        doc = {k: v for k, v in doc.items() if k not in ("secrets", "secret_levels")}
    payload = {
        "kind": BUNDLE_KIND,
        "machine_id": m.id,
        "machine_name": m.name,
        "generation": generation,
        "tree_path": m.tree_path,
        "document": doc,
        "image_pin": getattr(m, "image_pin", None),
        "authenticated": authenticated,
        "trust": trust if authenticated else "none",
        "secrets_removed": bool(withheld),
        "secrets_withheld": withheld,
        "sealed_secrets": sealed,
    }
    etag = '"' + hashlib.sha256(canonical_json(payload)).hexdigest()[:32] + '"'
    payload["issued_at"] = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return payload, etag


def bundle(ctx, machine: str | int, credential: str | None = None, assign: Assign | None = None) -> tuple[dict, str, dict]:
    """(signed envelope, etag, info) for one machine, resolved from its effective generation.
    `assign(machine_id)` gives the bundle's `image_pin`; without it the pin is None."""
    with ctx.db.read_connection() as conn:
        m = machines.view(conn, machine)
        st = state.read_core(conn)
        check, sealing_key = credentials.checked(ctx, conn, credential)
    m.image_pin = assign(m.id) if assign is not None else None
    authenticated = check is not None and check.machine_id == m.id
    trust = check.trust if authenticated else "none"
    gen = effective_generation(st, m.tree_path)
    cache = cache_for(ctx)
    try:
        payload, etag = build_payload(m, st, cache.get(ctx, gen), gen, authenticated, ctx=ctx, trust=trust, credential=credential,
                                      sealing_key=sealing_key)
    except IntegrityError:  # a KEK rotation since this generation was cached: read it again
        cache.forget(gen)
        try:
            payload, etag = build_payload(m, st, cache.get(ctx, gen), gen, authenticated, ctx=ctx, trust=trust,
                                          credential=credential, sealing_key=sealing_key)
        except IntegrityError as exc:  # this server's DATA/keys/ lacks the key (another server may have it)
            raise Unavailable(f"this server cannot open machine {m.id}'s secrets: {exc} "
                              "(servers over one database share DATA/keys/)") from None
    # issue 15 §3: a site key signs only its site: the machine's `site` label (set by an admin, so a
    # machine's first boot at a branch during a WAN cut, before any address of it reached central, is
    # signed there), else its last address's discovery subnet (as the chunk mirror's assignment does)
    site = (m.labels or {}).get("site") or ctx.site_of(m.ip_address)
    return ctx.signing_key.sign_site(payload, site), etag, {"serial": st.serial, "machine_id": m.id}
