"""The desktop lifecycle as a pure state machine (no I/O).

provisioning → ready → assigned → in_use → logged_off → resetting → ready
any live state → error → quarantine (with a reason); any state → destroying.
`unknown` is what a desktop becomes when its host cannot be reached; it is never deleted for that.
"""

from __future__ import annotations

PROVISIONING = "provisioning"
READY = "ready"
ASSIGNED = "assigned"
IN_USE = "in_use"
LOGGED_OFF = "logged_off"
RESETTING = "resetting"
ERROR = "error"
QUARANTINE = "quarantine"
DESTROYING = "destroying"
UNKNOWN = "unknown"

STATES = (PROVISIONING, READY, ASSIGNED, IN_USE, LOGGED_OFF, RESETTING, ERROR, QUARANTINE, DESTROYING, UNKNOWN)

# States in which a desktop belongs to a user (a claim). A claim ends when the desktop is destroyed.
CLAIMED = frozenset({ASSIGNED, IN_USE, LOGGED_OFF})
# States in which netslate expects a running domain on the host.
RUNNING = frozenset({READY, ASSIGNED, IN_USE, LOGGED_OFF})

TRANSITIONS: dict[str, frozenset[str]] = {
    PROVISIONING: frozenset({READY, ASSIGNED, ERROR, DESTROYING, UNKNOWN}),  # assigned: made for a waiting user
    READY: frozenset({ASSIGNED, RESETTING, ERROR, DESTROYING, UNKNOWN}),
    ASSIGNED: frozenset({IN_USE, LOGGED_OFF, RESETTING, READY, ERROR, DESTROYING, UNKNOWN}),
    IN_USE: frozenset({LOGGED_OFF, RESETTING, ERROR, DESTROYING, UNKNOWN}),
    # persistent desktops go back to their user (assigned) or the pool (ready) without a reset
    LOGGED_OFF: frozenset({IN_USE, RESETTING, ASSIGNED, READY, ERROR, DESTROYING, UNKNOWN}),
    RESETTING: frozenset({READY, ASSIGNED, ERROR, DESTROYING, UNKNOWN}),
    ERROR: frozenset({QUARANTINE, RESETTING, DESTROYING, READY, ASSIGNED}),  # persistent: restarted as it was
    QUARANTINE: frozenset({RESETTING, DESTROYING}),
    DESTROYING: frozenset(),
    # a host came back: the desktop returns to what it was (or is reset / destroyed)
    UNKNOWN: frozenset({PROVISIONING, READY, ASSIGNED, IN_USE, LOGGED_OFF, RESETTING, ERROR, DESTROYING}),
}


class IllegalTransition(Exception):
    def __init__(self, current: str, target: str):
        super().__init__(f"a desktop cannot go from {current} to {target}")
        self.current = current
        self.target = target


def can(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def check(current: str, target: str) -> str:
    """Return `target` if the move is allowed, else raise IllegalTransition."""
    if current not in TRANSITIONS:
        raise IllegalTransition(current, target)
    if target not in STATES or not can(current, target):
        raise IllegalTransition(current, target)
    return target


def after_logoff(persistent: bool, dedicated: bool) -> str:
    """Where a desktop goes once its logoff grace period is over."""
    if not persistent:
        return RESETTING
    return ASSIGNED if dedicated else READY


def after_reset(dedicated: bool, user: str | None) -> str:
    """A reset desktop of a dedicated pool stays its user's; a floating one returns to the pool."""
    return ASSIGNED if dedicated and user else READY
