"""Errors that reach the user as one clear line."""


class UserError(Exception):
    """A mistake the user can fix: bad input, unknown name, conflicting state. CLI exit code 2."""

    exit_code = 2


class NotFound(UserError):
    pass


class Conflict(UserError):
    pass


class IntegrityError(Exception):
    """Data failed verification (hash, signature, generation). Never used silently."""
