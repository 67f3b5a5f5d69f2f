"""Everything a process needs to work on one netslate installation: data dir, database, signing key.

Both the server and the local CLI build one `Context`; nothing else opens the database or keys.
"""

import fcntl
import os
import threading
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from netslate.errors import UserError
from netslate.settings import DATABASE_FILE, make_private_dir, resolve_data_dir, tighten

if TYPE_CHECKING:
    from netslate.crypto.keys import SigningKey
    from netslate.store.db import Database


class Context:
    def __init__(self, data_dir: str | os.PathLike | None = None, database_url: str | None = None,
                 database_read_url: str | None = None):
        self.data_dir: Path = resolve_data_dir(data_dir)
        self.database_url = database_url or os.environ.get("NETSLATE_DATABASE_URL")
        # A branch server's local standby (issue 15, docs/sites.md); writes go to database_url.
        self.database_read_url = database_read_url or os.environ.get("NETSLATE_DATABASE_READ_URL") or None
        self._initialised = False
        self._open_on_first_use = False
        self._open_lock = threading.Lock()

    def init(self, lazily: bool = False) -> "Context":
        """Create the data directory, migrate the database and create the signing key, once.

        `lazily` (the local CLI): the data directory now, the rest on the first use of `db` or
        `signing_key` (a new data directory is opened at once all the same). Opening the database
        imports SQLAlchemy (~0.15 s), which `image import` does on another thread while it chunks
        its file (images/ingest.py)."""
        if self._initialised:
            return self
        try:
            make_private_dir(self.data_dir)  # 0700: the database and keys are nobody else's (issue 11 #5)
        except PermissionError:
            raise UserError(f"cannot create data directory {self.data_dir}: permission denied (set --data-dir or NETSLATE_DATA_DIR)") from None
        if lazily and (self.database_url or (self.data_dir / DATABASE_FILE).exists()):
            self._open_on_first_use = True
            return self
        return self._open()  # a new data directory: its database first, before an import can fill the disk

    def _open(self) -> "Context":
        with self._open_lock:  # two threads' first uses: one migrates, the other waits for it
            if not self._initialised:
                lock_path = self.data_dir / ".init.lock"
                tighten(lock_path)
                with open(os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # and other processes' (`serve` workers, CLIs)
                    self._database.migrate()
                    _ = self._signing_key
                self._initialised = True
                self._open_on_first_use = False
        return self

    @property
    def db(self) -> "Database":
        if self._open_on_first_use:
            self._open()
        return self._database

    @cached_property
    def _database(self) -> "Database":
        from netslate.store.db import Database

        return Database.for_data_dir(self.data_dir, self.database_url, self.database_read_url)

    @cached_property
    def outbox(self):
        """The durable telemetry outbox of a branch server (None without a standby)."""
        from netslate.store.outbox import Outbox

        return Outbox(self.data_dir / "outbox.db") if self.db.has_replica else None

    @property
    def signing_key(self) -> "SigningKey":
        if self._open_on_first_use:
            self._open()
        return self._signing_key

    @cached_property
    def _signing_key(self) -> "SigningKey":
        from netslate.crypto.keys import load_or_create

        key = load_or_create(self.data_dir / "keys")
        key.revocations = self.latest_revocations  # attached to bundles and locate answers (issue 15 §3)
        return key

    _KEY_TTL = 5.0  # seconds the revocation statement and the subnet map are reused

    def latest_revocations(self) -> dict | None:
        """The newest root-signed revocation statement (the `settings` row; replicated to branches)."""
        now = time.monotonic()
        hit = self.__dict__.get("_revocations_cache")
        if hit is None or now - hit[0] > self._KEY_TTL:
            from netslate.crypto import records  # noqa: PLC0415 - keeps `netslate` CLI start-up lean

            with self.db.read_session() as s:
                hit = (now, records.revocations(s))
            self.__dict__["_revocations_cache"] = hit
        return hit[1]

    def site_of(self, address: str | None) -> str | None:
        """The discovery site of an address (longest subnet match), None when unknown."""
        if not address:
            return None
        now = time.monotonic()
        hit = self.__dict__.get("_subnets_cache")
        if hit is None or now - hit[0] > self._KEY_TTL:
            from netslate.discovery import store as discovery  # noqa: PLC0415 - CLI start-up

            view = discovery.load_view(self, stale_after=0)
            hit = (now, view)
            self.__dict__["_subnets_cache"] = hit
        return hit[1].site_for(address)

    @cached_property
    def chunks(self):
        from netslate.images.chunkstore import ChunkStore

        return ChunkStore(self.data_dir / "chunks")

    @cached_property
    def library(self):
        from netslate.images.library import Library

        return Library(self)
