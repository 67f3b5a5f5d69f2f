"""Engine, sessions and migrations. Every change is one transaction (`with db.session() as s:`).

Concurrent writers (issue 11 #4), handled here once for every part:
- A unique or foreign-key violation ends the transaction as `ConstraintConflict`: a `Conflict`
  (HTTP 409, CLI exit 2, one clear line) that is still a SQLAlchemy `IntegrityError`, so the retry
  loops that catch `IntegrityError` (version numbers, leases, addresses) keep working. Two
  requests that create the same site, token, rule, machine, ... at once: one wins, the other gets 409.
- `session(write=True)` takes the write lock when the transaction begins (SQLite `BEGIN
  IMMEDIATE`; PostgreSQL a transaction-scoped advisory lock), so its reads and its writes are
  serialized with every other such transaction. For read-modify-write where the last writer wins
  (a tag move, a policy, a config node) and for optimistic checks (`expect_revision`).
"""

import datetime as dt
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from netslate.errors import Conflict
from netslate.settings import make_private_file, tighten

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    pass


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite URL, None for in-memory databases and other engines."""
    if not url.startswith("sqlite:///"):
        return None
    raw = url[len("sqlite:///"):].split("?", 1)[0]
    return Path(raw) if raw and raw != ":memory:" else None


def private_sqlite_files(db_file: Path) -> None:
    """The database file is created 0600 before SQLite opens it (SQLite gives -wal and -shm the main
    file's mode); files made 0644 by older versions are tightened on every open."""
    make_private_file(db_file)
    for suffix in ("-wal", "-shm", "-journal"):
        tighten(db_file.with_name(db_file.name + suffix))


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


# PostgreSQL: the one advisory lock `session(write=True)` takes (any fixed 64-bit number).
WRITE_LOCK_KEY = 0x6E65_7473_6C61_7465 >> 1  # "netslate"


class ConstraintConflict(Conflict, sa_exc.IntegrityError):
    """A write lost to a concurrent one on a unique (or foreign) key: a 409, never a 500."""

    def __init__(self, message: str, cause: sa_exc.IntegrityError):
        sa_exc.IntegrityError.__init__(self, cause.statement, cause.params, cause.orig,
                                       hide_parameters=cause.hide_parameters, code=cause.code, ismulti=cause.ismulti)
        self.message = message

    def __str__(self) -> str:
        return self.message


_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (.+)")
_INSERT = re.compile(r"\s*INSERT\s+INTO\s+\"?(\w+)\"?\s*\(([^)]*)\)", re.IGNORECASE)
_PG_KEY = re.compile(r"Key \((.+?)\)=\((.*)\) already exists")


def constraint_conflict(err: sa_exc.IntegrityError) -> ConstraintConflict | None:
    """The `Conflict` a unique or foreign-key violation means; None for other integrity errors
    (NOT NULL, CHECK: a bug, left as it is)."""
    orig = err.orig
    text_ = str(orig)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    unique = _SQLITE_UNIQUE.search(text_)
    if unique or state == "23505" or "PRIMARY KEY" in text_:
        what = _what(err, unique.group(1) if unique else "", text_)
        return ConstraintConflict(f"{what} already exists: another request created it at the same time; nothing was changed", err)
    if "FOREIGN KEY constraint failed" in text_ or state == "23503":
        return ConstraintConflict("something this change refers to was removed at the same time by another request; nothing was changed", err)
    return None


def _what(err: sa_exc.IntegrityError, columns: str, text_: str) -> str:
    """`table.column 'value'` for the violated key, as far as the statement tells."""
    pg = _PG_KEY.search(text_)
    if pg:
        table = getattr(getattr(err.orig, "diag", None), "table_name", None) or "a row"
        return f"{table} ({pg.group(1)}) = ({pg.group(2)})"
    cols = [c.strip() for c in columns.split(",") if c.strip()]
    values: list[str] = []
    insert = _INSERT.match(err.statement or "")
    if insert and cols:
        names = [n.strip().strip('"') for n in insert.group(2).split(",")]
        params: Any = err.params
        if isinstance(params, (list, tuple)) and params and isinstance(params[0], (list, tuple, dict)):
            params = params[0]
        for col in cols:
            name = col.split(".")[-1]
            if isinstance(params, dict) and name in params:
                values.append(repr(params[name]))
            elif isinstance(params, (list, tuple)) and name in names and names.index(name) < len(params):
                values.append(repr(params[names.index(name)]))
    if not cols:
        return "this object"
    table = cols[0].split(".")[0] if "." in cols[0] else "a row"
    names = ", ".join(c.split(".")[-1] for c in cols)
    return f"{table} ({names}) = ({', '.join(values)})" if len(values) == len(cols) else f"{table} ({names})"


class Database:
    def __init__(self, url: str):
        self.url = url
        kwargs = {}
        db_file = sqlite_path(url)
        if db_file is not None and db_file.parent.is_dir():
            private_sqlite_files(db_file)
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, future=True, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def for_data_dir(cls, data_dir: Path, url: str | None = None) -> "Database":
        return cls(url or f"sqlite:///{Path(data_dir) / 'netslate.db'}")

    def migrate(self) -> None:
        """Bring the schema to the newest revision of every part (Alembic `upgrade heads`)."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = None
        heads = set(ScriptDirectory.from_config(cfg).get_heads())
        with self.engine.connect() as conn:
            if set(MigrationContext.configure(conn).get_current_heads()) == heads:
                return  # already current: skip loading every model and migration
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception. A unique-key
        violation is raised as `ConstraintConflict` (409). `write=True`: the write lock is taken
        at the start, so a read-modify-write cannot interleave with another writer."""
        s = self._sessions()
        try:
            if write:
                self._lock_for_write(s)
            yield s
            s.commit()
        except sa_exc.IntegrityError as exc:
            s.rollback()
            conflict = None if isinstance(exc, ConstraintConflict) else constraint_conflict(exc)
            if conflict is None:
                raise
            raise conflict from exc
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def _lock_for_write(self, s: Session) -> None:
        conn = s.connection()
        if conn.dialect.name == "sqlite":
            # pysqlite opens its own (deferred) transaction only before a DML statement; an explicit
            # BEGIN IMMEDIATE before any statement takes the write lock now (busy_timeout waits for it).
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
