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

A branch server (issue 15, docs/sites.md) has two PostgreSQL connections: `read_url`, its site's
hot standby, and `url`, the central primary (the one writer):
- `read_session()` reads from the standby: boot scripts, bundles, locate, DNS, manifests. After
  this process wrote (an admin action), reads go to the primary until the standby has replayed that
  write (its WAL position), so an admin action always reads its own writes.
- `session()` uses the primary. When the primary cannot be reached (connect_timeout,
  tcp_user_timeout, statement_timeout bound every attempt), the server turns read-only: a read-only
  `session()` runs on the standby, and every write fails at once with `CentralUnreachable`
  ("central site unreachable: this server is read-only since HH:MM", HTTP 503). Telemetry is not
  lost: it goes to the durable outbox (`netslate.store.outbox`).
- Without `read_url` (SQLite, or one PostgreSQL) nothing of this exists: one engine, as before.
"""

import contextvars
import datetime as dt
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from netslate.errors import Conflict, Unavailable, UserError
from netslate.settings import DATABASE_FILE, make_private_file, tighten

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
log = logging.getLogger("netslate.store")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, ""))
    except ValueError:
        return default


# A branch server's bounds on every attempt to reach the central primary (seconds).
CENTRAL_CONNECT_TIMEOUT = _env_float("NETSLATE_CENTRAL_CONNECT_TIMEOUT", 3)
CENTRAL_STATEMENT_TIMEOUT = _env_float("NETSLATE_CENTRAL_STATEMENT_TIMEOUT", 15)
# While the primary is away, sessions do not try it again before this many seconds (the outbox
# thread of `netslate serve` probes it every second and lifts the read-only state at once).
CENTRAL_RETRY_AFTER = _env_float("NETSLATE_CENTRAL_RETRY_AFTER", 10)
# At start, how long a server on a standby waits for the schema it needs.
SCHEMA_WAIT = _env_float("NETSLATE_SCHEMA_WAIT", 60)


class CentralUnreachable(Unavailable):
    """A write on a branch server whose central primary is out of reach (HTTP 503, CLI exit 2)."""

    def __init__(self, since: float):
        self.since = since
        super().__init__(f"central site unreachable: this server is read-only since {time.strftime('%H:%M', time.localtime(since))}")


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


_REVISION_LINE = re.compile(r"(revision|down_revision)\s*(?::[^=]*)?=\s*(.+?)\s*")  # one whole line
_QUOTED = re.compile(r"['\"]([^'\"]+)['\"]")


def _file_heads() -> set[str]:
    """The head revisions, read from the migration files' `revision` / `down_revision` lines: what
    Alembic's ScriptDirectory.get_heads() says, without importing Alembic. If it ever disagrees,
    `migrate` just takes the Alembic path."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for f in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for line in f.read_text().splitlines():
            if m := _REVISION_LINE.fullmatch(line):
                (revisions if m[1] == "revision" else parents).update(_QUOTED.findall(m[2]))
    return revisions - parents


