"""One page of machines, filtered and sorted in the database (the dashboard's machine list).

Lists that load every row to show fifty do not scale (oVirt VM Portal #1368 at ~500 VMs): here
the filters and the order are SQL, the page is LIMIT/OFFSET, the total is one COUNT. Only the
distinct tree paths (one row per folder, not per machine) are matched in Python, to pick the site,
cluster and pool segments exactly.

Filters (all optional, combined with AND):
- `site`, `cluster`, `pool`: the 1st, 2nd, 3rd segment of the machine's tree path;
  `folder`: a tree path, the machine placed there or below;
- `state`: the stored state (discovered, held, approved, booting, configured, degraded), or
  `offline`: the machine's last agent report is older than `offline_before` (an ISO time);
- `image`, `version`: what the machine's agent last reported running;
- `mac`: a whole or partial MAC in any notation; `label`: `KEY` (present) or `KEY=VALUE`;
- `text`: part of the name, hostname or serial.
Sort keys: id, name, hostname, state, group, last_seen, image, version; `-key` is descending.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Integer, and_, cast, exists, func, or_, select

from netslate.errors import UserError
from netslate.inventory.idents import LABEL_KEY_RE, LABEL_VALUE_RE, shown
from netslate.inventory.store import STATES, machine_dict
from netslate.store.models import Machine, MachineMac

MAX_LIMIT = 500
FILTERS = ("site", "cluster", "pool", "folder", "state", "image", "version", "mac", "label", "text")


def _fleet(key: str):
    return Machine.status["fleet"][key]


SORTS: dict[str, Any] = {
    "id": Machine.id,
    "name": Machine.name,
    "hostname": Machine.hostname,
    "state": Machine.state,
    "group": Machine.tree_path,
    "last_seen": Machine.last_seen,
    "image": _fleet("image").as_string(),
    "version": cast(_fleet("version").as_string(), Integer),
}


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _segments_match(path: str, site: str | None, cluster: str | None, pool: str | None) -> bool:
    parts = [p for p in path.split("/") if p]
    for i, want in enumerate((site, cluster, pool)):
        if want and (len(parts) <= i or parts[i] != want):
            return False
    return True


def _where(s, filters: dict[str, Any], offline_before: str | None) -> list:
    conds: list = []
    site, cluster, pool = filters.get("site"), filters.get("cluster"), filters.get("pool")
    if site or cluster or pool:
        paths = [p for p in s.scalars(select(Machine.tree_path).distinct()) if _segments_match(p or "/", site, cluster, pool)]
        conds.append(Machine.tree_path.in_(paths) if paths else Machine.id < 0)
    folder = filters.get("folder")
    if folder:
        folder = "/" + folder.strip("/")
        if folder != "/":
            conds.append(or_(Machine.tree_path == folder, Machine.tree_path.like(_like(folder) + "/%", escape="\\")))
    state = filters.get("state")
    if state:
        if state == "offline":
            received = _fleet("received_at").as_string()
            conds.append(and_(received.is_not(None), received < (offline_before or "")))
        elif state in STATES:
            conds.append(Machine.state == state)
        else:
            raise UserError(f"unknown state {shown(state)}: choose one of {', '.join(STATES + ('offline',))}")
    if filters.get("image"):
        conds.append(_fleet("image").as_string() == filters["image"])
    version = filters.get("version")
    if version not in (None, ""):
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise UserError(f"version must be a number, not {shown(str(version))}") from None
        conds.append(cast(_fleet("version").as_string(), Integer) == number)
    mac = filters.get("mac")
    if mac:
        raw = re.sub(r"[^0-9a-f]", "", str(mac).lower())
        if not raw or len(raw) > 12:
            raise UserError(f"MAC filter {shown(str(mac))}: give hex digits of a MAC (any notation)")
        pattern = "%" + ":".join(raw[i:i + 2] for i in range(0, len(raw), 2)) + "%"
        if len(raw) % 2:  # an odd digit count can straddle a colon: match the hex with colons removed
            pattern = "%" + raw + "%"
            column = func.replace(MachineMac.mac, ":", "")
        else:
            column = MachineMac.mac
        conds.append(exists().where(MachineMac.machine_id == Machine.id, column.like(pattern)))
    label = filters.get("label")
    if label:
        key, sep, value = str(label).partition("=")
        if not LABEL_KEY_RE.match(key) or (sep and not LABEL_VALUE_RE.match(value)):
            raise UserError(f"label filter {shown(str(label))}: give KEY or KEY=VALUE")
        if sep:
            conds.append(Machine.labels[key].as_string() == value)
        else:
            conds.append(Machine.labels[key].as_string().is_not(None))
    text = filters.get("text")
    if text:
        pat = "%" + _like(str(text)[:128]) + "%"
        conds.append(or_(Machine.name.like(pat, escape="\\"), Machine.hostname.like(pat, escape="\\"),
                         Machine.serial.like(pat, escape="\\")))
    return conds


def search_machines(ctx, filters: dict[str, Any] | None = None, sort: str = "id", offset: int = 0, limit: int = 50,
                    offline_before: str | None = None) -> tuple[int, list[dict]]:
    """(how many machines match, the machines of this page) — see the module's docstring."""
    filters = {k: v for k, v in (filters or {}).items() if v not in (None, "")}
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise UserError(f"unknown filter {unknown[0]!r}: use {', '.join(FILTERS)}")
    key = sort.lstrip("-") or "id"
    if key not in SORTS:
        raise UserError(f"unknown sort {shown(sort)}: use {', '.join(SORTS)} (with - for descending)")
    if not 1 <= limit <= MAX_LIMIT:
        raise UserError(f"limit must be between 1 and {MAX_LIMIT}")
    if offset < 0:
        raise UserError("offset must not be negative")
    column = SORTS[key]
    order = [column.desc() if sort.startswith("-") else column.asc(), Machine.id.desc() if sort.startswith("-") else Machine.id.asc()]
    with ctx.db.session() as s:
        conds = _where(s, filters, offline_before)
        total = s.scalar(select(func.count()).select_from(Machine).where(*conds)) or 0
        rows = s.scalars(select(Machine).where(*conds).order_by(*order).offset(offset).limit(limit))
        return total, [machine_dict(m) for m in rows]


def machines_per_path(ctx) -> dict[str, int]:
    """Tree path → how many machines are placed exactly there (one GROUP BY)."""
    with ctx.db.session() as s:
        return {p or "/": n for p, n in s.execute(select(Machine.tree_path, func.count()).group_by(Machine.tree_path))}
