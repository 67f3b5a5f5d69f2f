"""The machines as config sees them, in one place: found with the inventory's one resolver,
placed and given credentials through the inventory (its only writer), and read for bundles with
two small Core queries (the per-request hot path). This is the only config module that touches
machines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from netslate import inventory
from netslate import inventory
from netslate.store.models import Machine, MachineMac

_M = Machine.__table__
_MM = MachineMac.__table__
_VIEW_COLS = [_M.c.id, _M.c.name, _M.c.hostname, _M.c.uuid, _M.c.serial, _M.c.manufacturer, _M.c.product, _M.c.labels,
              _M.c.tree_path, _M.c.ip_address, _M.c.status, _M.c.credential_sha256]


@dataclass
class MachineView:
    """The columns a bundle needs, read with two Core queries (the ORM costs ~5x more per request)."""

    id: int
    name: str | None
    hostname: str | None
    uuid: str | None
    serial: str | None
    manufacturer: str | None
    product: str | None
    labels: dict
    tree_path: str
    ip_address: str | None
    status: dict
    credential_sha256: str | None
    macs: list = field(default_factory=list)
    image_pin: dict | None = None  # what the boot side assigns it now, set by bundles.bundle()


def find(s: Session, ident: str | int) -> Machine:
    """The machine `ident` names (id, name, MAC, SMBIOS UUID or serial): the inventory's resolver."""
    return inventory.resolve(s, ident)


def view(conn, ident: str | int) -> MachineView:
    """A bundle's view of one machine (Core, read only). An id is read directly (agents ask by id);
    any other identifier goes through the inventory's resolver first."""
    text = str(ident).strip()
    row = conn.execute(select(*_VIEW_COLS).where(_M.c.id == int(text))).first() if text.isdigit() and len(text) <= 18 else None
    if row is None:
        with Session(bind=conn) as s:
            machine_id = inventory.resolve(s, text).id
        row = conn.execute(select(*_VIEW_COLS).where(_M.c.id == machine_id)).first()
    m = MachineView(*row)
    m.macs = [r[0] for r in conn.execute(select(_MM.c.mac).where(_MM.c.machine_id == m.id))]
    return m


def name_of(s: Session, machine_id: int) -> str | None:
    return s.scalar(select(Machine.name).where(Machine.id == machine_id))


def names(s: Session, ids: list[int]) -> dict[int, str | None]:
    return dict(s.execute(select(Machine.id, Machine.name).where(Machine.id.in_(ids))).all()) if ids else {}


def placements(s: Session) -> list[tuple[int, str | None, str]]:
    """(id, name, tree path) of every machine, by id."""
    return [tuple(r) for r in s.execute(select(Machine.id, Machine.name, Machine.tree_path).order_by(Machine.id))]


def tree_path_of(conn, machine_id: int) -> str | None:
    row = conn.execute(select(_M.c.tree_path).where(_M.c.id == machine_id)).first()
    return row[0] if row else None


def occupied_paths(s: Session) -> list[str]:
    return [p for (p,) in s.execute(select(Machine.tree_path).distinct())]


def set_tree_path(s: Session, m: Machine, path: str) -> str:
    """Place a machine found with `find` in this session (through the inventory); returns its previous path."""
    _, old = inventory.place(s, m, path)
    return old


def set_credential(s: Session, m: Machine, sha256: str) -> bool:
    """Store a machine's credential hash (through the inventory); True if it replaced one."""
    return inventory.set_credential(s, m, sha256)