def _stamped(engine: Engine) -> set[str] | None:
    """The revisions recorded in alembic_version; None when there is no such table yet."""
    try:
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}
    except sa_exc.DBAPIError:
        return None


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
    def __init__(self, url: str, read_url: str | None = None):
        self.url = url
        self.read_url = read_url or None
        if self.read_url and not (url.startswith("postgresql") and self.read_url.startswith("postgresql")):
            raise UserError("a read URL (a standby) needs PostgreSQL for both the read and the write URL")
        kwargs: dict = {}
        db_file = sqlite_path(url)
        if db_file is not None and db_file.parent.is_dir():
            private_sqlite_files(db_file)
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        elif self.read_url:
            kwargs["connect_args"] = _bounded_libpq(CENTRAL_CONNECT_TIMEOUT, CENTRAL_STATEMENT_TIMEOUT)
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = _engine(url, kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.read_engine: Engine | None = None
        self._read_sessions = None
        if self.read_url:
            self.read_engine = _engine(self.read_url, {"pool_pre_ping": True,
                                                       "connect_args": _bounded_libpq(CENTRAL_CONNECT_TIMEOUT, 0)})
            self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
            event.listen(self.engine, "before_cursor_execute", _note_write)
        self._ambient: contextvars.ContextVar[Session | None] = contextvars.ContextVar(f"netslate_ambient_{id(self)}", default=None)
        self._state = threading.Lock()
        self.down_since: float | None = None  # the primary is out of reach since (epoch seconds)
        self.down_error: str | None = None
        self._last_attempt = 0.0
        self._pending_lsn: str | None = None  # our newest write the standby may not have replayed yet

    @classmethod
    def for_data_dir(cls, data_dir: Path, url: str | None = None, read_url: str | None = None) -> "Database":
        return cls(url or f"sqlite:///{Path(data_dir) / DATABASE_FILE}", read_url)

    @property
    def has_replica(self) -> bool:
        return self.read_engine is not None

    # ------------------------------------------------------------ schema

    def _heads(self) -> set[str]:  # Alembic's own answer; `_file_heads` is the quick one
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        return set(ScriptDirectory.from_config(cfg).get_heads())

    @staticmethod
    def _current(engine: Engine) -> set[str]:
        from alembic.runtime.migration import MigrationContext

        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())

    def migrate(self) -> None:
        """Bring the schema to the newest revision of every part (Alembic `upgrade heads`).

        With a standby (a branch server): migrations run only on the primary; then, or when the
        primary is out of reach, the server waits (SCHEMA_WAIT seconds) until the standby has
        replayed the schema this version needs, and refuses to start with one clear line if not."""
        if self.read_engine is None:
            try:
                self._migrate_primary()
            except sa_exc.OperationalError as exc:
                if _is_disconnect(exc):  # one line, not SQLAlchemy's paragraph
                    raise Unavailable(f"cannot reach the database: {_first_line(exc)}") from None
                raise
            return
        from alembic import command
        from alembic.config import Config

        heads = self._heads()
        try:
            if self._current(self.engine) != heads:
                self._upgrade(command, Config)
        except sa_exc.OperationalError as exc:
            if not _is_disconnect(exc):
                raise
            self._mark_down(exc)
            log.warning("central primary out of reach at start: %s", _first_line(exc))
        self.wait_for_schema(heads)

    def _migrate_primary(self) -> None:
        if _stamped(self.engine) == _file_heads():
            return  # current, known without importing Alembic (~0.3 s of every command's start, issue 14)
        from alembic import command
        from alembic.config import Config

        if self._current(self.engine) == self._heads():
            return  # already current: skip loading every model and migration
        self._upgrade(command, Config)

    def _upgrade(self, command, config_cls) -> None:
        cfg = config_cls()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL statement_timeout = 0")  # a migration may take long
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")

    def wait_for_schema(self, heads: set[str] | None = None, timeout: float | None = None) -> None:
        heads = heads or self._heads()
        timeout = SCHEMA_WAIT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        have: set[str] = set()
        error = None
        while True:
            try:
                have = self._current(self.read_engine)
                error = None
                if have == heads:
                    return
            except sa_exc.OperationalError as exc:
                error = _first_line(exc)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if error:
            raise UserError(f"the standby at the read URL does not answer ({error}); waited {timeout:g} s")
        missing = ", ".join(sorted(heads - have)) or "-"
        raise UserError(f"the standby has not got the schema this netslate needs (missing {missing}): run this "
                        f"version against the central primary first (it migrates there), then start the branch "
                        f"server again; waited {timeout:g} s")

    # ------------------------------------------------------------ sessions

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception. A unique-key
        violation is raised as `ConstraintConflict` (409). `write=True`: the write lock is taken
        at the start, so a read-modify-write cannot interleave with another writer.

        On a branch server whose primary is away: `write=True` raises `CentralUnreachable` at once,
        a plain session runs on the standby and raises it at its first write."""
        ambient = self._ambient.get()
        if ambient is not None:
            with self._joined(ambient, write):
                yield ambient
            return
        if self.read_engine is None:
            with self._transaction(self._sessions(), write) as s:
                yield s
            return
        s, standby = self._primary_or_standby(write)
        with self._transaction(s, write and not standby, standby=standby) as s:
            yield s

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A transaction that only reads: on a branch server the local standby (see the module
        doc: after our own writes the primary, until the standby caught up). Elsewhere `session()`."""
        ambient = self._ambient.get()
        if ambient is not None:
            with self._joined(ambient, False):
                yield ambient
            return
        if self.read_engine is None:
            with self._transaction(self._sessions(), False) as s:
                yield s
            return
        if self._pending_lsn is not None and self.down_since is None and not self._standby_has(self._pending_lsn):
            s, standby = self._primary_or_standby(False)
        else:
            s, standby = self._read_sessions(), True
        with self._transaction(s, False, standby=standby) as s:
            yield s

    @property
    def reader(self) -> Engine:
        """The engine reads go to: the standby on a branch server (the primary while our own
        newest write has not been replayed there yet), else the one engine."""
        if self.read_engine is None:
            return self.engine
        if self._pending_lsn is not None and self.down_since is None and not self._standby_has(self._pending_lsn):
            return self.engine
        return self.read_engine

    @contextmanager
    def read_connection(self):
        """A plain connection for fast read paths (boot fingerprints, bundles), from `reader`; the
        standby when the primary (asked for our own newest write) turns out to be away."""
        engine = self.reader
        try:
            conn = engine.connect()
        except sa_exc.DBAPIError as exc:
            if engine is not self.engine or self.read_engine is None or not _is_disconnect(exc):
                raise
            self._mark_down(exc)
            conn = self.read_engine.connect()
        with conn:
            yield conn

    @contextmanager
    def joined(self, s: Session) -> Iterator[Session]:
        """Every `session()`/`read_session()` opened in this context (this thread or task) joins
        `s` as a savepoint instead of opening its own transaction: the outbox replays an event and
        marks it applied in one transaction, through the parts' own functions."""
        token = self._ambient.set(s)
        try:
            yield s
        finally:
            self._ambient.reset(token)

    @contextmanager
    def _joined(self, s: Session, write: bool) -> Iterator[None]:
        if write:
            self._lock_for_write(s)
        nested = s.begin_nested()
        try:
            yield
        except BaseException:
            if nested.is_active:
                nested.rollback()
            raise
        else:
            if nested.is_active:
                nested.commit()

    @contextmanager
    def _transaction(self, s: Session, write: bool, standby: bool | None = None) -> Iterator[Session]:
        try:
            if write:
                self._lock_for_write(s)
            yield s
            wrote = standby is False and s.in_transaction() and s.connection().info.pop("netslate_wrote", False)
            s.commit()
            if wrote:
                self._after_primary_commit()
        except sa_exc.IntegrityError as exc:
            s.rollback()
            conflict = None if isinstance(exc, ConstraintConflict) else constraint_conflict(exc)
            if conflict is None:
                raise
            raise conflict from exc
        except sa_exc.DBAPIError as exc:
            _safe_rollback(s)
            if standby is True and _sqlstate(exc) == "25006":  # a write on the standby
                raise CentralUnreachable(self.down_since or time.time()) from None
            if standby is False and _is_disconnect(exc):
                self._mark_down(exc)
                raise CentralUnreachable(self.down_since or time.time()) from None
            raise
        except BaseException:
            _safe_rollback(s)
            raise
        finally:
            s.close()

    def _primary_or_standby(self, write: bool) -> tuple[Session, bool]:
        """A session on the primary, its connection checked out now (bounded); the standby when the
        primary is away and the session only reads."""
        if self.down_since is not None and time.monotonic() - self._last_attempt < CENTRAL_RETRY_AFTER:
            if write:
                raise CentralUnreachable(self.down_since)
            return self._read_sessions(), True
        s = self._sessions()
        try:
            s.connection()
        except sa_exc.DBAPIError as exc:
            s.close()
            if not _is_disconnect(exc):
                raise
            self._mark_down(exc)
            if write:
                raise CentralUnreachable(self.down_since) from None
            return self._read_sessions(), True
        if self.down_since is not None:
            self._mark_up()
        return s, False

    def _after_primary_commit(self) -> None:
        """Remember the primary's WAL position after a transaction that wrote (read-your-writes)."""
        if _TELEMETRY.get():
            return
        try:
            with self.engine.connect() as conn:
                lsn = conn.exec_driver_sql("SELECT pg_current_wal_lsn()::text").scalar()
        except sa_exc.DBAPIError:
            return
        self._pending_lsn = lsn

    def _standby_has(self, lsn: str) -> bool:
        try:
            with self.read_engine.connect() as conn:
                ok = conn.execute(text("SELECT pg_last_wal_replay_lsn() >= CAST(:l AS pg_lsn)"), {"l": lsn}).scalar()
        except sa_exc.DBAPIError:
            return True  # the standby is the one away: nothing better to read from it
        if ok and self._pending_lsn == lsn:
            self._pending_lsn = None
        return bool(ok)

    # ------------------------------------------------------------ the primary's reachability

    def _mark_down(self, exc: BaseException | None) -> None:
        with self._state:
            self._last_attempt = time.monotonic()
            self.down_error = _first_line(exc) if exc is not None else "unreachable"
            if self.down_since is None:
                self.down_since = time.time()
                log.error("central primary unreachable (%s): this server is read-only", self.down_error)

    def _mark_up(self) -> None:
        with self._state:
            if self.down_since is not None:
                log.warning("central primary reachable again after %.0f s", time.time() - self.down_since)
            self.down_since = None
            self.down_error = None

    def probe_primary(self) -> bool:
        """Try the primary once (bounded by the connect time-out); lifts or sets the read-only state."""
        if self.read_engine is None:
            return True
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa_exc.DBAPIError as exc:
            if _is_disconnect(exc):
                self._mark_down(exc)
                return False
            raise
        self._mark_up()
        return True

    def replica_status(self) -> dict | None:
        """Read-only state and replication lag of a branch server's standby (None without one)."""
        if self.read_engine is None:
            return None
        out: dict[str, Any] = {
            "read_only": self.down_since is not None,
            "read_only_since": (dt.datetime.fromtimestamp(self.down_since, dt.timezone.utc).isoformat()
                                if self.down_since is not None else None),
            "central_error": self.down_error,
            "standby": None, "lag_seconds": None, "receiver": None, "receive_lsn": None, "replay_lsn": None,
        }
        try:
            with self.read_engine.connect() as conn:
                row = conn.exec_driver_sql(
                    "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,"
                    " EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float8,"
                    " (SELECT status FROM pg_stat_wal_receiver LIMIT 1),"
                    " pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()").one()
        except sa_exc.DBAPIError as exc:
            out["standby_error"] = _first_line(exc)
            return out
        in_recovery, received, replayed, age, receiver, caught_up = row
        out.update(standby=bool(in_recovery), receive_lsn=received, replay_lsn=replayed, receiver=receiver)
        if in_recovery:
            # Streaming and everything received replayed: no lag (an idle primary writes nothing, so
            # the last replayed transaction's age is no lag). Otherwise: how old the newest data is.
            out["lag_seconds"] = 0.0 if receiver == "streaming" and caught_up else (round(age, 3) if age is not None else None)
        return out

    def _lock_for_write(self, s: Session) -> None:
        conn = s.connection()
        if conn.dialect.name == "sqlite":
            # pysqlite opens its own (deferred) transaction only before a DML statement; an explicit
            # BEGIN IMMEDIATE before any statement takes the write lock now (busy_timeout waits for it).
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})


