"""Ed25519 verification for the server side. The one implementation is the on-machine library's
`netslate.onmachine.ed25519` (pure Python, standard library only); signing uses `cryptography`
in `netslate.crypto.keys`."""

from netslate.onmachine.ed25519 import verify  # noqa: F401 - re-exported
