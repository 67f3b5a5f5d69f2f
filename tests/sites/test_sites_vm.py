"""Issue 15 §5 with a real VM (TCG): one world per module (netslate.demo_sites.SitesWorld: central and
branch namespaces, PostgreSQL primary and streaming standby, a central and a branch netslate server,
the branch mirror, the branch's own DHCP/TFTP router, one QEMU VM on the branch LAN), booted several
times. The steps are the ones `make demo-sites` prints (netslate.demo_sites.sites_steps); each raises
when its claim does not hold, and the tests assert on what they recorded.
"""

import re
import subprocess
import time

import pytest

from netslate.demo_sites import CENTRAL_URL, NAME, READ_ONLY, SitesWorld, sites_steps

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = SitesWorld(tmp_path_factory.mktemp("sites-vm"))
    lines: list[str] = []
    w.steps = dict((fn.__name__, fn) for _t, fn in sites_steps(w, lines.append))
    w.lines = lines
    w.timings = {}
    try:
        yield w
    finally:
        print("\n".join(lines))
        print("timings:", w.timings)
        ns = (w.lab.central, w.lab.branch)
        w.close()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(n in left for n in ns)


def _run(w, name):
    t = time.monotonic()
    w.steps[name]()
    w.timings[name] = round(time.monotonic() - t, 1)


def test_1_branch_boots_during_the_wan_cut(world):
    w = world
    _run(w, "build")
    _run(w, "boot_during_cut")
    r = w.results
    con = w.vm.console.text()
    assert f"trying boot server {w.branch_url}" in con
    m = re.search(r"netslate: rootfs fleet@(\d+): downloaded (\d+) of (\d+) bytes .* from (\S+) in", con)
    assert m and m.group(4) == w.branch_url and int(m.group(2)) > 50 << 20
    assert r["mirror_bytes_fetched_during_boot"] == 0
    assert re.search(r"netslate-agent: config generation %d from server;" % r["gen1"], con)
    assert r["gen2"] > r["gen1"]
    # the outbox holds the VM's boot event and its configured report (central has none of it yet)
    kinds = [k for _i, k, _p in r["queued"]]
    assert "boot.events" in kinds and "fleet.report" in kinds
    assert any(p["body"].get("phase") == "configured" and p["body"].get("generation") == r["gen1"]
               for _i, k, p in r["queued"] if k == "fleet.report")
    assert len(r["admin_write_seconds"]) == 2 and READ_ONLY


def test_2_after_the_cut_publish_applied_live_and_events_exactly_once(world):
    w = world
    _run(w, "restore")
    r = w.results
    e = r["exactly_once"]
    assert e["queued"] == e["applied"] > 0
    assert e["boot_events_central"] == e["boot_events_queued"] >= 1
    assert e["reports_central"] == e["reports_queued"] and ("configured", r["gen1"]) in e["reports_queued"]
    assert r["kernel_starts"] == 1  # applied by the running agent, not by a reboot
    f = w.central_fleet()[NAME]
    assert f["generation"] == r["gen2"] and f["state"] == "configured" and f["config_source"] == "server"


def test_3_branch_server_dead_vm_boots_from_central(world):
    w = world
    _run(w, "branch_dies")
    con = w.vm.console.text()
    assert f"boot server {w.branch_url} did not answer" in con
    m = re.search(r"netslate: rootfs fleet@(\d+): downloaded (\d+) of (\d+) bytes .* from (\S+) in", con)
    assert m and m.group(4) == CENTRAL_URL
    f = w.central_fleet()[NAME]
    assert f["state"] == "configured" and f["generation"] == w.results["gen2"]


def test_4_branch_server_back_vm_returns_to_the_branch(world):
    w = world
    _run(w, "branch_returns")
    con = w.vm.console.text()
    assert f"trying boot server {w.branch_url}" in con and f"boot server {w.branch_url} did not answer" not in con
    m = re.search(r"netslate: rootfs fleet@(\d+): downloaded (\d+) of (\d+) bytes .* from (\S+) in", con)
    assert m and m.group(4) == w.branch_url
    assert re.search(r"netslate-agent: config generation %d from server;" % w.results["gen2"], con)
    # the branch server's record of the machine: its reports applied at central by the branch server
    assert w.results["returned_through_branch"].get("fleet.report", 0) >= 1
    f = w.central_fleet()[NAME]
    assert f["state"] == "configured" and f["generation"] == w.results["gen2"]


def test_5_revoked_and_forged_site_keys_are_refused_by_the_booting_vm(world):
    w = world
    _run(w, "revoked_key_refused")
    con = w.vm.console.text()
    assert "site key 1 for site branch is revoked" in con
    assert not re.search(r"netslate-agent: config generation \d+ from", con)
    _run(w, "forged_key_refused")
    con = w.vm.console.text()
    # the forged branch pinned the real root in its boot script, and the image (root-signed) booted from it
    line = re.search(r"Command line: ([^\n]*)", con).group(1).split()
    assert f"netslate.key={w.results['root']}" in line and f"netslate.server={w.branch_url}" in line
    m = re.search(r"netslate: rootfs fleet@(\d+): downloaded (\d+) of (\d+) bytes .* from (\S+) in", con)
    assert m and m.group(4) == w.branch_url
    # ...but its agent refused the site certificate (not signed by the pinned root) and applied nothing
    assert "locate answer refused: site certificate not signed by the pinned root" in con
    assert not re.search(r"netslate-agent: config generation \d+ from", con)
    assert w.results["forged_branch_applied"].get("fleet.report", 0) == 0
