"""The issue-5 fleet end to end with real VMs: the real `netslate serve` with dnsmasq in a vmlab
namespace, a systemd Debian image built with mmdebstrap (agent inside) + the netslate initramfs,
two QEMU VMs PXE-booting through iPXE (ram and cache mode), the agent reporting to the fleet.
Issue 13: the server also answers HTTPS with its certificate pinned in the boot arguments; vm-ram
enrolls with a TPM 2.0 (swtpm), vm-cache with a one-time host token in its SMBIOS OEM strings;
both report authenticated, and a secret set for vm-ram reaches vm-ram only.

The same steps as `make demo` (netslate.demo_fleet.fleet_steps); each raises when its claim does
not hold, so this test asserts through them, then checks the server's records once more.

Then, in the same world (issue 13 §8), two more VM boots:
- a spoofer: a third VM with vm-ram's MAC and SMBIOS UUID but a TPM of its own (a fresh swtpm),
  on vm-ram's tap while vm-ram is off (one MAC on the bridge at a time): it gets no credential, no
  secret (not in its bundle, in clear or sealed, nor anywhere in its RAM), and vm-ram is flagged
  `identity_conflict`;
- vm-ram boots again (same swtpm state): a fresh credential at trust `tpm` with no admin action (no
  new enrollment, the approved one untouched and attested again), its report authenticated, and
  the secret in its RAM (the positive control of the spoofer's memory search).
"""

import json
import mmap
import re
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from netslate import inventory
from netslate.config.models import MachineCredential
from netslate.context import Context
from netslate.demo_fleet import (MAC_RAM, SECRET_NAME, SECRET_VALUE, UUID_RAM, Fleet, _utcnow, authenticated, cli,
                                 configured, fleet_steps)
from netslate.enrollment import store as enrollment_store
from netslate.vmlab import VM

pytestmark = [pytest.mark.timeout(1800), pytest.mark.vm]
BOOT_TIMEOUT = 420


def test_fleet_vm_ram_cache_live_config_update_outage_rollback(tmp_path):
    data = tmp_path / "data"
    Context(data).init()
    fl = Fleet(tmp_path, data)
    lines: list[str] = []
    try:
        for title, fn in fleet_steps(fl, lines.append, accel="tcg"):
            lines.append(f"== {title}")
            fn()
        r = fl.results
        # ram and cache first boots downloaded the whole rootfs; the update < 20 % of it
        assert r["first_boot_bytes_vm-ram"] == r["first_boot_bytes_vm-cache"] > 100 << 20
        assert 0 < r["update_bytes"] < 0.2 * r["first_boot_bytes_vm-cache"]
        f = fl.fleet()
        assert f["vm-ram"]["state"] == "configured" and f["vm-ram"]["healthy"] is True
        assert f["vm-cache"]["image_source"] == "cache" and "image_from_cache" in f["vm-cache"]["flags"]
        # the serial consoles: the agent's own lines
        assert "netslate-agent: config generation" in fl.vms["vm-ram"].console.text()
        con = fl.vms["vm-cache"].console.text()  # the outage boot: PXE found nothing, extlinux on the disk
        assert "Booting from Hard Disk" in con and "SYSLINUX" in con and "source cache" in con
        # issue 13: both machines proved who they are, and stay authenticated to the end
        assert f["vm-ram"]["trust"] == "tpm" and f["vm-cache"]["trust"] == "host"
        for n in ("vm-ram", "vm-cache"):
            assert f[n]["authenticated"] is True and "unauthenticated" not in f[n]["flags"], (n, f[n])
        assert r["authenticated_seconds"] > 0 and r["secret_delivered"] is True
        ctx = Context(data)
        from netslate.enrollment import store as enrollment_store, tokens

        from netslate import inventory

        tpm = enrollment_store.list_enrollments(ctx, inventory.machine_id(ctx, "vm-ram"), "approved")
        assert len(tpm) == 1 and tpm[0]["activated"]
        # the host token was spent once; a second use is refused
        with pytest.raises(tokens.TokenUsed):
            tokens.exchange(ctx, fl.host_token, uuid="6e657473-6c61-4465-8000-0000000de002")
        # the pinned TLS path: the boot script (iPXE, plain HTTP) hands the kernel https servers + the pin
        pin = fl.tls_pin()
        code, script = fl.lab.http_get(f"{fl.server.url}/boot/ipxe?mac=52:54:00:de:00:01", timeout=10)
        assert code == 200 and f"netslate.pin={pin}".encode() in script, script[-600:]
        assert f"netslate.server=https://{fl.lab.address}:8443".encode() in script
        print("\n".join(lines))
        print(r)
        # issue 13 §8 in the same world: the spoofer, then vm-ram boots again
        t_added = time.monotonic()
        gen = _secret_for_vm_ram_again(fl)
        cache = fl.vms.pop("vm-cache")  # not needed below: its CPU goes to the VMs that are
        cache.stop()
        t = time.monotonic()
        _spoofer_gets_nothing_and_is_flagged(fl, gen)
        t_spoof = time.monotonic() - t
        t = time.monotonic()
        _vm_ram_boots_again_without_approval(fl, gen)
        t_again = time.monotonic() - t
        print(f"added (issue 13 §8): spoofer {t_spoof:.0f}s, vm-ram again {t_again:.0f}s, "
              f"total {time.monotonic() - t_added:.0f}s")
    finally:
        name = fl.lab.name
        fl.close()
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _credentials(ctx, machine_id: int) -> list[tuple]:
    with ctx.db.session() as s:
        rows = s.scalars(select(MachineCredential).where(MachineCredential.machine_id == machine_id)
                         .order_by(MachineCredential.id))
        return [(c.id, c.trust, c.created_by, c.revoked_at) for c in rows]


