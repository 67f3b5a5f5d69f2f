"""Wake long-polling bundle requests when something that can change a bundle happens.

In-process changes (API publish/promote/rollback/place) bump the notifier at once. Changes made
by another process (the local CLI, another server on the same database) are seen by one
background task per server that polls `config_state.serial` once a second.
"""

from __future__ import annotations

import asyncio

from netslate.config.models import ConfigState

POLL_SECONDS = 1.0


class Notifier:
    def __init__(self, ctx):
        self.ctx = ctx
        self.version = 0
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: asyncio.Task | None = None
        self._serial: int | None = None

    def _ensure(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._event = asyncio.Event()
            self._watcher = None
        if self._watcher is None or self._watcher.done():
            self._watcher = loop.create_task(self._watch())

    def _bump(self) -> None:
        self.version += 1
        if self._event is not None:
            self._event.set()
            self._event = asyncio.Event()

    def bump_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._bump)

    async def wait(self, seen: int, timeout: float) -> bool:
        """Wait until version moves past `seen` or `timeout` passes. True if it moved."""
        self._ensure()
        if self.version != seen:
            return True
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))
        except asyncio.TimeoutError:
            pass
        return self.version != seen

    def _read_serial(self) -> int:
        # the connection bundles are read from: on a branch server the standby, so a long-poll wakes
        # when the standby has replayed a publish (the primary's serial woke it before the bundle
        # could change, and the agent then waited its whole long-poll again)
        with self.ctx.db.read_session() as s:
            st = s.get(ConfigState, 1)
            return st.serial if st else 0

    async def _watch(self) -> None:
        while True:
            try:
                serial = await asyncio.to_thread(self._read_serial)
                if self._serial is not None and serial != self._serial:
                    self._bump()
                self._serial = serial
            except Exception:  # a busy or briefly unreachable database must not kill the watcher
                pass
            await asyncio.sleep(POLL_SECONDS)
