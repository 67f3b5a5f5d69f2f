"""Validation of names that end up in paths, URLs, scripts and XML."""

import re

from netslate.errors import UserError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


def check_name(value: str, what: str = "name") -> str:
    """Accept `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`; refuse `/`, `..`, control characters and the rest."""
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        shown = value.encode("unicode_escape").decode("ascii") if isinstance(value, str) else repr(value)
        raise UserError(
            f"invalid {what} {shown!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..'"
        )
    return value
