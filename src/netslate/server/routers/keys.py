from fastapi import APIRouter, Request

router = APIRouter(prefix="/api/v1", tags=["keys"])


@router.get("/keys")
def keys(request: Request):
    """The server's Ed25519 public key that signs manifests and bundles."""
    key = request.app.state.ctx.signing_key
    return {"keys": [{"algorithm": "ed25519", "public_key": key.public_b64, "fingerprint": key.fingerprint}]}
