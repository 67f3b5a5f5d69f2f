"""Engine, sessions and migrations. Every change is one transaction (`with db.session() as s:`)."""

import datetime as dt
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

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
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()
