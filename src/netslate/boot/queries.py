"""The boot path's database reads, in two dialects.

On SQLite (what `netslate serve` runs) the hot reads go through plain sqlite3 on one autocommit,
read-only connection per thread: no ORM or Core overhead per boot request. Any other database gets
the same reads through SQLAlchemy Core. Everything else (the snapshot's rules, profiles, pins,
policies and site subnets, explain's and pxelinux's reads) is read through SQLAlchemy: it runs only
when the fingerprint moves or on an operator's request.

The fingerprint: anything that can change a script moves one of its numbers (boot_state.generation,
the image library's newest tag event and version, the inventory generation, the discovery part's
subnets).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading

from sqlalchemy import bindparam, func, inspect, select, text

from netslate import inventory
from netslate import inventory
from netslate.boot import store as bstore
from netslate.boot.decide import MachineRow
from netslate.boot.models import BootPin, BootPolicy, BootProfile
from netslate.boot.rules import CompiledRules
from netslate.discovery.core import SubnetMap
from netslate.store.models import Machine, MachineMac

log = logging.getLogger("netslate.boot")

M = Machine.__table__
MM = MachineMac.__table__
_MACHINE_COLS = (M.c.id, M.c.uuid, M.c.serial, M.c.manufacturer, M.c.product, M.c.labels, M.c.approved, M.c.tree_path, M.c.state)
Q_BY_MAC = select(*_MACHINE_COLS).select_from(MM.join(M, MM.c.machine_id == M.c.id)).where(MM.c.mac == bindparam("mac"))
Q_BY_UUID = select(*_MACHINE_COLS).where(M.c.uuid == bindparam("uuid"))
SQL_FINGERPRINT = (
    "SELECT (SELECT generation FROM boot_state WHERE id = 1),"
    f" {inventory.GENERATION_SQL},"  # machines added, approved, labelled, placed, removed
    " (SELECT MAX(id) FROM image_tag_events),"
    " (SELECT MAX(id) FROM image_versions),"
    " (SELECT COUNT(*) FROM image_versions)"
)
# Sites by client subnet come from the discovery part; its edits must move the fingerprint too.
SQL_FINGERPRINT_SUBNETS = ", (SELECT COUNT(*) FROM discovery_subnets), (SELECT MAX(id) FROM discovery_subnets)"
SQL_BY_MAC = ("SELECT m.id, m.uuid, m.serial, m.manufacturer, m.product, m.labels, m.approved, m.tree_path, m.state"
              " FROM machine_macs mm JOIN machines m ON m.id = mm.machine_id WHERE mm.mac = ?")
SQL_BY_UUID = "SELECT id, uuid, serial, manufacturer, product, labels, approved, tree_path, state FROM machines WHERE uuid = ?"
# assignment(): the machine row, its address (site hint) and its first MAC in sorted order, in one read.
Q_ASSIGN = select(
    *_MACHINE_COLS, M.c.ip_address,
    select(func.min(MM.c.mac)).where(MM.c.machine_id == M.c.id).scalar_subquery(),
).where(M.c.id == bindparam("id"))
SQL_ASSIGN = ("SELECT m.id, m.uuid, m.serial, m.manufacturer, m.product, m.labels, m.approved, m.tree_path, m.state,"
              " m.ip_address, (SELECT MIN(mm.mac) FROM machine_macs mm WHERE mm.machine_id = m.id)"
              " FROM machines m WHERE m.id = ?")
Q_SUBNETS = text("SELECT n.cidr, s.name FROM discovery_subnets n JOIN discovery_sites s ON s.id = n.site_id")


def machine_row(row, key: tuple | None = None) -> MachineRow:
    """The first nine columns of a machine read (labels as JSON text on raw SQLite)."""
    labels = json.loads(row[5]) if isinstance(row[5], str) else (row[5] or {})
    return MachineRow(row[0], row[1], row[2], row[3], row[4], labels, bool(row[6]), row[7], row[8], key)


class BootReader:
    def __init__(self, ctx):
        self.ctx = ctx
        self.has_subnets = False
        try:
            self.has_subnets = inspect(ctx.db.reader).has_table("discovery_subnets")
        except Exception as exc:  # no discovery: sites come from labels only
            log.warning("boot: no site subnets (%s)", exc)
        self.fp_sql = SQL_FINGERPRINT + (SQL_FINGERPRINT_SUBNETS if self.has_subnets else "")
        self.fp_query = text(self.fp_sql)
        url = str(ctx.db.url)
        self.sqlite_path = url[len("sqlite:///"):] if url.startswith("sqlite:///") and len(url) > 10 else None
        self._local = threading.local()

    def _sqlite(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            # One autocommit read connection per thread: every SELECT sees the latest commit.
            c = sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA busy_timeout=30000")
            c.execute("PRAGMA query_only=1")
            self._local.conn = c
        return c

    # ------------------------------------------------------------ hot path

    def fingerprint_and_machine(self, mac: str | None, uuid: str | None) -> tuple[tuple, MachineRow | None]:
        """The boot request's only database work: the fingerprint and the machine row (by MAC, then UUID)."""
        if self.sqlite_path:
            c = self._sqlite()
            fp = tuple(c.execute(self.fp_sql).fetchone())
            row = c.execute(SQL_BY_MAC, (mac,)).fetchone() if mac else None
            if row is None and uuid:
                row = c.execute(SQL_BY_UUID, (uuid,)).fetchone()
            return fp, machine_row(row, tuple(row)) if row is not None else None
        with self.ctx.db.read_connection() as conn:
            return tuple(conn.execute(self.fp_query).one()), self._machine(conn, mac, uuid)

    def assignment_row(self, machine_id: int) -> tuple[tuple, tuple | None]:
        """(fingerprint, row) for assignment: machine columns + ip_address + first MAC. The row is
        hashable (labels as JSON text) so it can key a cache."""
        if self.sqlite_path:
            c = self._sqlite()
            fp = tuple(c.execute(self.fp_sql).fetchone())
            row = c.execute(SQL_ASSIGN, (int(machine_id),)).fetchone()
            return fp, (tuple(row) if row is not None else None)
        with self.ctx.db.read_connection() as conn:
            fp = tuple(conn.execute(self.fp_query).one())
            row = conn.execute(Q_ASSIGN, {"id": int(machine_id)}).first()
        return fp, None if row is None else tuple(json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in row)

    # ------------------------------------------------------------ snapshot and operator reads

    def fingerprint(self) -> tuple:
        with self.ctx.db.read_connection() as conn:
            return tuple(conn.execute(self.fp_query).one())

    def machine(self, mac: str | None, uuid: str | None) -> MachineRow | None:
        with self.ctx.db.read_connection() as conn:
            return self._machine(conn, mac, uuid)

    def _machine(self, conn, mac: str | None, uuid: str | None) -> MachineRow | None:
        row = conn.execute(Q_BY_MAC, {"mac": mac}).first() if mac else None
        if row is None and uuid:
            row = conn.execute(Q_BY_UUID, {"uuid": uuid}).first()
        return machine_row(row) if row is not None else None

    def first_mac(self, machine_id: int) -> str | None:
        with self.ctx.db.read_connection() as conn:
            return conn.execute(select(func.min(MM.c.mac)).where(MM.c.machine_id == machine_id)).scalar()

    def boot_tables(self) -> tuple[CompiledRules, dict[str, dict], dict[int, tuple[str, int]], dict[str, dict]]:
        """The active rules (compiled), profiles, pins and policies."""
        with self.ctx.db.read_session() as s:
            st = bstore.boot_state(s)
            rules = CompiledRules(bstore.load_rules(s, "active"), st.active_version)
            profiles = {p.name: bstore.profile_dict(p) for p in s.scalars(select(BootProfile))}
            pins = {p.machine_id: (p.image, p.version) for p in s.scalars(select(BootPin))}
            policies = {p.site: bstore.policy_dict(p) for p in s.scalars(select(BootPolicy))}
        return rules, profiles, pins, policies

    def subnets(self) -> SubnetMap | None:
        """Client subnet → site, from the discovery part (None without subnets)."""
        if not self.has_subnets:
            return None
        try:
            with self.ctx.db.read_connection() as conn:
                rows = conn.execute(Q_SUBNETS).all()
            return SubnetMap([(c, n) for c, n in rows]) if rows else None
        except Exception as exc:
            log.warning("boot: cannot load site subnets: %s", exc)
            return None

    def machines_with_macs(self) -> list[tuple[MachineRow, list[str]]]:
        """Every machine and its MACs (sorted), for the pxelinux.cfg files."""
        with self.ctx.db.read_connection() as conn:
            rows = conn.execute(select(*_MACHINE_COLS).order_by(M.c.id)).all()
            macs: dict[int, list[str]] = {}
            for mid, mac in conn.execute(select(MM.c.machine_id, MM.c.mac).order_by(MM.c.mac)):
                macs.setdefault(mid, []).append(mac)
        return [(machine_row(r), macs.get(r[0], [])) for r in rows]
