"""Signed envelopes for the server side. The one implementation is the on-machine library's
`netslate.onmachine.envelope` (standard library only, shipped to machines); this module is where
server code imports it from."""

from netslate.onmachine.envelope import (  # noqa: F401 - the public names, re-exported
    SignatureError,
    canonical,
    fingerprint,
    open_envelope,
    parse_public_key,
    payload_digest,
)
