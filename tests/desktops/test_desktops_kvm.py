"""`host add --accel auto` proves KVM works before trusting it (issue 11 #10), and a domain that
fails to start because of the hypervisor marks its host degraded instead of quarantining desktops.

Pure tests of the decisions, and one real probe through libvirtd (qemu:///system) on this machine,
where /dev/kvm is advertised but broken: `auto` must conclude TCG and say so in one line.
"""

import dataclasses
import json

from desktops_fixtures import URI, ensure_libvirtd, traversable
from netslate import kvmcheck
from netslate.context import Context
from netslate.desktops import hosts
from netslate.desktops import reconcile as R
from netslate.desktops import states as S
from nstest import run_cli

MSR_ERROR = ("internal error: qemu unexpectedly closed the monitor: 2024-11-28T22:19:01.123Z qemu-system-x86_64: "
             "error: failed to set MSR 0x10a to 0x0\nqemu-system-x86_64: ../../target/i386/kvm/kvm.c:2893: "
             "kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.")


def test_hypervisor_fault_tells_kvm_from_desktop_failures():
    assert "MSR" in kvmcheck.hypervisor_fault(MSR_ERROR)
    assert kvmcheck.hypervisor_fault("Could not access KVM kernel module: Permission denied")
    assert kvmcheck.hypervisor_fault("error: kvm run failed Bad address")
    for desktop_fault in ("Cannot access storage file '/x/disk.qcow2': No such file or directory",
                          "unsupported configuration: unknown video model", "", None):
        assert kvmcheck.hypervisor_fault(desktop_fault) is None


def test_choose_accel():
    ok, bad = (True, "a test guest booted under KVM"), (False, "the test guest died before its kernel printed anything")
    assert hosts.choose_accel("tcg", True, True, None) == ("qemu", None)
    assert hosts.choose_accel("kvm", False, True, None) == ("kvm", None)  # asked for: trusted, as before
    assert hosts.choose_accel("auto", False, True, None) == ("qemu", None)  # libvirt offers no KVM
    assert hosts.choose_accel("auto", True, True, ok) == ("kvm", None)
    dtype, note = hosts.choose_accel("auto", True, True, bad)
    assert dtype == "qemu" and "KVM does not work on this host (the test guest died" in note and "\n" not in note
    dtype, note = hosts.choose_accel("auto", True, False, None)
    assert dtype == "kvm" and "not proven on a remote host" in note


def test_degraded_line_and_plan_skip_the_host():
    line = hosts.degraded_line("h1", MSR_ERROR)
    assert line.startswith("host h1 is degraded: QEMU cannot set the vCPU's MSRs under KVM") and "\n" not in line
    assert hosts.degraded_line("h1", "Cannot access storage file") is None
    pool = R.PoolObs(name="p", size=2, spare=1, max=4, memory_mib=512, golden_version=1, hosts=("h1",), grace_seconds=60)
    h = R.HostObs("h1", True, 8192, 8192, 512, 4, frozenset())
    errored = [R.DesktopObs(id=i, name=f"ns-x-p-{i}", pool="p", host="h1", state=S.ERROR, memory_mib=512, golden_version=1,
                            started_at=0.0, failures=0, reason=line) for i in (1, 2)]
    world = R.World(hosts={"h1": h}, desktops=tuple(errored), now=1000.0)
    # a healthy host: errored desktops are retried
    assert any(isinstance(a, R.Reset) for a in R.plan([pool], world))
    # a degraded host: nothing starts there, nobody is quarantined, the pool says why in one line
    world = dataclasses.replace(world, hosts={"h1": dataclasses.replace(h, degraded=line)})
    acts = R.plan([pool], world)
    assert not [a for a in acts if isinstance(a, (R.Reset, R.Start, R.Create, R.Provision))], acts
    assert not [a for a in acts if isinstance(a, R.SetState) and a.state == S.QUARANTINE]
    fresh = dataclasses.replace(world, desktops=())
    blocked = [a for a in R.plan([pool], fresh) if isinstance(a, R.Blocked)]
    assert [b.reason for b in blocked] == [line]


def test_auto_probe_on_this_machine_concludes_tcg_with_one_warning(data_dir):
    """/dev/kvm is advertised here but QEMU asserts (kvm_buf_set_msrs) or hangs under it."""
    ensure_libvirtd()
    traversable(data_dir)
    Context(data_dir).init()
    r = run_cli("host", "add", "local", URI, "--json", data_dir=data_dir, timeout=180)
    assert r.code == 0, r.stderr
    h = json.loads(r.stdout)
    assert h["accel"] == "auto" and h["capacity"]["domain_type"] == "qemu", h
    assert h["accel_note"].startswith("KVM does not work on this host ("), h
    r = run_cli("host", "show", "local", data_dir=data_dir, timeout=120)
    assert r.code == 0, r.stderr
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning: ")]
    assert len(warnings) == 1 and "KVM does not work on this host" in warnings[0], r.stderr
    # no probe domain is left behind
    import subprocess

    out = subprocess.run(["virsh", "-c", URI, "list", "--all", "--name"], capture_output=True, text=True, timeout=60).stdout
    assert "netslate-kvmprobe-" not in out
