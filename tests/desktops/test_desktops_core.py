"""Pure core: the lifecycle state machine, reconcile decisions and domain XML (no I/O)."""

import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from netslate.desktops import domainxml
from netslate.desktops import reconcile as R
from netslate.desktops import states as S


# ---------- states ----------

def test_states_happy_path_cycle():
    path = [S.PROVISIONING, S.READY, S.ASSIGNED, S.IN_USE, S.LOGGED_OFF, S.RESETTING, S.READY]
    for a, b in zip(path, path[1:]):
        assert S.check(a, b) == b


@pytest.mark.parametrize("a,b", [
    (S.READY, S.IN_USE), (S.PROVISIONING, S.IN_USE), (S.DESTROYING, S.READY), (S.QUARANTINE, S.READY),
    (S.IN_USE, S.READY), (S.READY, "nonsense"), ("nonsense", S.READY), (S.ERROR, S.IN_USE),
])
def test_states_illegal_transitions_raise(a, b):
    with pytest.raises(S.IllegalTransition):
        S.check(a, b)


def test_states_error_goes_to_quarantine_and_everything_can_be_destroyed():
    assert S.can(S.ERROR, S.QUARANTINE)
    for st in S.STATES:
        if st != S.DESTROYING:
            assert S.can(st, S.DESTROYING), st


def test_states_after_logoff_and_reset():
    assert S.after_logoff(persistent=False, dedicated=False) == S.RESETTING
    assert S.after_logoff(persistent=True, dedicated=True) == S.ASSIGNED
    assert S.after_logoff(persistent=True, dedicated=False) == S.READY
    assert S.after_reset(dedicated=True, user="ann") == S.ASSIGNED
    assert S.after_reset(dedicated=False, user="ann") == S.READY


# ---------- reconcile ----------

def host(name="h1", reachable=True, mem=8192, free=8192, slots=4, domains=()):
    return R.HostObs(name, reachable, mem, free, 512, slots, frozenset(domains))


def pool(**kw):
    base = dict(name="p", size=2, spare=1, max=4, memory_mib=512, golden_version=1, hosts=("h1",), grace_seconds=60)
    base.update(kw)
    return R.PoolObs(**base)


def dsk(i, state=S.READY, host="h1", **kw):
    base = dict(id=i, name=f"ns-x-p-{i}", pool="p", host=host, state=state, memory_mib=512, golden_version=1, started_at=0.0)
    base.update(kw)
    return R.DesktopObs(**base)


def world(hosts, desktops=(), **kw):
    return R.World(hosts={h.name: h for h in hosts}, desktops=tuple(desktops), now=1000.0, **kw)


