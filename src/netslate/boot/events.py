"""Boot events and last-seen times, committed in batches by one background thread.

Every script served is an event; writing it on the request path would cost a transaction per boot,
so the engine queues it here and a thread commits whatever arrived every `interval` seconds.
`flush()` waits for everything queued so far (event listings, tests, shutdown).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time

from sqlalchemy import insert

from netslate import inventory
from netslate.boot.models import BootEvent
from netslate.store import outbox

log = logging.getLogger("netslate.boot")


class EventWriter:
    """Commits boot events and last-seen times in batches from one background thread."""

    def __init__(self, ctx, interval: float = 0.2, max_batch: int = 5000):
        self.ctx, self.interval, self.max_batch = ctx, interval, max_batch
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def put(self, event: dict) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="boot-events", daemon=True)
                self._thread.start()
        self.q.put(event)

    def flush(self, timeout: float = 10) -> bool:
        """Wait until everything queued so far is committed (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()
                self._idle.wait(min(left, 0.5))
        return True

    def _run(self) -> None:
        # Wake up on a timer and drain, rather than per event: a per-event wake-up would fight the
        # request threads for the GIL on every boot.
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            batch = []
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                continue
            for attempt in range(3):
                try:
                    self._write(batch)
                    break
                except Exception as exc:  # the database is busy or gone: retry, then drop loudly
                    log.error("writing %d boot events failed (try %d): %s", len(batch), attempt + 1, exc)
                    time.sleep(0.5 * (attempt + 1))
            with self._lock:
                self._pending -= len(batch)
                self._idle.notify_all()

    def _write(self, batch: list[dict]) -> None:
        # through the outbox: a branch server cut off from the central primary queues the batch (issue 15)
        outbox.submit(self.ctx, "boot.events", {"events": batch})


@outbox.handler("boot.events", mergeable=True)
def write_events(ctx, payload: dict) -> None:
    """One batch of boot events and the machines' last-seen times, in one transaction."""
    batch = [dict(e, at=dt.datetime.fromisoformat(e["at"]) if isinstance(e["at"], str) else e["at"])
             for e in payload["events"]]
    last_seen: dict[int, dt.datetime] = {}
    for e in batch:
        if e["machine_id"] is not None:
            last_seen[e["machine_id"]] = e["at"]
    with ctx.db.session() as s:
        s.execute(insert(BootEvent.__table__), batch)
        inventory.mark_seen(s, last_seen)
