"""Signing (server side, `cryptography`) and verification (stdlib-only, usable on booting machines)."""
