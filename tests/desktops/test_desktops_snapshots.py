"""Snapshots of a persistent desktop as external qcow2 layers, with real guests writing real files."""

import re
import time

import pytest

from desktops_fixtures import wait_serial
from netslate.desktops import allocation, pools, snapshots
from netslate.desktops.actuator import Actuator
from netslate.errors import UserError


def written(text: str) -> str:
    return re.findall(r"NETSLATE-SCRATCH-WRITTEN=(\S+)", text)[-1]


def test_snapshot_revert_restores_content_and_rm_merges(dctx):
    pools.create_pool(dctx, "pers", "tiny", 1, 0, 1, 1, 128, "vnc", 0, False, "persistent", "dedicated",
                      "10.77.3.1-10.77.3.9", "*", "test")
    Actuator(dctx).reconcile("pers", wait=True)
    d = allocation.request_desktop(dctx, "pers", "frank")
    log = dctx.data_dir / "desktops" / "logs" / f"{d['name']}.log"
    snapshots.create(dctx, d["id"], "clean", "test")  # live, while the guest is still booting
    boot1 = wait_serial(dctx, d["name"], r"NETSLATE-SCRATCH-WRITTEN=\S+")
    assert "NETSLATE-SCRATCH-ABSENT" in boot1
    u1 = written(boot1)
    snapshots.create(dctx, d["id"], "after-first-boot", "test", note="has u1")
    assert [s["name"] for s in snapshots.list_snapshots(dctx, d["id"])] == ["clean", "after-first-boot"]

    snapshots.revert(dctx, d["id"], "clean", "test")  # restarts from the clean layer
    boot2 = wait_serial(dctx, d["name"], r"NETSLATE-SCRATCH-WRITTEN=\S+")
    assert "NETSLATE-SCRATCH-ABSENT" in boot2 and u1 not in boot2

    # deleting 'clean' merges it into the layers above (live into the running desktop); others still work
    snapshots.remove(dctx, d["id"], "clean", "test")
    assert [s["name"] for s in snapshots.list_snapshots(dctx, d["id"])] == ["after-first-boot"]
    snapshots.revert(dctx, d["id"], "after-first-boot", "test")
    boot3 = wait_serial(dctx, d["name"], r"NETSLATE-SCRATCH-WRITTEN=\S+")
    assert f"NETSLATE-SCRATCH-PRESENT={u1}" in boot3
    # the desktop kept its user and address: a single-desktop restore, the pool untouched
    after = allocation.show_desktop(dctx, d["id"])
    assert after["user"] == "frank" and after["ip"] == d["ip"] and after["state"] == "assigned"
    with pytest.raises(UserError):
        snapshots.revert(dctx, d["id"], "clean", "test")
    assert log.exists()


def test_snapshots_refused_for_non_persistent_desktops(dctx):
    pools.create_pool(dctx, "np", "tiny", 1, 0, 1, 1, 128, "vnc", 0, False, "none", "floating", "10.77.4.1-10.77.4.9",
                      "*", "test")
    Actuator(dctx).reconcile("np", wait=True)
    d = allocation.list_desktops(dctx, "np")[0]
    with pytest.raises(UserError, match="persistent"):
        snapshots.create(dctx, d["id"], "x", "test")


def test_scheduled_snapshots_are_taken_and_pruned(dctx):
    pools.create_pool(dctx, "sched", "tiny", 1, 0, 1, 1, 128, "vnc", 0, False, "persistent", "dedicated",
                      "10.77.10.1-10.77.10.9", "*", "test", snapshot_every_hours=1.0, snapshot_keep=2)
    with pytest.raises(UserError, match="needs --persistence persistent"):
        pools.create_pool(dctx, "bad", "tiny", 1, 0, 1, 1, 128, "vnc", 0, False, "none", "floating",
                          "10.77.11.1-10.77.11.9", "*", "test", snapshot_every_hours=1.0)
    eng = Actuator(dctx)
    eng.reconcile("sched", wait=True)
    d = allocation.list_desktops(dctx, "sched")[0]
    names = [s["name"] for s in snapshots.list_snapshots(dctx, d["id"])]
    assert len(names) == 1 and names[0].startswith("auto-")
    eng.reconcile("sched")  # not due again within the hour
    assert len(snapshots.list_snapshots(dctx, d["id"])) == 1
    pools.resize_pool(dctx, "sched", "test", snapshot_every_hours=0.0001)  # due every 0.36 s from now on
    for _ in range(3):
        time.sleep(0.5)
        eng.reconcile("sched")
    snaps = snapshots.list_snapshots(dctx, d["id"])
    assert len(snaps) == 2 and all(s["scheduled"] for s in snaps)  # pruned to keep=2
    assert names[0] not in [s["name"] for s in snaps]
    # the chain still works: the desktop runs on its latest layer and reverts to a kept snapshot
    snapshots.revert(dctx, d["id"], snaps[0]["name"], "test")
    assert allocation.show_desktop(dctx, d["id"])["state"] == "ready"
