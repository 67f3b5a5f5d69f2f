"""A branch server's durable telemetry outbox (issue 15 §1, docs/sites.md).

Telemetry (boot events, discoveries, facts, agent reports and heartbeats, desktop session events)
goes through `submit(ctx, kind, payload)`:
- without a standby (SQLite, one PostgreSQL) it is the part's own function, called at once, as before;
- on a branch server every event gets a unique id, and is applied on the central primary in one
  transaction with a row in `sites_outbox_applied` (that id as primary key): the primary applies
  an event id at most once;
- when the primary is out of reach (or older events still wait), the event is appended to
  DATA/outbox.db (SQLite, synchronous=FULL: on disk before the request is answered), and the
  `Replayer` thread applies the queue in order when the primary is back, one transaction per
  batch (`drain`): the batch's ids marked in one insert that also tells which were applied
  already, boot events merged into one insert, agent reports through their kind's batch handler
  (machines loaded at once, one UPDATE per machine), other kinds one by one, each step in a
  savepoint (`_plan` says what order is kept). An event applied before the link died but not yet
  removed here is skipped by its id: nothing lost, nothing counted twice. An event the primary
  refuses on replay (its machine was removed meanwhile, ...) is kept in `sites_outbox_applied`
  with the reason; a failed merged or batched step is retried event by event, so one bad event
  refuses only itself.

A part registers how to apply its kind with `@handler("kind")`; the handler calls the part's own
functions, whose `ctx.db.session()` joins the replay's transaction (`Database.joined`).
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Boolean, DateTime, Float, Integer, String, Text, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Mapped, mapped_column

from netslate.store.db import _TELEMETRY, Base, CentralUnreachable, _is_disconnect, utcnow
from netslate.settings import make_private_dir, make_private_file

log = logging.getLogger("netslate.outbox")

HANDLERS: dict[str, Callable[[Any, dict], Any]] = {}
# Kinds whose queued payloads merge into one handler call on replay: {"events": [...]} lists.
MERGEABLE: set[str] = set()
# Kinds with a handler that applies many queued payloads at once (in order) and answers, per
# payload, None (applied) or why it was refused: `fn(ctx, payloads) -> list[str | None]`.
BATCH_HANDLERS: dict[str, Callable[[Any, list[dict]], list]] = {}
MERGE_MAX = 5000  # boot events per merged insert
BATCH_MAX = 2000  # payloads per batch-handler call
# The modules that register handlers (imported by name before a replay, like store.registry's models).
HANDLER_MODULES = ("netslate.boot.events", "netslate.inventory.store", "netslate.fleet.reports",
                   "netslate.desktops.allocation")


def load_handlers() -> None:
    for name in HANDLER_MODULES:
        importlib.import_module(name)


class Queued(dict):
    """What `submit` answers for an event it put in the outbox (a dict, so callers can answer it)."""


class OutboxApplied(Base):
    """Events (by their unique id) the primary has applied: a replay never applies one twice."""

    __tablename__ = "sites_outbox_applied"
    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    origin: Mapped[str] = mapped_column(String(63), default="")
    queued_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    applied_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    outcome: Mapped[str] = mapped_column(Text, default="applied")  # applied | refused: REASON


class ServerStatus(Base):
    """What each branch server last said about itself at central: read-only, lag, outbox."""

    __tablename__ = "sites_server_status"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    lag_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    outbox_pending: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


def publish_status(ctx, name: str) -> None:
    """Write this branch server's replica status at central (the Replayer, every few seconds)."""
    st = ctx.db.replica_status()
    if st is None:
        return
    row = {"name": name[:63], "read_only": st["read_only"], "lag_seconds": st.get("lag_seconds"),
           "outbox_pending": ctx.outbox.pending() if ctx.outbox is not None else 0, "updated_at": utcnow()}
    stmt = pg_insert(ServerStatus.__table__).values(**row)
    stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={k: stmt.excluded[k] for k in row if k != "name"})
    token = _TELEMETRY.set(True)
    try:
        with ctx.db.session() as s:
            if s.get_bind() is ctx.db.read_engine:
                return
            s.execute(stmt)
    finally:
        _TELEMETRY.reset(token)


def server_states(ctx) -> dict[str, dict]:
    """name → {read_only, replication_lag_s, outbox_pending, status_age_s} as each branch server
    last reported it (servers without a standby have no row)."""
    now = utcnow()
    with ctx.db.session() as s:
        return {r.name: {"read_only": r.read_only, "replication_lag_s": r.lag_seconds, "outbox_pending": r.outbox_pending,
                         "status_age_s": round((now - r.updated_at).total_seconds(), 1)}
                for r in s.scalars(select(ServerStatus))}


