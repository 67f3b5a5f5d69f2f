"""The outbox replay in batches (issue 15 §1, docs/sites.md "The outbox"): a drain of a few
thousand mixed events (agent reports and heartbeats, boot events, a discovery and facts in the
middle) on a real PostgreSQL primary is exactly-once and in order, and leaves the database exactly
as the same events applied one by one, each through its own handler, leave a reference database.
Correctness only, no timing (bench/sites.py measures the drain)."""

import datetime as dt
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from netslate.context import Context
from nstest import free_port


PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1] if Path("/usr/lib/postgresql").exists() else None
N_MACHINES = 30
N_EVENTS = 3000
CRASHED = 1200  # applied on the primary before the "crash", still in the outbox after it
GONE = 7  # this machine's index: removed at central before the replay (its reports are refused)
# events happen after the machines were added (whose last_seen starts at their creation)
T0 = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0) + dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def postgres():
    assert PG_BIN is not None, "PostgreSQL server binaries missing: scripts/install-deps.sh installs postgresql"
    base = Path(tempfile.mkdtemp(prefix="netslate-pg-outbox-"))  # outside pytest's 0700 tree: the server runs as postgres
    os.chmod(base, 0o777)
    datadir = base / "cluster"
    port = free_port()
    run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(run_as + [str(PG_BIN / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run(run_as + [str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-l", str(base / "log"), "-w", "start",
                             "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"],
                   check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(run_as + [str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _mac(i: int) -> str:
    return f"52:54:00:16:{i // 256:02x}:{i % 256:02x}"


def _machines(ctx: Context) -> dict[str, int]:
    from netslate import inventory

    return {f"pc{i}": inventory.add_machine(ctx, [_mac(i)], name=f"pc{i}", actor="local:test")["id"]
            for i in range(N_MACHINES)}


def _events(ids: dict[str, int]) -> list[tuple[str, dict]]:
    """Reports (booting, configured, heartbeats; some with facts, some authenticated), boot events,
    in queue order with rising times; a discovery and a facts event in the middle (barriers)."""
    out: list[tuple[str, dict]] = []
    phases = ("booting", "configured", "heartbeat", "heartbeat", "heartbeat")
    for i in range(N_EVENTS):
        k = (i + i // N_MACHINES) % N_MACHINES  # every machine gets boot events and reports, interleaved
        mid = ids[f"pc{k}"]
        at = (T0 + dt.timedelta(seconds=i)).isoformat()
        if i == 1000:
            out.append(("inventory.discover", {"facts": {"mac": "52:54:00:16:ff:01", "uuid": None}, "remote": "10.0.0.9"}))
        elif i == 2000:
            out.append(("inventory.facts", {"machine_id": ids["pc3"], "facts": {"serial": "S-3", "product": "P"}}))
        elif i % 3 == 0:
            out.append(("boot.events", {"events": [
                {"at": at, "machine_id": mid, "mac": _mac(k), "kind": "image", "rule": "default", "profile": "desktop",
                 "image": "desk", "version": 1, "pinned": False, "remote": "10.0.0.1", "detail": f"seq {i}"}]}))
        else:
            phase = phases[(i // N_MACHINES) % len(phases)]
            body = {"phase": phase, "generation": i // 100, "sent_at": 1_777_000_000 + i, "uptime_s": 10 + i,
                    "config_source": "server"}
            if i % 7 == 0:
                body["facts"] = {"cpu": f"c{i}"}
            out.append(("fleet.report", {"machine_id": mid, "body": body, "authenticated": i % 11 == 0,
                                         "remote": f"10.0.1.{k}", "at": at}))
    return out


def _state(ctx: Context) -> dict:
    """What the events leave: every machine's row, the boot events and report audit rows in order."""
    from netslate.boot.models import BootEvent
    from netslate.store.models import AuditEntry, Machine, MachineMac

    with ctx.db.session() as s:
        macs = {m.machine_id: m.mac for m in s.scalars(select(MachineMac))}
        machines = {macs.get(m.id): {"state": m.state, "status": m.status, "last_seen": m.last_seen,
                                     "ip": m.ip_address, "serial": m.serial, "product": m.product}
                    for m in s.scalars(select(Machine))}
        boots = [(e.mac, e.detail, e.at) for e in s.scalars(select(BootEvent).order_by(BootEvent.id))]
        id_mac = macs
        audit = [(id_mac.get(int(a.target.split(":")[1])), a.detail["phase"], a.detail["generation"], a.detail["current"])
                 for a in s.scalars(select(AuditEntry).where(AuditEntry.action == "fleet.report").order_by(AuditEntry.id))]
    return {"machines": machines, "boots": boots, "audit": audit}


def _reference(tmp: Path, events: list[tuple[str, dict]]) -> dict:
    """The same events applied one by one through each kind's one-event handler (SQLite, no outbox),
    in one transaction, each event in its own savepoint like the replay; a refused one leaves nothing."""
    from netslate import inventory
    from netslate.store import outbox

    ctx = Context(tmp / "reference").init()
    ids = _machines(ctx)
    inventory.remove_machine(ctx, ids[f"pc{GONE}"], actor="local:test")
    outbox.load_handlers()
    refused = 0
    with ctx.db.session() as s:
        for kind, payload in events:
            nested = s.begin_nested()
            try:
                with ctx.db.joined(s):
                    outbox.HANDLERS[kind](ctx, payload)
                nested.commit()
            except Exception:
                nested.rollback()
                refused += 1
    return {**_state(ctx), "refused": refused}


def test_a_drain_of_thousands_is_exactly_once_in_order_and_as_one_by_one(postgres, tmp_path):
    from netslate import inventory
    from netslate.boot.models import BootEvent
    from netslate.store import outbox

    central = Context(tmp_path / "central", postgres).init()
    ids = _machines(central)
    events = _events(ids)
    inventory.remove_machine(central, ids[f"pc{GONE}"], actor="local:test")
    # a branch server's Context: an outbox, writes to the primary (reads too: the standby's side
    # is tests/sites/test_sites_store.py's)
    branch = Context(tmp_path / "branch", postgres, postgres).init()
    box = branch.outbox
    assert box is not None
    eids = [box.append(kind, payload) for kind, payload in events[:CRASHED]]
    first = outbox.drain(branch, batch=500, budget=600)
    assert first["left"] == 0 and first["duplicates"] == 0
    assert first["applied"] + first["refused"] == CRASHED
    # the crash case: the primary applied those, the outbox lost its deletes (all of them again, then the rest)
    for eid, (kind, payload) in zip(eids, events[:CRASHED]):
        box.append(kind, payload, event_id=eid)
    for kind, payload in events[CRASHED:]:
        box.append(kind, payload)
    assert box.pending() == N_EVENTS
    second = outbox.drain(branch, budget=600)
    assert second["left"] == 0
    assert second["duplicates"] == CRASHED
    assert second["applied"] + second["refused"] == N_EVENTS - CRASHED
    assert outbox.applied_count(central) == N_EVENTS

    got = _state(central)
    ref = _reference(tmp_path, events)
    # the removed machine's reports and boot events were refused, every other event applied once
    assert first["refused"] + second["refused"] == ref["refused"] > 0
    n_boot = sum(1 for kind, p in events if kind == "boot.events" and p["events"][0]["machine_id"] != ids[f"pc{GONE}"])
    assert len(got["boots"]) == n_boot
    # boot events in queue order
    seqs = [int(d.split()[1]) for _mac_, d, _at in got["boots"]]
    assert seqs == sorted(seqs)
    assert got["boots"] == ref["boots"]
    # report audit rows: one per non-heartbeat report, each machine's in queue order
    assert len(got["audit"]) == len(ref["audit"]) > 0
    for mac in {a[0] for a in ref["audit"]}:
        assert [a for a in got["audit"] if a[0] == mac] == [a for a in ref["audit"] if a[0] == mac]
    # every machine's row is what one-by-one application leaves: status (current report, history,
    # facts, unverified), state, last_seen, address, filled facts; the discovered machine exists once
    for side in (got, ref):  # discovered during the replay: last_seen is when, in each database
        side["machines"]["52:54:00:16:ff:01"].pop("last_seen")
    assert got["machines"] == ref["machines"]
    assert got["machines"][_mac(3)]["serial"] == "S-3"
    assert all("fleet" in m["status"] for mac, m in got["machines"].items() if mac.startswith("52:54:00:16:00:"))
    hist = got["machines"][_mac(1)]["status"]["fleet"]["history"]
    assert len(hist) > 1
    assert [h["received_at"] for h in hist] == sorted(h["received_at"] for h in hist)
    # refusals are kept with their reason
    from netslate.store.outbox import OutboxApplied

    with central.db.session() as s:
        reasons = list(s.scalars(select(OutboxApplied.outcome).where(OutboxApplied.outcome != "applied")))
        assert s.scalar(select(func.count()).select_from(BootEvent)) == n_boot
    assert len(reasons) == ref["refused"]
    assert any(r.startswith(f"refused: no machine id:{ids[f'pc{GONE}']}") for r in reasons)
