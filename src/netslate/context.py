"""Everything a process needs to work on one netslate installation: data dir, database, signing key.

Both the server and the local CLI build one `Context`; nothing else opens the database or keys.
"""

import fcntl
import os
from functools import cached_property
from pathlib import Path

from netslate.crypto.keys import SigningKey, load_or_create
from netslate.errors import UserError
from netslate.settings import make_private_dir, resolve_data_dir, tighten
from netslate.store.db import Database


class Context:
    def __init__(self, data_dir: str | os.PathLike | None = None, database_url: str | None = None,
                 database_read_url: str | None = None):
        self.data_dir: Path = resolve_data_dir(data_dir)
        self.database_url = database_url or os.environ.get("NETSLATE_DATABASE_URL")
        # A branch server's local standby (issue 15, docs/sites.md); writes go to database_url.
        self.database_read_url = database_read_url or os.environ.get("NETSLATE_DATABASE_READ_URL") or None
        self._initialised = False

    def init(self) -> "Context":
        """Create the data directory, migrate the database and create the signing key, once."""
        if self._initialised:
            return self
        try:
            make_private_dir(self.data_dir)  # 0700: the database and keys are nobody else's (issue 11 #5)
        except PermissionError:
            raise UserError(f"cannot create data directory {self.data_dir}: permission denied (set --data-dir or NETSLATE_DATA_DIR)") from None
        lock_path = self.data_dir / ".init.lock"
        tighten(lock_path)
        with open(os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.db.migrate()
            _ = self.signing_key
        self._initialised = True
        return self

    @cached_property
    def db(self) -> Database:
        return Database.for_data_dir(self.data_dir, self.database_url, self.database_read_url)

    @cached_property
    def outbox(self):
        """The durable telemetry outbox of a branch server (None without a standby)."""
        from netslate.store.outbox import Outbox

        return Outbox(self.data_dir / "outbox.db") if self.db.has_replica else None

    @cached_property
    def signing_key(self) -> SigningKey:
        return load_or_create(self.data_dir / "keys")

    @cached_property
    def chunks(self):
        from netslate.images.chunkstore import ChunkStore

        return ChunkStore(self.data_dir / "chunks")

    @cached_property
    def library(self):
        from netslate.images.library import Library

        return Library(self)