# Set by the outbox around telemetry writes: they need no read-your-writes tracking.
_TELEMETRY: contextvars.ContextVar[bool] = contextvars.ContextVar("netslate_telemetry", default=False)


def _engine(url: str, kwargs: dict) -> Engine:
    try:
        return create_engine(url, future=True, **kwargs)
    except (ValueError, sa_exc.ArgumentError) as exc:
        # e.g. "user@a:5432,b:5432/db": SQLAlchemy reads one port; the URL itself may hold a password
        raise UserError(f"invalid database URL ({str(exc).splitlines()[0]}); several hosts: "
                        "postgresql+psycopg://USER@a,b/DB?target_session_attrs=read-write, or with ports "
                        "postgresql+psycopg://USER@/DB?host=a:5432&host=b:5432&target_session_attrs=read-write") from None


def _bounded_libpq(connect_timeout: float, statement_timeout: float) -> dict:
    """libpq parameters that bound every wait on a (remote) server: connect, a dead peer, a statement."""
    args: dict[str, Any] = {"connect_timeout": max(1, int(round(connect_timeout))), "keepalives": 1,
                            "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
                            "tcp_user_timeout": int(max(connect_timeout, 1) * 2000)}
    if statement_timeout:
        args["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
    return args


def _note_write(conn, _cursor, statement, _params, _context, _executemany) -> None:
    if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
        conn.info["netslate_wrote"] = True


def _sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def _is_disconnect(exc: BaseException) -> bool:
    """A connection that could not be made or died (not a query's own error)."""
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return False
    state = _sqlstate(exc)
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _safe_rollback(s: Session) -> None:
    try:
        s.rollback()
    except sa_exc.DBAPIError:
        pass  # the connection is gone: nothing to roll back
