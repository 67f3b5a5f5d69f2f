"""Errors that reach the user as one clear line."""


class UserError(Exception):
    """A mistake the user can fix: bad input, unknown name, conflicting state. CLI exit code 2."""

    exit_code = 2


class NotFound(UserError):
    pass


class Conflict(UserError):
    pass


class Throttled(UserError):
    """Too many attempts (failed logins): the API answers 429 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 60):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class Unavailable(UserError):
    """A part of the installation is out of reach (a branch server cut off from the central site's
    database): the API answers 503, the CLI prints the one line and exits 2."""

    http_status = 503


class IntegrityError(Exception):
    """Data failed verification (hash, signature, generation). Never used silently."""