def handler(kind: str, mergeable: bool = False):
    """Register how to apply events of `kind` (in the part that owns the data). `mergeable`: the
    payload is {"events": [...]} and a replay may apply several queued payloads in one call."""

    def deco(fn):
        HANDLERS[kind] = fn
        if mergeable:
            MERGEABLE.add(kind)
        return fn

    return deco


def batch_handler(kind: str):
    """Register how to apply many queued events of `kind` at once on replay (beside its `handler`,
    which stays the one-event path and the fallback). Kinds with a batch handler or `mergeable`
    must commute with one another (see `_plan`)."""

    def deco(fn):
        BATCH_HANDLERS[kind] = fn
        return fn

    return deco


def _origin() -> str:
    return (os.environ.get("NETSLATE_SERVER_NAME") or os.uname().nodename.split(".")[0])[:63]


class Outbox:
    """Append-only SQLite queue in the data directory; one writer lock, fsync on every append."""

    def __init__(self, path):
        self.path = path
        make_private_dir(Path(path).parent)
        make_private_file(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                           "id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, queued_at REAL NOT NULL, payload TEXT NOT NULL)")

    def append(self, kind: str, payload: dict, event_id: str | None = None) -> str:
        event_id = event_id or str(uuid.uuid4())
        body = json.dumps(payload, default=_json_default, separators=(",", ":"))
        with self._lock:
            self._conn.execute("INSERT INTO events (id, kind, queued_at, payload) VALUES (?, ?, ?, ?)",
                               (event_id, kind, time.time(), body))
        return event_id

    def append_many(self, events: list[tuple[str, dict]]) -> None:
        """Several events in one fsync'd transaction (benchmarks, tests)."""
        now = time.time()
        rows = [(str(uuid.uuid4()), k, now, json.dumps(p, default=_json_default, separators=(",", ":"))) for k, p in events]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT INTO events (id, kind, queued_at, payload) VALUES (?, ?, ?, ?)", rows)
            self._conn.execute("COMMIT")

    def pending(self) -> int:
        """Events waiting. Read from the file, not a counter: `serve --workers N` runs N processes
        over one outbox (appends get consecutive seqs and deletes take a prefix, so max - min + 1)."""
        with self._lock:
            lo, hi = self._conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
        return 0 if lo is None else hi - lo + 1

    def oldest(self) -> float | None:
        with self._lock:
            row = self._conn.execute("SELECT min(queued_at) FROM events").fetchone()
        return row[0] if row else None

    def peek(self, limit: int) -> list[tuple[int, str, str, float, dict]]:
        with self._lock:
            rows = self._conn.execute("SELECT seq, id, kind, queued_at, payload FROM events ORDER BY seq LIMIT ?",
                                      (limit,)).fetchall()
        return [(seq, eid, kind, at, json.loads(body)) for seq, eid, kind, at, body in rows]

    def remove_through(self, seq: int) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM events WHERE seq <= ?", (seq,))

    def status(self) -> dict:
        oldest = self.oldest()
        return {"pending": self.pending(), "bytes": _size(self.path),
                "oldest": dt.datetime.fromtimestamp(oldest, dt.timezone.utc).isoformat() if oldest else None}

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _size(path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.path.getsize(f"{path}{suffix}")
        except OSError:
            pass
    return total


def _json_default(value):
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot queue {type(value).__name__}")


_MARK_MANY = text(
    "INSERT INTO sites_outbox_applied (event_id, kind, origin, queued_at, applied_at, outcome) "
    "SELECT e, k, :origin, q, :now, 'applied' "
    "FROM unnest(CAST(:ids AS varchar[]), CAST(:kinds AS varchar[]), CAST(:queued AS timestamp[])) AS t(e, k, q) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id")


def _mark_applied_many(s, rows: list[tuple[int, str, str, float, dict]]) -> set[str]:
    """Mark a batch's ids applied in one statement (three arrays, whatever the batch size: no
    multi-row VALUES to build); returns the ids that were new, i.e. not applied before."""
    ids, kinds, queued = [], [], []
    for _seq, eid, kind, at, _p in rows:
        ids.append(eid)
        kinds.append(kind)
        queued.append(dt.datetime.fromtimestamp(at, dt.timezone.utc).replace(tzinfo=None) if at else None)
    res = s.execute(_MARK_MANY, {"origin": _origin(), "now": utcnow(), "ids": ids, "kinds": kinds, "queued": queued})
    return {r[0] for r in res}


def _plan(rows: list, new: set[str]) -> list[tuple[str, str, list[tuple[str, dict]]]]:
    """The steps that apply a batch's new events: (mode, kind, [(event id, payload), ...]).

    Order: a kind that is neither mergeable nor batched (a discovery, facts, a desktop session
    event) is a barrier, applied alone in its place. Between two barriers the events are grouped
    by kind, in order of each kind's first event, and keep their queue order inside the kind.
    That regrouping is safe because the kinds it moves past one another touch different rows,
    except machines.last_seen, which both boot events and reports only ever move forward. So a
    machine's reports are applied in queue order, its boot events are inserted in queue order,
    and whatever follows a barrier sees what preceded it."""
    steps: list[tuple[str, str, list[tuple[str, dict]]]] = []
    segment: dict[str, list[tuple[str, dict]]] = {}

    def flush():
        for kind, items in segment.items():
            if kind in MERGEABLE:
                chunk: list[tuple[str, dict]] = []
                size = 0
                for item in items:
                    n = len(item[1]["events"])
                    if chunk and size + n > MERGE_MAX:
                        steps.append(("merged", kind, chunk))
                        chunk, size = [], 0
                    chunk.append(item)
                    size += n
                if chunk:
                    steps.append(("merged", kind, chunk))
            else:
                for k in range(0, len(items), BATCH_MAX):
                    steps.append(("batch", kind, items[k:k + BATCH_MAX]))
        segment.clear()

    for _seq, eid, kind, _at, payload in rows:
        if eid not in new:
            continue
        if kind in MERGEABLE or kind in BATCH_HANDLERS:
            segment.setdefault(kind, []).append((eid, payload))
        else:
            flush()
            steps.append(("one", kind, [(eid, payload)]))
    flush()
    return steps


def _mark_applied(s, event_id: str, kind: str, queued_at: float | None) -> bool:
    """Insert the event's id; False when the primary has it already (a replay of an applied event)."""
    row = {"event_id": event_id, "kind": kind, "origin": _origin(), "applied_at": utcnow(),
           "queued_at": dt.datetime.fromtimestamp(queued_at, dt.timezone.utc).replace(tzinfo=None) if queued_at else None,
           "outcome": "applied"}
    stmt = pg_insert(OutboxApplied.__table__).values(**row).on_conflict_do_nothing(index_elements=["event_id"])
    return s.execute(stmt.returning(OutboxApplied.event_id)).first() is not None


def submit(ctx, kind: str, payload: dict) -> Any:
    """Apply one telemetry event now, or queue it durably when the central primary is away.
    Returns the handler's answer, or a `Queued` dict ({"queued": True, "event_id": ...})."""
    apply = HANDLERS[kind]
    db, box = ctx.db, ctx.outbox
    if box is None:
        return apply(ctx, payload)
    if db.down_since is not None or box.pending():
        # away, or older events still wait: this one goes behind them (order is kept)
        return Queued(queued=True, event_id=box.append(kind, payload))
    event_id = str(uuid.uuid4())
    token = _TELEMETRY.set(True)
    try:
        with db.session() as s:
            if s.get_bind() is db.read_engine:  # the primary went away just now: the session is the standby's
                raise CentralUnreachable(db.down_since or time.time())
            _mark_applied(s, event_id, kind, None)
            with db.joined(s):
                return apply(ctx, payload)
    except CentralUnreachable:
        return Queued(queued=True, event_id=box.append(kind, payload, event_id))
    except Exception as exc:
        if _is_disconnect(exc):
            db._mark_down(exc)
            return Queued(queued=True, event_id=box.append(kind, payload, event_id))
        raise
    finally:
        _TELEMETRY.reset(token)


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__


def _refuse(s, kind: str, refused: dict[str, list[str]]) -> None:
    """Keep why the primary refused these events (reason → event ids), beside their applied mark."""
    for reason, eids in refused.items():
        for k in range(0, len(eids), 1000):
            s.execute(OutboxApplied.__table__.update().where(OutboxApplied.event_id.in_(eids[k:k + 1000]))
                      .values(outcome=f"refused: {reason[:500]}"))
        log.warning("outbox: %d %s event(s) refused by the primary: %s", len(eids), kind, reason)


def _attempt(ctx, s, fn):
    """Run `fn()` in a savepoint of the replay's transaction (the parts' own sessions join it): on a
    refusal nothing of it stays. A lost primary is raised; any other error is returned."""
    nested = s.begin_nested()
    try:
        with ctx.db.joined(s):
            result = fn()
        if nested.is_active:
            nested.commit()
        return result, None
    except Exception as exc:
        if nested.is_active:
            nested.rollback()
        if _is_disconnect(exc) or isinstance(exc, CentralUnreachable):
            raise
        return None, exc


def _apply_step(ctx, s, mode: str, kind: str, items: list[tuple[str, dict]], out: dict) -> None:
    refused: dict[str, list[str]] = {}
    if mode == "merged":
        merged = {"events": [e for _eid, p in items for e in p["events"]]}
        _res, err = _attempt(ctx, s, lambda: HANDLERS[kind](ctx, merged))
        if err is None:
            out["applied"] += len(items)
            return
        if len(items) == 1:
            refused[_reason(err)] = [items[0][0]]
            out["refused"] += 1
            _refuse(s, kind, refused)
            return
        mode = "one"  # one bad payload must not take the others with it: each on its own
    elif mode == "batch":
        outcomes, err = _attempt(ctx, s, lambda: BATCH_HANDLERS[kind](ctx, [p for _eid, p in items]))
        if err is None:
            for (eid, _p), why in zip(items, outcomes):
                if why is None:
                    out["applied"] += 1
                else:
                    refused.setdefault(why, []).append(eid)
                    out["refused"] += 1
            _refuse(s, kind, refused)
            return
        log.warning("outbox: batch of %d %s event(s) failed (%s); applying them one by one", len(items), kind, _reason(err))
        mode = "one"
    for eid, payload in items:
        _res, err = _attempt(ctx, s, lambda payload=payload: HANDLERS[kind](ctx, payload))
        if err is None:
            out["applied"] += 1
        else:
            refused.setdefault(_reason(err), []).append(eid)
            out["refused"] += 1
    _refuse(s, kind, refused)


def drain(ctx, batch: int = 2000, budget: float = 30.0) -> dict:
    """Apply queued events to the primary in order until the outbox is empty, the primary goes
    away or `budget` seconds pass. Returns {"applied", "duplicates", "refused", "left"}.

    One transaction per batch of `batch` events: their ids marked applied in one multi-row insert
    (which also answers which ids the primary had already: those are skipped), then the steps of
    `_plan`: merged boot-event inserts, batch handlers (reports), and the other kinds one by one,
    each in a savepoint. The batch leaves the outbox only after its transaction committed."""
    db, box = ctx.db, ctx.outbox
    out = {"applied": 0, "duplicates": 0, "refused": 0, "left": box.pending() if box else 0}
    if box is None:
        return out
    load_handlers()
    deadline = time.monotonic() + budget
    token = _TELEMETRY.set(True)
    try:
        while box.pending() and time.monotonic() < deadline:
            rows = box.peek(batch)
            if not rows:
                break
            missing = sorted({kind for _, _, kind, _, _ in rows if kind not in HANDLERS})
            if missing:
                log.error("outbox: no handler for %s yet; replay waits", ", ".join(missing))
                break
            counts = {"applied": 0, "duplicates": 0, "refused": 0}
            try:
                with db.session() as s:
                    if s.get_bind() is db.read_engine:
                        break  # the primary is away
                    new = _mark_applied_many(s, rows)
                    counts["duplicates"] = len(rows) - len(new)
                    for mode, kind, items in _plan(rows, new):
                        _apply_step(ctx, s, mode, kind, items, counts)
            except CentralUnreachable:
                break
            except Exception as exc:
                if _is_disconnect(exc):
                    db._mark_down(exc)
                    break
                raise
            box.remove_through(rows[-1][0])
            for k, v in counts.items():
                out[k] += v
    finally:
        _TELEMETRY.reset(token)
    out["left"] = box.pending()
    return out


def applied_count(ctx) -> int:
    with ctx.db.session() as s:
        return s.scalar(select(func.count()).select_from(OutboxApplied)) or 0


class Replayer:
    """The background thread of a branch server: probes the primary while it is away (every
    `interval` seconds, which lifts the read-only state) and drains the outbox when it is back."""

    def __init__(self, ctx, interval: float = 1.0, name: str | None = None, status_every: float = 5.0):
        self.ctx, self.interval = ctx, interval
        self.name = name or _origin()
        self.status_every = status_every
        self._status_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: dict = {}
        self.error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="netslate-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        db = self.ctx.db
        while not self._stop.wait(self.interval):
            try:
                if db.down_since is not None and not db.probe_primary():
                    continue
                if self.ctx.outbox.pending():
                    self.last = drain(self.ctx)
                if time.monotonic() - self._status_at >= self.status_every:
                    publish_status(self.ctx, self.name)
                    self._status_at = time.monotonic()
                self.error = None
            except Exception as exc:  # keep going: health shows it
                self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.error("outbox replay: %s", self.error)

    def live_status(self) -> dict:
        """This server's own state now, for `server list` answered by this server."""
        st = self.ctx.db.replica_status() or {}
        return {"read_only": st.get("read_only"), "replication_lag_s": st.get("lag_seconds"),
                "outbox_pending": self.ctx.outbox.pending(), "status_age_s": 0.0}

    def health(self) -> dict:
        """/healthz: the branch's read-only state, replication lag and the outbox (ok while reads work)."""
        status = self.ctx.db.replica_status() or {}
        box = self.ctx.outbox.status()
        ok = status.get("standby_error") is None and self.error is None
        return {"ok": ok, **status, "outbox": box, "replay_error": self.error}
