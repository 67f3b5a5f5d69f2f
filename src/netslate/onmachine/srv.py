"""RFC 2782 server selection: the one weighted-choice function of netslate.

The agent orders the SRV records it gets from DNS with it (`agent/dnssrv.py`), and the server's
discovery part orders the `locate` answer with it (`discovery/core.py`), so both draw the same way.
Standard library only.
"""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

R = TypeVar("R")

NO_SERVICE_TARGETS = ("", ".")  # RFC 2782: target "." means "decidedly not available here"


def usable(record) -> bool:
    """False for a record whose target is "." (kept as "" once the trailing dot is stripped).
    Records without a `target` attribute (discovery's entries) are always usable."""
    return getattr(record, "target", None) not in NO_SERVICE_TARGETS


def rfc2782_order(records: Sequence[R], rng=None) -> list[R]:
    """The order in which to try `records` (anything with integer `.priority` and `.weight`, and
    optionally `.target`), following RFC 2782:

    - records with target "." are dropped (no service there); every other record appears once;
    - lowest priority first, and a priority is never mixed with another;
    - within one priority, repeatedly: put the not yet ordered records in random order with the
      weight-0 records first, draw a uniform number between 0 and the sum of their weights
      (inclusive), take the first record whose running sum of weights reaches it. Weight-0 records
      thus have a small chance (1 in sum + 1) to come first when others have weight, and take
      turns in random order when all weights are 0. When no weight-0 record is left, the draw
      starts at 1, so each record comes next with probability exactly weight / sum (the RFC's 0
      would favour the first record by one draw).

    `rng` is a `random.Random` (or the `random` module, the default); a seeded one gives the
    same order every time. Negative weights count as 0. The input is not modified."""
    rng = random if rng is None else rng
    by_prio: dict[int, list[R]] = {}
    for r in records:
        if usable(r):
            by_prio.setdefault(int(r.priority), []).append(r)
    out: list[R] = []
    for prio in sorted(by_prio):
        pool = [(max(0, int(r.weight)), r) for r in by_prio[prio]]
        rng.shuffle(pool)  # "any order"
        pool.sort(key=lambda wr: wr[0] != 0)  # stable: weight 0 first, the rest stay shuffled
        while pool:
            total = sum(w for w, _ in pool)
            low = 0 if pool[0][0] == 0 else 1
            pick = rng.randint(low, total) if total else 0
            running = 0
            for i, (w, r) in enumerate(pool):
                running += w
                if running >= pick:
                    out.append(r)
                    del pool[i]
                    break
    return out
