"""The fleet world of `make demo` and tests/e2e: a netslate server with dnsmasq (full DHCP + TFTP)
in a vmlab namespace, a small systemd Debian image with the agent and the netslate initramfs,
boot profiles for ram and cache mode, a config tree, and QEMU VMs that PXE-boot through iPXE.

Everything here is plain orchestration of existing parts (vmlab, boot store, CLI); it owns no logic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from netslate.vmlab import VM, LabNetwork, NetslateServer
from netslate.vmlab.qemu import find_kernel

MAC_RAM = "52:54:00:de:00:01"
MAC_CACHE = "52:54:00:de:00:02"
# SMBIOS system UUIDs (QEMU -uuid): vm-cache's one-time host token is bound to its UUID
UUID_RAM = "6e657473-6c61-4465-8000-0000000de001"
UUID_CACHE = "6e657473-6c61-4465-8000-0000000de002"
TLS_PORT = 8443
SECRET_NAME = "demo_psk"
SECRET_VALUE = "only-for-vm-ram-7d1e"

RECIPE = """\
# The demo fleet image: minbase + systemd + python3 (the agent's standard library).
# The kernel is the host's Debian kernel (no linux-image: initramfs-tools is slow to install);
# the netslate initramfs loads the modules the boot needs before switch_root.
suite: bookworm
variant: minbase
packages: [systemd-sysv, python3, iproute2, tpm2-tools{extra}]
files:
  - path: /boot/{kernel}
    source: {kernel_path}
  - path: /etc/motd
    content: "netslate fleet image\\n"
customise: |
  echo "fleet {label}" > /etc/netslate-demo-version
  systemctl mask systemd-timesyncd.service getty@tty1.service serial-getty@ttyS0.service \
    systemd-logind.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer 2>/dev/null || true
