"""Login throttling: failed logins counted per user name and per client address, in the database
(so every worker of the server sees the same counts), over a sliding window.

While a key is over its limit every login for it is refused with 429, a correct password too:
otherwise the limit would only slow the guessing down.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, select

from netslate.errors import Throttled
from netslate.identity.models import LoginFailure
from netslate.store.db import utcnow

WINDOW_SECONDS = 300
PER_USER = 5  # failures per user name in the window
PER_ADDRESS = 20  # failures per client address in the window


def keys(user: str, address: str | None) -> list[tuple[str, int, str]]:
    out = [(f"user:{user.lower()[:300]}", PER_USER, f"for {user}")]
    if address:
        out.append((f"address:{address}", PER_ADDRESS, f"from {address}"))
    return out


def check(session, user: str, address: str | None, now: dt.datetime | None = None) -> None:
    now = now or utcnow()
    since = now - dt.timedelta(seconds=WINDOW_SECONDS)
    for key, limit, what in keys(user, address):
        count, oldest = session.execute(
            select(func.count(LoginFailure.id), func.min(LoginFailure.at)).where(LoginFailure.key == key, LoginFailure.at > since)
        ).one()
        if count >= limit:
            wait = int((oldest + dt.timedelta(seconds=WINDOW_SECONDS) - now).total_seconds()) + 1
            raise Throttled(f"too many failed logins {what}: try again in {wait} s", retry_after=wait)


def record_failure(session, user: str, address: str | None) -> None:
    now = utcnow()
    for key, _, _ in keys(user, address):
        session.add(LoginFailure(key=key, at=now))
    session.execute(delete(LoginFailure).where(LoginFailure.at < now - dt.timedelta(seconds=WINDOW_SECONDS)))


def clear_user(session, user: str) -> None:
    session.execute(delete(LoginFailure).where(LoginFailure.key == keys(user, None)[0][0]))