def _in_memory(vm: VM, needle: bytes, path: Path) -> bool:
    """Is `needle` anywhere in the VM's RAM (a QMP memory dump, deleted after the search)?"""
    vm.dump_memory(path)
    try:
        assert path.stat().st_size >= vm.memory_mb << 20
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(needle) >= 0
    finally:
        path.unlink(missing_ok=True)


def _anonymous_bundle_has_no_secret(fl: Fleet, machine_id: int) -> None:
    """What anyone without the machine's credential gets for it (the spoofer has none): no value, in
    clear or sealed; only the name, as withheld."""
    code, body = fl.lab.http_get(f"{fl.server.url}/api/v1/machines/{machine_id}/bundle", timeout=10)
    assert code == 200, body[-300:]
    assert SECRET_VALUE.encode() not in body
    p = json.loads(body)["payload"]
    assert p["authenticated"] is False and p["secrets_removed"] is True and not p.get("sealed_secrets")
    assert "secrets" not in p["document"] and SECRET_NAME in p["secrets_withheld"]


def _secret_for_vm_ram_again(fl: Fleet) -> int:
    """The rollback step published generation 1's tree (no secret): vm-ram's secret again."""
    cli(fl.data, "config", "set", "@vm-ram", f"secrets[{SECRET_NAME}]", SECRET_VALUE, json_out=False)
    gen = cli(fl.data, "config", "publish", "-m", "test: vm-ram's secret again")["generation"]
    assert f"/secrets/{SECRET_NAME}" in json.dumps(cli(fl.data, "config", "explain", "vm-ram"))
    return gen