def kinds(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def test_reconcile_empty_pool_creates_size():
    acts = R.plan([pool()], world([host()]))
    assert len(kinds(acts, R.Create)) == 2


def test_reconcile_keeps_spare_above_claimed_within_max():
    ds = [dsk(1, S.IN_USE, user="a"), dsk(2, S.ASSIGNED, user="b")]
    h = host(domains={d.name for d in ds})
    acts = R.plan([pool()], world([h], ds))
    assert len(kinds(acts, R.Create)) == 1  # 2 claimed + 1 spare = 3
    ds += [dsk(3, S.IN_USE, user="c"), dsk(4, S.IN_USE, user="d")]
    h = host(domains={d.name for d in ds})
    assert kinds(R.plan([pool()], world([h], ds)), R.Create) == []  # max 4 reached


def test_reconcile_shrinks_only_unclaimed_ready():
    ds = [dsk(1, S.IN_USE, user="a"), dsk(2), dsk(3), dsk(4)]
    h = host(domains={d.name for d in ds})
    acts = R.plan([pool(size=1, spare=1)], world([h], ds))
    destroyed = {a.desktop_id for a in kinds(acts, R.Destroy)}
    assert destroyed == {3, 4}


def test_reconcile_throttles_per_host():
    h = host(slots=2)
    acts = R.plan([pool(size=5, max=5)], world([h]))
    assert len(kinds(acts, R.Create)) == 2
    # desktops still inside their boot window use the slots
    booting = [dsk(1, started_at=999.0), dsk(2, started_at=999.0)]
    h = host(slots=2, domains={d.name for d in booting})
    acts = R.plan([pool(size=5, max=5)], world([h], booting))
    assert kinds(acts, R.Create) == []


def test_reconcile_places_by_free_memory_and_skips_full_hosts():
    hs = [host("h1", free=2000), host("h2", free=6000), host("h3", free=100)]
    acts = R.plan([pool(size=3, max=3, hosts=("h1", "h2", "h3"))], world(hs))
    placed = [a.host for a in kinds(acts, R.Create)]
    assert placed.count("h3") == 0
    assert placed[0] == "h2"
    full = R.plan([pool(size=1, max=1, memory_mib=99999)], world([host()]))
    assert kinds(full, R.Blocked) and "MiB free" in kinds(full, R.Blocked)[0].reason


def test_reconcile_orphans():
    ds = [dsk(1)]
    h = host(domains={"ns-x-p-1", "ns-x-p-9"})
    acts = R.plan([pool(size=1, spare=0)], world([h], ds, disks=frozenset({"ns-x-p-1", "ns-x-p-7"}),
                                                  addresses=(("10.0.0.1", 1), ("10.0.0.2", None), ("10.0.0.3", 42))))
    assert [a.name for a in kinds(acts, R.DestroyOrphanDomain)] == ["ns-x-p-9"]
    assert [a.name for a in kinds(acts, R.DeleteOrphanDisk)] == ["ns-x-p-7"]
    assert sorted(a.ip for a in kinds(acts, R.ReleaseOrphanAddress)) == ["10.0.0.2", "10.0.0.3"]


def test_reconcile_unreachable_host_marks_unknown_and_never_destroys():
    ds = [dsk(1, S.IN_USE, user="a"), dsk(2)]
    acts = R.plan([pool(size=2, spare=0)], world([host(reachable=False)], ds))
    assert {(a.desktop_id, a.state) for a in kinds(acts, R.SetState)} == {(1, S.UNKNOWN), (2, S.UNKNOWN)}
    assert not kinds(acts, R.Destroy) and not kinds(acts, R.DestroyOrphanDomain)
    back = [dsk(1, S.UNKNOWN, prior_state=S.IN_USE, user="a")]
    acts = R.plan([pool(size=1, spare=0)], world([host(domains={"ns-x-p-1"})], back))
    assert kinds(acts, R.SetState)[0].state == S.IN_USE


def test_reconcile_logoff_grace_then_reset():
    pend = [dsk(1, S.LOGGED_OFF, user="a", logged_off_at=990.0)]
    h = host(domains={"ns-x-p-1"})
    assert not kinds(R.plan([pool(size=1, spare=0)], world([h], pend)), R.Reset)
    old = [dsk(1, S.LOGGED_OFF, user="a", logged_off_at=900.0)]
    assert kinds(R.plan([pool(size=1, spare=0)], world([h], old)), R.Reset)
    # persistent pools do not reset; the desktop goes back to its user (dedicated)
    acts = R.plan([pool(size=1, spare=0, persistent=True, dedicated=True)], world([h], old))
    assert not kinds(acts, R.Reset) and kinds(acts, R.SetState)[0].state == S.ASSIGNED


def test_reconcile_golden_rolls_through_ready_only():
    ds = [dsk(1, golden_version=1), dsk(2, S.IN_USE, user="a", golden_version=1)]
    h = host(domains={d.name for d in ds})
    acts = R.plan([pool(size=2, spare=0, golden_version=2)], world([h], ds))
    assert [a.desktop_id for a in kinds(acts, R.Reset)] == [1]


def test_reconcile_resumes_interrupted_work_and_quarantines_repeat_failures():
    ds = [dsk(1, S.PROVISIONING), dsk(2, S.RESETTING), dsk(3, S.DESTROYING), dsk(4, S.ERROR, failures=5, reason="boom"),
          dsk(5, S.ERROR, failures=1, reason="flaky")]
    acts = R.plan([pool(size=4, max=5)], world([host()], ds))
    assert kinds(acts, R.Provision)[0].desktop_id == 1
    assert {a.desktop_id for a in kinds(acts, R.Reset)} == {2, 5}
    assert kinds(acts, R.Destroy)[0].desktop_id == 3
    q = [a for a in kinds(acts, R.SetState) if a.state == S.QUARANTINE]
    assert q and q[0].desktop_id == 4 and q[0].reason == "boom"


def test_reconcile_missing_domain():
    ds = [dsk(1), dsk(2, S.IN_USE, user="a")]
    acts = R.plan([pool(size=2, spare=0)], world([host()], ds))
    assert {a.desktop_id for a in kinds(acts, R.Reset)} == {1, 2}
    acts = R.plan([pool(size=2, spare=0, persistent=True)], world([host()], ds))
    assert {a.desktop_id for a in kinds(acts, R.Start)} == {1, 2}


# ---------- domain XML ----------

def spec(**kw):
    base = dict(name="ns-x-p-1", uuid="0e4c2f3a-3d7e-4a61-9a9c-8a0a1f2b3c4d", vcpus=2, memory_mib=1024,
                disk_path="/d/disk.qcow2", mac="52:54:00:00:00:01", usb_redirect=3, smartcard=True,
                network="bridge:br0", spice_password="s", vnc_password="v",
                password_valid_to=dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), metadata={"pool": "p"})
    base.update(kw)
    return domainxml.DomainSpec(**base)