"""


def write_recipe(path: Path, label: str, extra_packages: tuple[str, ...] = ()) -> Path:
    kernel = find_kernel()
    if kernel is None:
        raise RuntimeError("no /boot/vmlinuz-*: install linux-image-amd64 (scripts/install-deps.sh)")
    extra = "".join(f", {p}" for p in extra_packages)
    path.write_text(RECIPE.format(extra=extra, kernel=kernel.name, kernel_path=kernel, label=label))
    return path


def cli(data: Path, *args: str, json_out: bool = True, timeout: float = 900):
    """Run the real `netslate` CLI on the local data directory; raise with its error line on failure."""
    env = dict(os.environ, NETSLATE_DATA_DIR=str(data))
    env.pop("NETSLATE_SERVER", None)
    env.pop("NETSLATE_TOKEN", None)
    cmd = [sys.executable, "-m", "netslate", *args] + (["--json"] if json_out else [])
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"`netslate {' '.join(args)}` exited {p.returncode}: {p.stderr.strip()[-800:]}")
    return json.loads(p.stdout) if json_out else p.stdout


def build_fleet_image(data: Path, workdir: Path, label: str, extra_packages: tuple[str, ...] = (),
                      tag: str | None = "stable") -> dict:
    """mmdebstrap build (agent installed by the build hook) → + netslate initramfs → tag."""
    recipe = write_recipe(workdir / f"fleet-{label}.yaml", label, extra_packages)
    built = cli(data, "image", "build", "fleet", "--recipe", str(recipe))
    args = ["initramfs", "build", "--image", f"fleet@{built['version']}"] + (["--tag", tag] if tag else [])
    booted = cli(data, *args)
    return {"build": built, "image": booted}


def setup_boot(ctx) -> None:
    """Two machines, a ram and a cache profile, one rule per MAC; active."""
    from netslate import inventory
    from netslate.boot import store as bstore

    common = dict(image="fleet", ref="stable", console="ttyS0")
    bstore.add_profile(ctx, "fleet-ram", mode="ram", args=["panic=-1", "quiet"], **common)
    bstore.add_profile(ctx, "fleet-cache", mode="cache", args=["panic=-1", "quiet", "netslate.disk=allow"], **common)
    inventory.add_machine(ctx, [MAC_RAM], uuid=UUID_RAM, name="vm-ram")
    inventory.add_machine(ctx, [MAC_CACHE], uuid=UUID_CACHE, name="vm-cache")
    bstore.add_rule(ctx, "r-ram", {"mac": MAC_RAM}, "fleet-ram")
    bstore.add_rule(ctx, "r-cache", {"mac": MAC_CACHE}, "fleet-cache")
    bstore.activate_rules(ctx)


def setup_config(data: Path) -> dict:
    """A site, a cluster, a pool, a setting at each level; both machines in the pool; publish."""
    cli(data, "config", "set", "/site-a", "timezone", "Europe/Oslo", json_out=False)
    cli(data, "config", "set", "/site-a/cluster-1", "sysctl[vm.swappiness]", "10", json_out=False)
    cli(data, "config", "set", "/site-a/cluster-1/pool-x", "files",
        '[{path: /etc/netslate-demo, content: "message one\\n"}]', json_out=False)
    for m in ("vm-ram", "vm-cache"):
        cli(data, "config", "place", m, "/site-a/cluster-1/pool-x", json_out=False)
    return cli(data, "config", "publish", "-m", "demo: first generation")


class Fleet:
    """The namespace, the server (with dnsmasq) and the VMs; `close()` stops all of it.

    Identity (issue 13): vm-ram has a TPM 2.0 (swtpm) and enrolls with it; vm-cache is a VM the demo
    defines as its host would: a one-time token bound to its SMBIOS UUID in its SMBIOS type 11 OEM
    strings. The server also answers HTTPS (`--tls-listen`, self-signed); the boot arguments pin its
    certificate, so the initramfs and the agent talk to it over pinned TLS (iPXE stays on HTTP)."""

    def __init__(self, workdir: Path, data: Path, tls: bool = True):
        self.workdir = workdir
        self.data = data
        self.tls = tls
        self.host_token: str | None = None
        self.lab = LabNetwork().create()
        self.server: NetslateServer | None = None
        self.vms: dict[str, VM] = {}
        self.disk = workdir / "vm-cache.qcow2"
        # QEMU's serial socket path must stay under 108 bytes: deep work dirs (pytest) get a short one
        self.vmdir = workdir / "vms"
        self._short_vmdir = None
        if len(str(self.vmdir)) > 60:
            import tempfile

            self.vmdir = self._short_vmdir = Path(tempfile.mkdtemp(prefix="nsfleet-"))

    def start_server(self) -> NetslateServer:
        lab = self.lab
        tls = ["--tls-listen", f"{lab.address}:{TLS_PORT}"] if self.tls else []
        self.server = NetslateServer(lab, self.data, ["--boot-interface", lab.bridge, "--dhcp", "full",
                                                      "--dhcp-range", f"{lab.host_ip(100)},{lab.host_ip(150)},255.255.255.0",
                                                      *tls],
                                     log_path=self.workdir / "serve.log")
        self.server.start()
        return self.server

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()

    def tls_pin(self) -> str | None:
        from netslate.server.tls import pin_of_pem

        cert = self.data / "keys" / "tls.crt"
        return pin_of_pem(cert.read_bytes()) if self.tls and cert.exists() else None

    def make_host_token(self) -> str:
        """What a host that defines vm-cache does: a one-time token bound to the VM's SMBIOS UUID
        (and its machine record), at trust `host`, for the VM's SMBIOS type 11 OEM strings."""
        from netslate.context import Context
        from netslate.enrollment import tokens

        self.host_token = tokens.create(Context(self.data), "local:demo-host", machine="vm-cache",
                                        domain_uuid=UUID_CACHE, kind="host")["token"]
        return self.host_token

    def vm(self, name: str, accel: str | None = None) -> VM:
        if name not in self.vms:
            mac = MAC_RAM if name == "vm-ram" else MAC_CACHE
            extra: list[str] = ["-uuid", UUID_RAM if name == "vm-ram" else UUID_CACHE]
            if name == "vm-cache":
                from netslate.enrollment.tokens import oem_string

                extra += ["-smbios", f"type=11,value={oem_string(self.make_host_token())}"]
                if not self.disk.exists():
                    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.disk), "2G"], check=True)
                # the NETSLATE disk boots after the NIC: the firmware's fallback when PXE fails
                extra += ["-drive", f"file={self.disk},if=none,id=d0,format=qcow2",
                          "-device", "virtio-blk-pci,drive=d0,bootindex=2"]
            # qmp: tests look into vm-ram's memory (VM.dump_memory) for the secret it was sent
            self.vms[name] = VM(self.lab, self.vmdir, name, mac, memory_mb=1536, accel=accel, extra=extra,
                                tpm=name == "vm-ram", qmp=name == "vm-ram")
        return self.vms[name]

    def fleet(self) -> dict:
        code, body = self.lab.http_get(self.server.url + "/api/v1/fleet", timeout=10)
        if code != 200:
            raise RuntimeError(f"GET /api/v1/fleet answered {code}")
        return {m["name"]: m for m in json.loads(body)["machines"]}

    def wait(self, pred, timeout: float, what: str, poll: float = 2.0) -> dict:
        """Poll the fleet until pred(fleet) is true; a dead VM or the time-out raise, naming `what`."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            try:
                last = self.fleet()
                if pred(last):
                    return last
            except (OSError, RuntimeError, ValueError):
                pass
            for vm in self.vms.values():
                if vm.proc is not None and vm.proc.poll() is not None and vm.proc.returncode not in (0, None):
                    raise RuntimeError(f"{vm.name} exited {vm.proc.returncode} while waiting for {what}")
            time.sleep(poll)
        raise TimeoutError(f"{what}: not reached in {timeout:.0f}s; fleet: "
                           + json.dumps({n: {k: m.get(k) for k in ("state", "version", "image_source", "generation",
                                                                    "config_source", "failures", "problems", "trust",
                                                                    "authenticated", "flags")}
                                         for n, m in last.items()}))

    def close(self) -> None:
        for vm in self.vms.values():
            vm.stop()
        self.stop_server()
        self.lab.close()
        if self._short_vmdir is not None:
            import shutil

            shutil.rmtree(self._short_vmdir, ignore_errors=True)


def configured(names, generation: int | None = None, source: str | None = None, since: str | None = None):
    """A fleet predicate: every named machine is configured and healthy (optionally at a generation,
    config from a source, with a report newer than `since`)."""
    def pred(f: dict) -> bool:
        for n in names:
            m = f.get(n)
            if not m or m["state"] != "configured" or m.get("healthy") is False:
                return False
            if generation is not None and m.get("generation") != generation:
                return False
            if source is not None and m.get("config_source") != source:
                return False
            if since is not None and (m.get("last_report") or "") <= since:
                return False
        return True
    return pred


def fleet_table(f: dict) -> list[str]:
    rows = [f"{'machine':10} {'state':11} {'image':9} {'from':7} {'gen':4} {'config':7} {'healthy':7} {'trust':5} flags"]
    for n, m in sorted(f.items()):
        rows.append(f"{n:10} {m['state']:11} {'fleet@' + str(m.get('version')):9} {str(m.get('image_source')):7} "
                    f"{str(m.get('generation')):4} {str(m.get('config_source')):7} {str(m.get('healthy')):7} "
                    f"{str(m.get('trust')):5} {','.join(m.get('flags') or []) or '-'}")
    return rows


def authenticated(names, trust: dict | None = None):
    """A fleet predicate: every named machine's last report carried its credential (no
    `unauthenticated` flag) and, if given, its trust level is trust[name]."""
    def pred(f: dict) -> bool:
        for n in names:
            m = f.get(n)
            if not m or m.get("authenticated") is not True or "unauthenticated" in (m.get("flags") or []):
                return False
            if trust and m.get("trust") != trust[n]:
                return False
        return True
    return pred


# ------------------------------------------------------------------------------ the scenario
BYTES_RE = r"netslate: rootfs fleet@(\d+): downloaded (\d+) of (\d+) bytes \((\d+) of (\d+) chunks"
CACHED_RE = r"netslate: rootfs fleet@(\d+) is cached and verified: downloaded 0 bytes"


def _utcnow() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


LOCAL_BOOT_RE = r"netslate: local boot: (kernel|initrd) of fleet@(\d+): downloaded (\d+) of (\d+) bytes"


def local_boot_bytes(vm: VM) -> int:
    """Bytes the cache-mode initramfs fetched for the disk's local boot path (kernel + initrd)."""
    import re

    return sum(int(m.group(3)) for m in re.finditer(LOCAL_BOOT_RE, vm.console.text()))