def _spoofer_gets_nothing_and_is_flagged(fl: Fleet, gen: int) -> None:
    ctx = Context(fl.data)
    rid = inventory.machine_id(ctx, "vm-ram")
    (approved,) = enrollment_store.list_enrollments(ctx, rid, "approved")
    enrollments = enrollment_store.list_enrollments(ctx)
    creds = _credentials(ctx, rid)
    machines = len(inventory.list_machines(ctx))
    ram = fl.vms["vm-ram"]
    ram.stop()  # one MAC on the bridge at a time: vm-ram is off while its double runs, on the same tap
    spoof = VM(fl.lab, fl.vmdir, "vm-spoof", MAC_RAM, memory_mb=1536, accel="tcg", extra=["-uuid", UUID_RAM],
               tpm=True, qmp=True)
    spoof.tap = ram.tap
    try:
        spoof.start()
        m = spoof.wait_for(r"netslate-agent: config generation (\S+) from (\S+);", BOOT_TIMEOUT)
        con = spoof.console.text()
        # its TPM said hello as vm-ram: a new enrollment, pending, flagged; nothing else was created
        new = [e for e in enrollment_store.list_enrollments(ctx) if e["id"] not in {x["id"] for x in enrollments}]
        assert len(new) == 1, new
        e = new[0]
        assert e["machine_id"] == rid and e["status"] == "pending" and e["flags"] == ["identity_conflict"], e
        assert e["ek_sha256"] != approved["ek_sha256"] and not e["activated"] and e["last_attested_at"] is None
        assert e["claimed"]["macs"] == [MAC_RAM] and e["claimed"]["uuid"] == UUID_RAM, e["claimed"]
        assert len(inventory.list_machines(ctx)) == machines
        assert f"TPM enrollment {e['id']} waits for approval (identity_conflict)" in con, con[-3000:]
        # no credential: none issued to the machine; its reports (without one) refused
        assert _credentials(ctx, rid) == creds
        refused = r"report not accepted: .*this machine is enrolled: its report needs its credential"
        assert re.search(refused, con), con[-3000:]
        # the bundle it got (the current generation, verified) carried no secret: the agent would have
        # said so for a sealed one it cannot open, and the value is nowhere in its RAM
        assert (m.group(1), m.group(2)) == (str(gen), "server"), m.group(0)
        assert "holds secrets" not in con and "do not open" not in con, con[-3000:]
        assert not _in_memory(spoof, SECRET_VALUE.encode(), fl.workdir / "vm-spoof.mem")
        _anonymous_bundle_has_no_secret(fl, rid)
        f = fl.fleet()["vm-ram"]
        assert "identity_conflict" in f["flags"], f
        assert f["trust"] == "tpm"  # a spoofer does not lower the real machine's level
    finally:
        spoof.stop()
    assert not spoof.alive()


def _vm_ram_boots_again_without_approval(fl: Fleet, gen: int) -> None:
    ctx = Context(fl.data)
    rid = inventory.machine_id(ctx, "vm-ram")
    before = enrollment_store.list_enrollments(ctx)
    (approved,) = [e for e in before if e["machine_id"] == rid and e["status"] == "approved"]
    creds = _credentials(ctx, rid)
    since = _utcnow()
    ram = fl.vms["vm-ram"]
    ram.start()  # the same swtpm state: the same EK, the same AK
    f = fl.wait(lambda f: configured(["vm-ram"], gen, since=since)(f) and authenticated(["vm-ram"], {"vm-ram": "tpm"})(f),
                BOOT_TIMEOUT, "vm-ram configured and authenticated (trust tpm) after booting again")["vm-ram"]
    assert f["authenticated"] is True and f["trust"] == "tpm" and "unauthenticated" not in f["flags"], f
    after = enrollment_store.list_enrollments(ctx)
    # no admin action, no new enrollment: every enrollment as it was, the approved one attested again
    keep = ("id", "machine_id", "status", "flags", "ek_sha256", "ak_name", "approved_by", "approved_at", "activated_at")
    assert [{k: x[k] for k in keep} for x in after] == [{k: x[k] for k in keep} for x in before]
    (again,) = [e for e in after if e["id"] == approved["id"]]
    assert again["activated"] and again["last_attested_at"] > approved["last_attested_at"], (approved, again)
    # a fresh credential at trust tpm, issued by the machine's own attestation
    fresh = [c for c in _credentials(ctx, rid) if c not in creds]
    assert fresh and all(c[1] == "tpm" and c[2] == f"machine:{rid}" and c[3] is None for c in fresh), fresh
    assert re.search(r"netslate-agent: config generation %d from server;" % gen, ram.console.text())
    # the secret reached vm-ram on this boot (sealed to the fresh credential, opened on the machine)
    assert _in_memory(ram, SECRET_VALUE.encode(), fl.workdir / "vm-ram.mem")