def test_domainxml_spice_desktop():
    root = ET.fromstring(domainxml.build(spec()))
    assert root.get("type") == "qemu"
    assert root.find("devices/disk/target").get("bus") == "virtio"
    assert root.find("devices/disk/driver").get("type") == "qcow2"
    assert root.find("devices/interface/model").get("type") == "virtio"
    assert root.find("devices/interface/source").get("bridge") == "br0"
    assert root.find("devices/video/model").get("type") == "qxl"
    assert len(root.findall("devices/redirdev[@type='spicevmc']")) == 3
    assert root.find("devices/controller[@type='usb']").get("model") == "qemu-xhci"
    assert root.find("devices/smartcard").get("type") == "spicevmc"
    g = [x.get("type") for x in root.findall("devices/graphics")]
    assert g == ["spice", "vnc"]
    assert root.find("devices/graphics[@type='vnc']").get("passwdValidTo") == "2030-01-02T03:04:05"
    assert domainxml.parse_metadata(domainxml.build(spec())) == {"pool": "p"}


def test_domainxml_vnc_only_kvm_virtio_gpu_and_escaping():
    x = domainxml.build(spec(display="vnc", domain_type="kvm", video="virtio", usb_redirect=0, smartcard=False,
                             disk_path="/d/a<b>&'\".qcow2", network="none"))
    root = ET.fromstring(x)
    assert root.get("type") == "kvm"
    assert [g.get("type") for g in root.findall("devices/graphics")] == ["vnc"]
    assert root.find("devices/video/model").get("type") == "virtio"
    assert root.find("devices/disk/source").get("file") == "/d/a<b>&'\".qcow2"
    assert root.find("devices/interface") is None and root.find("devices/redirdev") is None


def test_domainxml_direct_kernel_boot():
    root = ET.fromstring(domainxml.build(spec(kernel="/k", initrd="/i", cmdline="console=ttyS0")))
    assert root.find("os/kernel").text == "/k" and root.find("os/cmdline").text == "console=ttyS0"
    assert root.find("os/boot") is None


def test_reconcile_quarantined_count_against_max_only():
    ds = [dsk(1, S.QUARANTINE, reason="x"), dsk(2, S.QUARANTINE, reason="y")]
    acts = R.plan([pool(size=3, spare=0, max=4)], world([host()], ds))
    assert len(kinds(acts, R.Create)) == 2  # not 3: a failing image cannot eat the whole range


def test_reconcile_scheduled_snapshots_only_for_persistent_running_when_due():
    h = host(domains={"ns-x-p-1", "ns-x-p-2"})
    ds = [dsk(1, S.ASSIGNED, user="a", last_scheduled_snapshot=None),
          dsk(2, S.ASSIGNED, user="b", last_scheduled_snapshot=990.0)]
    p = pool(size=2, spare=0, persistent=True, dedicated=True, snapshot_every=60, snapshot_keep=3)
    snaps = kinds(R.plan([p], world([h], ds)), R.TakeSnapshot)
    assert [(a.desktop_id, a.keep) for a in snaps] == [(1, 3)]  # 2 had one 10 s ago
    assert not kinds(R.plan([pool(size=2, spare=0, snapshot_every=60)], world([h], ds)), R.TakeSnapshot)
