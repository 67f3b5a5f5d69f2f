"""The machine facts config needs (id, name, tree path, credential hash, bundle facts), in one
place. Database edge over the inventory's machine tables: this is the only config module that
touches them, so moving to the inventory part's functions is a change here alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from netslate import inventory
from netslate.errors import NotFound
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


def _not_found(text: str) -> NotFound:
    return NotFound(f"no machine {text!r} (give its id, name or SMBIOS UUID)")


def find(s: Session, ident: str | int) -> Machine:
    """The machine named by any identifier the inventory resolves (id, name, MAC, SMBIOS UUID, serial)."""
    return inventory.resolve(s, ident)


def view(conn, ident: str | int) -> MachineView:
    """A bundle's view of one machine (Core, read only)."""
    text = str(ident)
    row = None
    if text.isdigit():  # agents ask by id: one indexed read
        row = conn.execute(select(*_VIEW_COLS).where(_M.c.id == int(text))).first()
    if row is None:
        with Session(bind=conn) as s:
            machine_id = inventory.resolve(s, text).id
        row = conn.execute(select(*_VIEW_COLS).where(_M.c.id == machine_id)).first()
    if row is None:
        raise _not_found(text)
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


def set_tree_path(m: Machine, path: str) -> str:
    """Place a machine found with `find` in this session (through the inventory); returns its previous path."""
    return inventory.place(object_session(m), m, path)[1]


def set_credential(m: Machine, sha256: str) -> bool:
    """Store a machine's credential hash; True if it replaced one."""
    return inventory.set_credential(object_session(m), m, sha256)