def boot_bytes(vm: VM) -> dict:
    """What the initramfs said it downloaded on this boot (from the serial console)."""
    m = vm.wait_for(BYTES_RE + "|" + CACHED_RE, 5)
    if m.group(6):  # cached and verified: nothing downloaded
        return {"version": int(m.group(6)), "bytes_downloaded": 0, "bytes_total": None, "chunks_downloaded": 0,
                "chunks_total": None}
    m = vm.wait_for(BYTES_RE, 1)
    v, got, total, cgot, ctotal = (int(x) for x in m.groups())
    return {"version": v, "bytes_downloaded": got, "bytes_total": total, "chunks_downloaded": cgot, "chunks_total": ctotal}


def history(data: Path, name: str) -> list[dict]:
    from sqlalchemy import select

    from netslate.context import Context
    from netslate.store.models import Machine

    ctx = Context(data)
    with ctx.db.session() as s:
        m = s.scalars(select(Machine).where(Machine.name == name)).one()
        return list(((m.status or {}).get("fleet") or {}).get("history") or [])


def fleet_steps(fl: Fleet, say, accel: str | None = None, boot_timeout: float = 420,
                second_boot: bool = False) -> list[tuple[str, object]]:
    """The issue's fleet demo as (title, fn) steps; each fn raises on a claim that does not hold.
    `say(text)` prints a line of what happened; results land in fl.results (the benchmark figures).
    `second_boot` (the benchmark) adds a reboot of both VMs with the image unchanged."""
    data, work = fl.data, fl.workdir
    fl.results = r = {}

    def build_v1():
        t = time.monotonic()
        b = build_fleet_image(data, work, "v1")
        r["v1"] = b["image"]["version"]
        r["build_v1_seconds"] = round(time.monotonic() - t, 1)
        say(f"fleet@{b['build']['version']}: mmdebstrap (systemd, python3, agent) {b['build']['bytes_total'] / 2**20:.0f} MiB; "
            f"fleet@{r['v1']} = + netslate initramfs, tagged stable ({r['build_v1_seconds']}s)")
        setup_boot(fl_ctx())
        pub = setup_config(data)
        r["gen1"] = pub["generation"]
        say(f"profiles fleet-ram (mode=ram) and fleet-cache (mode=cache, netslate.disk=allow); config tree "
            f"/site-a (timezone) → /cluster-1 (sysctl) → /pool-x (a file): generation {r['gen1']}")

    def fl_ctx():
        from netslate.context import Context

        return Context(data)

    def boot_fleet():
        fl.start_server()
        t0 = time.monotonic()
        for n in ("vm-ram", "vm-cache"):
            fl.vm(n, accel).start()
        say(f"server {fl.server.url} (dnsmasq full DHCP + TFTP on {fl.lab.bridge}); VMs with {fl.vms['vm-ram'].accel.upper()}")
        seen: dict[str, float] = {}

        def pred(f):
            for n in ("vm-ram", "vm-cache"):
                if n not in seen and configured([n], r["gen1"])(f):
                    seen[n] = round(time.monotonic() - t0, 1)
            return len(seen) == 2
        f = fl.wait(pred, boot_timeout, "both VMs configured")
        r["first_boot_seconds"] = seen
        r["first_boot_local_boot_bytes_vm-cache"] = local_boot_bytes(fl.vms["vm-cache"])
        for n in ("vm-ram", "vm-cache"):
            b = boot_bytes(fl.vms[n])
            r[f"first_boot_bytes_{n}"] = b["bytes_downloaded"]
            if f[n]["version"] != r["v1"] or f[n]["image_source"] != "server":
                raise RuntimeError(f"{n} booted {f[n]['version']} from {f[n]['image_source']}")
        for line in fleet_table(f):
            say(line)
        say(f"power-on → configured: vm-ram {seen['vm-ram']}s, vm-cache {seen['vm-cache']}s; "
            f"downloaded {r['first_boot_bytes_vm-ram'] / 2**20:.0f} MiB each")

    def enroll():
        from netslate import inventory
        from netslate.enrollment import store as enrollment_store

        ctx = fl_ctx()
        rid = inventory.machine_id(ctx, "vm-ram")
        t0 = time.monotonic()
        deadline = t0 + boot_timeout
        pending: list[dict] = []
        while not pending:  # vm-ram's agent sent its EK and AK: the TPM waits for an admin
            pending = enrollment_store.list_enrollments(ctx, rid, "pending")
            if pending or enrollment_store.list_enrollments(ctx, rid, "approved"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"vm-ram's TPM enrollment did not arrive in {boot_timeout:.0f}s")
            time.sleep(2)
        if pending:
            ek = pending[0]["ek_sha256"][:16]
            cli(data, "machine", "approve", "vm-ram", "--enrollment", str(pending[0]["id"]), json_out=False)
            say(f"vm-ram's TPM (swtpm) asked to enroll with EK sha256:{ek}…; approved by the admin "
                f"(`netslate machine approve vm-ram --enrollment {pending[0]['id']}`)")
        f = fl.wait(authenticated(["vm-ram", "vm-cache"], {"vm-ram": "tpm", "vm-cache": "host"}), boot_timeout,
                    "both VMs authenticated (vm-ram trust tpm, vm-cache trust host)")
        r["authenticated_seconds"] = round(time.monotonic() - t0, 1)
        for line in fleet_table(f):
            say(line)
        say(f"vm-ram: MakeCredential challenge answered by its TPM, then an AK-signed quote → a short-lived "
            f"credential (trust tpm); vm-cache: the host token from its SMBIOS OEM strings traded once for a "
            f"credential kept on its NETSLATE disk (trust host); no `unauthenticated` flag left "
            f"({r['authenticated_seconds']}s)")
        if fl.tls:
            say(f"agents and initramfs talk HTTPS to {fl.lab.address}:{TLS_PORT}, certificate pinned "
                f"{fl.tls_pin()[:23]}… through netslate.pin= (iPXE fetched kernel + initramfs over HTTP)")

    def secret_for_one():
        cli(data, "config", "set", "@vm-ram", f"secrets[{SECRET_NAME}]", SECRET_VALUE, json_out=False)
        pub = cli(data, "config", "publish", "-m", "demo: a secret for vm-ram only")
        r["gen_secret"] = pub["generation"]
        fl.wait(lambda f: configured(["vm-ram", "vm-cache"], r["gen_secret"])(f)
                and authenticated(["vm-ram", "vm-cache"])(f), 180, f"generation {r['gen_secret']} applied")
        ram = cli(data, "config", "explain", "vm-ram")
        cache = cli(data, "config", "explain", "vm-cache")
        if f"/secrets/{SECRET_NAME}" not in json.dumps(ram) or f"/secrets/{SECRET_NAME}" in json.dumps(cache):
            raise RuntimeError("the secret is not vm-ram's alone in the merged documents")
        # anyone asking by id/MAC without the machine's credential gets no secret, in any form
        code, body = fl.lab.http_get(f"{fl.server.url}/api/v1/machines/{inventory_id('vm-ram')}/bundle", timeout=10)
        payload = json.loads(body).get("payload") or {} if code == 200 else {}
        if (code != 200 or SECRET_VALUE.encode() in body or payload.get("secrets_removed") is not True
                or payload.get("sealed_secrets") or (payload.get("document") or {}).get("secrets")):
            raise RuntimeError(f"an anonymous bundle request for vm-ram answered {code}, or with its secret "
                               "(in clear or sealed)")
        r["secret_delivered"] = True
        say(f"secret {SECRET_NAME} set on @vm-ram (generation {r['gen_secret']}): in vm-ram's bundle only, encrypted "
            f"to its credential; vm-cache's document has no such secret; a bundle asked for by id without the "
            f"credential carries none, in clear or sealed (only its name, as withheld)")

    def inventory_id(name: str) -> int:
        from netslate import inventory

        return inventory.machine_id(fl_ctx(), name)

    def reboot_unchanged():
        since = _utcnow()
        t0 = time.monotonic()
        for n in ("vm-ram", "vm-cache"):
            fl.vms[n].restart()
        seen: dict[str, float] = {}

        def pred(f):
            for n in ("vm-ram", "vm-cache"):
                if n not in seen and configured([n], since=since)(f):
                    seen[n] = round(time.monotonic() - t0, 1)
            return len(seen) == 2
        fl.wait(pred, boot_timeout, "both VMs configured after a reboot")
        r["second_boot_seconds"] = seen
        for n in ("vm-ram", "vm-cache"):
            r[f"second_boot_bytes_{n}"] = boot_bytes(fl.vms[n])["bytes_downloaded"]
        say(f"second boot, image unchanged: vm-ram {seen['vm-ram']}s ({r['second_boot_bytes_vm-ram'] / 2**20:.0f} MiB), "
            f"vm-cache {seen['vm-cache']}s ({r['second_boot_bytes_vm-cache']} bytes)")

    def config_change():
        t = time.monotonic()
        cli(data, "config", "set", "/site-a/cluster-1/pool-x", "files",
            '[{path: /etc/netslate-demo, content: "message two\\n"}]', json_out=False)
        pub = cli(data, "config", "publish", "-m", "demo: change the pool's file")
        r["gen2"] = pub["generation"]
        fl.wait(configured(["vm-ram", "vm-cache"], r["gen2"]), 120, f"generation {r['gen2']} applied live")
        r["live_config_seconds"] = round(time.monotonic() - t, 1)
        say(f"published generation {r['gen2']}; both machines applied it live (long-poll) in {r['live_config_seconds']}s")

    def image_update():
        t = time.monotonic()
        b = build_fleet_image(data, work, "v2", extra_packages=("less",))
        r["v2"] = b["image"]["version"]
        diff = cli(data, "image", "diff", "fleet", str(r["v1"]), str(r["v2"]))
        say(f"fleet@{r['v2']} (+ less) built in {time.monotonic() - t:.0f}s, tagged stable; "
            f"{diff['bytes_new'] / 2**20:.1f} MiB new of {diff['bytes_total'] / 2**20:.0f} MiB")
        vm = fl.vms["vm-cache"]
        since = _utcnow()
        t0 = time.monotonic()
        vm.restart()
        fl.wait(lambda f: configured(["vm-cache"], since=since)(f) and f["vm-cache"]["version"] == r["v2"],
                boot_timeout, f"vm-cache configured on fleet@{r['v2']}")
        r["update_boot_seconds"] = round(time.monotonic() - t0, 1)
        b = boot_bytes(vm)
        r["update_bytes"] = b["bytes_downloaded"]
        r["update_local_boot_bytes"] = local_boot_bytes(vm)
        r["update_chunks"] = (b["chunks_downloaded"], b["chunks_total"])
        if not 0 < b["bytes_downloaded"] < 0.2 * b["bytes_total"]:
            raise RuntimeError(f"the update downloaded {b['bytes_downloaded']} of {b['bytes_total']} bytes")
        say(f"vm-cache rebooted onto fleet@{r['v2']}: downloaded {b['bytes_downloaded'] / 2**20:.1f} MiB "
            f"({b['chunks_downloaded']} of {b['chunks_total']} chunks, {b['bytes_downloaded'] / b['bytes_total']:.1%}); "
            f"configured after {r['update_boot_seconds']}s")

    def outage():
        lab, vm = fl.lab, fl.vms["vm-cache"]
        vm.stop()
        fl.stop_server()
        # The site's DHCP is not netslate's: a plain dnsmasq keeps handing out addresses (no boot file).
        say("netslate server stopped (API, boot scripts, chunks, its dnsmasq); a plain dnsmasq keeps DHCP")
        dhcp = lab.popen(["dnsmasq", "--keep-in-foreground", "--port=0", f"--interface={lab.bridge}", "--bind-interfaces",
                          f"--dhcp-range={lab.host_ip(100)},{lab.host_ip(150)},255.255.255.0,1h",
                          f"--dhcp-leasefile={work}/outage.leases", "--user=root", "--no-resolv", "--no-hosts",
                          "--conf-file=/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            t0 = time.monotonic()
            vm.start()
            vm.wait_for(r"Booting from Hard Disk", boot_timeout)
            m = vm.wait_for(r"netslate: local boot from the NETSLATE disk: fleet@(\d+)", 60)
            if int(m.group(1)) != r["v2"]:
                raise RuntimeError(f"the disk's default local boot entry is fleet@{m.group(1)}, expected {r['v2']}")
            say(f"PXE found nothing to boot; the BIOS went on to the NETSLATE disk: extlinux loaded the cached "
                f"kernel + initramfs of fleet@{m.group(1)}")
            m = vm.wait_for(r"netslate: booting fleet@(\d+) \(mode cache, source cache\)", boot_timeout)
            if int(m.group(1)) != r["v2"]:
                raise RuntimeError(f"booted fleet@{m.group(1)} from the cache, expected {r['v2']}")
            vm.wait_for(r"netslate-agent: config generation (\d+) from (the )?last-known-good|from cache", boot_timeout)
            r["outage_boot_seconds"] = round(time.monotonic() - t0, 1)
            say(f"vm-cache booted fleet@{r['v2']} from its NETSLATE disk and applied the last-known-good config "
                f"({r['outage_boot_seconds']}s from power-on)")
        finally:
            lab.stop(dhcp)
        since = _utcnow()
        fl.start_server()
        f = fl.wait(lambda f: f.get("vm-cache", {}).get("image_source") == "cache"
                    and (f["vm-cache"].get("last_report") or "") > since, 180, "vm-cache reports after the outage")
        if f["vm-cache"].get("booted_via") != "local disk":
            raise RuntimeError(f"vm-cache reports booted_via={f['vm-cache'].get('booted_via')!r}, expected 'local disk'")
        hist = history(data, "vm-cache")
        if not any(h.get("config_source") == "cache" for h in hist):
            raise RuntimeError(f"no queued report with config_source=cache: {hist[-3:]}")
        m = f["vm-cache"]
        say(f"server back: vm-cache reports image fleet@{m['version']} source={m['image_source']} "
            f"booted via the {m['booted_via']}, "
            f"queued report config_source=cache delivered; flags {m['flags']}")

    def rollback():
        cli(data, "image", "tag", "fleet", str(r["v1"]), "stable", "-m", "demo rollback", json_out=False)
        show = cli(data, "image", "show", "fleet@stable")
        if show["version"] != r["v1"]:
            raise RuntimeError("stable does not point at the first version after the rollback")
        pub = cli(data, "config", "rollback", str(r["gen1"]), "-m", "demo rollback")
        gen = pub["generation"]
        fl.wait(configured(["vm-ram"], gen), 120, f"rollback generation {gen} applied")
        say(f"tag stable → fleet@{r['v1']}; config rollback to generation {r['gen1']} published as generation {gen}, "
            f"applied live by vm-ram")

    steps = [
        ("build the fleet image (systemd + agent) with mmdebstrap, its initramfs, boot profiles and a config tree", build_v1),
        ("PXE-boot two VMs (ram and cache mode) until both report configured and healthy", boot_fleet),
        ("machine identity: vm-ram enrolls with its TPM (swtpm), vm-cache with a host token in its SMBIOS OEM "
         "strings; both report authenticated", enroll),
        ("a secret set for vm-ram reaches vm-ram only", secret_for_one),
    ]
    if second_boot:
        steps.append(("reboot both VMs with the image unchanged", reboot_unchanged))
    return steps + [
        ("publish a config change; the running machines apply it live", config_change),
        ("image v2 with one package more; vm-cache reboots and downloads only the changed chunks", image_update),
        ("server down: vm-cache boots from its cache with last-known-good; reports source=cache when the server is back", outage),
        ("roll back the image tag and the config generation", rollback),
    ]
