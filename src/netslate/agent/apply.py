"""Step 3b: apply a resolved config document to a root directory, idempotently.

Every module is a function `(section, Ctx) -> list of changes`, raising ModuleError on failure.
Each writes only what differs (a second run changes nothing) and runs independently, so one
broken module never stops the others; `apply_all` reports each as "ok" or "error: ...".

`root` is "/" on a machine; tests pass a temporary directory. Live actions (systemctl, /proc/sys,
the kernel hostname, networkctl) run only when `live` is true and are otherwise recorded in
`Ctx.actions`, so a test can see what would have run.

Templates (hostname, files) are rendered by the server with the facts this agent reported, so the
agent never needs Jinja2. Network configuration is written for systemd-networkd (drop-in files we
own entirely; no shared file to edit; in Debian 12 by default).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from netslate.agent.util import atomic_write, canonical, under

MODULES = ("hostname", "timezone", "locale", "users", "files", "secrets", "units", "sysctl", "mounts",
           "network", "ntp", "kernel_args")
# Sections a running machine may change without a reboot; the others wait for the next boot.
LIVE_SAFE = {"hostname", "timezone", "locale", "users", "files", "secrets", "sysctl", "ntp"}
SECTION = {"network": ("network", "dns"), "ntp": ("ntp",)}  # module → document keys it reads
SYSCTL_FILE = "/etc/sysctl.d/90-netslate.conf"
NETWORK_PREFIX = "10-netslate-"
SECRETS_DIR = "/run/netslate/secrets"
UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
MANAGED_GECOS = "netslate-managed"


class ModuleError(Exception):
    pass


@dataclass
class Ctx:
    root: Path
    live: bool = False
    previous: dict = field(default_factory=dict)  # the document applied before (for removals)
    kernel_cmdline: list[str] = field(default_factory=list)
    actions: list[list[str]] = field(default_factory=list)
    reboot_required: list[str] = field(default_factory=list)

    def path(self, p: str) -> Path:
        return under(self.root, p)

    def run(self, *cmd: str) -> None:
        self.actions.append(list(cmd))
        if not self.live:
            return
        if cmd[0] in ("systemctl", "networkctl") and not Path("/run/systemd/system").exists():
            return  # not booted with systemd (a container, a chroot): the files take effect at boot
        if cmd[0] == "networkctl" and not Path("/run/systemd/netif").exists():
            return  # systemd-networkd is not running in this image: nothing to reload
        try:
            proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModuleError(f"{' '.join(cmd)}: {exc}") from None
        if proc.returncode != 0:
            raise ModuleError(f"{' '.join(cmd)}: {(proc.stderr or proc.stdout).strip()[:200]}")


# ---------------------------------------------------------------- helpers


def write_if_changed(path: Path, data: bytes, mode: int = 0o644, uid: int | None = None, gid: int | None = None) -> bool:
    try:
        st = os.lstat(path)
        same = (not os.path.islink(path)) and path.read_bytes() == data and (st.st_mode & 0o7777) == mode
        if same and (uid is None or st.st_uid == uid) and (gid is None or st.st_gid == gid):
            return False
    except FileNotFoundError:
        pass
    if path.is_symlink() or path.is_dir():
        if path.is_dir() and not path.is_symlink():
            raise ModuleError(f"{path} is a directory")
        path.unlink()
    atomic_write(path, data, mode)
    if uid is not None or gid is not None:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
    return True


def symlink_if_changed(link: Path, target: str) -> bool:
    if link.is_symlink() and os.readlink(link) == target:
        return False
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_dir() and not link.is_symlink():
            raise ModuleError(f"{link} is a directory")
        link.unlink()
    os.symlink(target, link)
    return True


def _table(path: Path) -> list[list[str]]:
    try:
        return [line.split(":") for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def _write_table(path: Path, rows: list[list[str]], mode: int) -> bool:
    return write_if_changed(path, ("\n".join(":".join(r) for r in rows) + "\n").encode(), mode)


# ---------------------------------------------------------------- modules


def m_hostname(doc: dict, c: Ctx) -> list[str]:
    name = doc.get("hostname")
    if not name:
        return []
    name = str(name).strip()
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", name):
        raise ModuleError(f"invalid hostname {name[:60]!r}")
    changes = []
    if write_if_changed(c.path("/etc/hostname"), (name + "\n").encode()):
        changes.append("/etc/hostname")
    hosts = c.path("/etc/hosts")
    try:
        lines = hosts.read_text().splitlines()
    except FileNotFoundError:
        lines = ["127.0.0.1\tlocalhost"]
    short = name.split(".")[0]
    want = f"127.0.1.1\t{name}" + (f"\t{short}" if short != name else "")
    new = [ln for ln in lines if not ln.startswith("127.0.1.1")]
    new.insert(1 if new else 0, want)
    if write_if_changed(hosts, ("\n".join(new) + "\n").encode()):
        changes.append("/etc/hosts")
    if changes and c.live:
        try:
            Path("/proc/sys/kernel/hostname").write_text(name.split(".")[0])
        except OSError as exc:
            raise ModuleError(f"setting the kernel hostname: {exc}") from None
    return changes


def m_timezone(doc: dict, c: Ctx) -> list[str]:
    tz = doc.get("timezone")
    if not tz:
        return []
    if not re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*", tz):
        raise ModuleError(f"invalid timezone {tz[:60]!r}")
    zone = f"/usr/share/zoneinfo/{tz}"
    if not c.path(zone).exists():
        raise ModuleError(f"timezone {tz} is not in the image ({zone} missing)")
    changes = []
    if symlink_if_changed(c.path("/etc/localtime"), zone):
        changes.append("/etc/localtime")
    if write_if_changed(c.path("/etc/timezone"), (tz + "\n").encode()):
        changes.append("/etc/timezone")
    return changes


def m_locale(doc: dict, c: Ctx) -> list[str]:
    loc = doc.get("locale")
    if not loc:
        return []
    if not re.fullmatch(r"[A-Za-z0-9_.@-]+", loc):
        raise ModuleError(f"invalid locale {loc[:60]!r}")
    return ["/etc/default/locale"] if write_if_changed(c.path("/etc/default/locale"), f"LANG={loc}\n".encode()) else []


def _free_id(used: set[int], start: int = 1000) -> int:
    i = start
    while i in used:
        i += 1
    return i


def m_users(doc: dict, c: Ctx) -> list[str]:
    users = doc.get("users") or []
    prev = {u.get("name") for u in (c.previous.get("users") or []) if isinstance(u, dict)}
    if not users and not prev:
        return []
    pw_path, gr_path, sh_path = c.path("/etc/passwd"), c.path("/etc/group"), c.path("/etc/shadow")
    passwd, group, shadow = _table(pw_path), _table(gr_path), _table(sh_path)
    passwd = [r + [""] * (7 - len(r)) for r in passwd]
    group = [r + [""] * (4 - len(r)) for r in group]
    shadow = [r + [""] * (9 - len(r)) for r in shadow]
    by_user = {r[0]: r for r in passwd}
    by_group = {r[0]: r for r in group}
    by_shadow = {r[0]: r for r in shadow}
    errors = []
    wanted = {u["name"] for u in users}
    homes = []

    def ensure_group(name: str, gid: int | None = None) -> list[str]:
        if name not in by_group:
            used = {int(r[2]) for r in group if r[2].isdigit()}
            g = gid if gid is not None and gid not in used else _free_id(used)
            row = [name, "x", str(g), ""]
            group.append(row)
            by_group[name] = row
        return by_group[name]

    for u in users:
        name = u["name"]
        row = by_user.get(name)
        shell = u.get("shell") or ("/bin/bash" if c.path("/bin/bash").exists() else "/bin/sh")
        if row is None:
            used = {int(r[2]) for r in passwd if r[2].isdigit()}
            uid = u.get("uid")
            if uid is not None and uid in used:
                errors.append(f"{name}: uid {uid} is taken")
                continue
            uid = uid if uid is not None else _free_id(used)
            g = ensure_group(name, uid)
            row = [name, "x", str(uid), g[2], MANAGED_GECOS, f"/home/{name}", shell]
            passwd.append(row)
            by_user[name] = row
        else:
            if u.get("uid") is not None and str(u["uid"]) != row[2]:
                errors.append(f"{name}: exists with uid {row[2]}, not {u['uid']}")
                continue
            row[6] = shell
        hashv = u.get("password_hash") or "!"
        srow = by_shadow.get(name)
        if srow is None:
            srow = [name, hashv, "", "0", "99999", "7", "", "", ""]
            shadow.append(srow)
            by_shadow[name] = srow
        else:
            srow[1] = hashv
        for gname in u.get("groups") or []:
            g = ensure_group(gname)
            members = [m for m in g[3].split(",") if m]
            if name not in members:
                g[3] = ",".join(members + [name])
        homes.append((u, int(row[2]), int(row[3]), row[5]))
    # users we created before but the config no longer names: remove them (and their group memberships)
    for name in sorted(prev - wanted):
        row = by_user.get(name)
        if row is None or row[4] != MANAGED_GECOS:
            continue
        passwd.remove(row)
        by_user.pop(name)
        if name in by_shadow:
            shadow.remove(by_shadow.pop(name))
        for g in list(group):
            members = [m for m in g[3].split(",") if m and m != name]
            g[3] = ",".join(members)
            if g[0] == name and g[2] == row[3] and not members:  # the user's private group
                group.remove(g)
                by_group.pop(name, None)
    changes = []
    if _write_table(pw_path, passwd, 0o644):
        changes.append("/etc/passwd")
    if _write_table(gr_path, group, 0o644):
        changes.append("/etc/group")
    if _write_table(sh_path, shadow, 0o640):
        changes.append("/etc/shadow")
    for u, uid, gid, home in homes:
        h = c.path(home)
        if not h.exists():
            h.mkdir(parents=True, mode=0o750)
            os.chown(h, uid, gid)
            changes.append(home)
        keys = u.get("ssh_keys")
        ak = h / ".ssh" / "authorized_keys"
        if keys:
            d = h / ".ssh"
            if not d.exists():
                d.mkdir(mode=0o700)
                os.chown(d, uid, gid)
            if write_if_changed(ak, ("\n".join(k.strip() for k in keys) + "\n").encode(), 0o600, uid, gid):
                changes.append(f"{home}/.ssh/authorized_keys")
        elif ak.exists() and u["name"] in prev:
            ak.unlink()
            changes.append(f"{home}/.ssh/authorized_keys")
    if errors:
        raise ModuleError("; ".join(errors))
    return changes


def _owner(c: Ctx, owner: str | None, group: str | None) -> tuple[int | None, int | None]:
    uid = gid = None
    if owner:
        row = next((r for r in _table(c.path("/etc/passwd")) if r[0] == owner), None)
        if row is None:
            raise ModuleError(f"owner {owner!r} does not exist")
        uid, gid = int(row[2]), int(row[3])
    if group:
        row = next((r for r in _table(c.path("/etc/group")) if r[0] == group), None)
        if row is None:
            raise ModuleError(f"group {group!r} does not exist")
        gid = int(row[2])
    return uid, gid


def m_files(doc: dict, c: Ctx) -> list[str]:
    files = doc.get("files") or []
    changes, errors = [], []
    for f in files:
        try:
            if "content" not in f or f.get("content") is None:
                raise ModuleError("has no rendered content (templates are rendered by the server)")
            mode = int(f.get("mode") or "0644", 8)
            uid, gid = _owner(c, f.get("owner"), f.get("group"))
            if write_if_changed(c.path(f["path"]), f["content"].encode(), mode, uid, gid):
                changes.append(f["path"])
        except (ModuleError, OSError, ValueError) as exc:
            errors.append(f"{f.get('path')}: {exc}")
    new_paths = {f.get("path") for f in files}
    for f in c.previous.get("files") or []:
        p = f.get("path") if isinstance(f, dict) else None
        if p and p not in new_paths:
            target = c.path(p)
            if target.is_file() or target.is_symlink():
                target.unlink()
                changes.append(f"-{p}")
    if errors:
        raise ModuleError("; ".join(errors))
    return changes


def m_secrets(doc: dict, c: Ctx) -> list[str]:
    """Secrets go to /run (tmpfs), one file each, mode 0600; never into logs or reports."""
    secrets = doc.get("secrets") or {}
    d = c.path(SECRETS_DIR)
    changes = []
    for k, v in sorted(secrets.items()):
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", k) or k.startswith("."):
            raise ModuleError(f"secret name {k[:40]!r} is not a safe file name")
        if v is not None and write_if_changed(d / k, str(v).encode(), 0o600):
            changes.append(f"{SECRETS_DIR}/{k}")
    if d.is_dir():
        for p in d.iterdir():
            if p.name not in secrets:
                p.unlink()
                changes.append(f"-{SECRETS_DIR}/{p.name}")
    return changes


def _unit_file(c: Ctx, unit: str) -> str | None:
    names = [unit]
    m = re.fullmatch(r"(.+@)[^.]+(\.\w+)", unit)
    if m:
        names.append(m.group(1) + m.group(2))
    for d in UNIT_DIRS:
        for n in names:
            p = c.path(f"{d}/{n}")
            if p.exists() and not (p.is_symlink() and os.readlink(p) == "/dev/null"):
                return f"{d}/{n}"
    return None


def _wanted_by(text: str) -> list[str]:
    out, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Install]" and "=" in line:
            k, _, v = line.partition("=")
            if k.strip() in ("WantedBy", "RequiredBy"):
                suffix = ".wants" if k.strip() == "WantedBy" else ".requires"
                out += [t + suffix for t in v.split()]
    return out


UNIT_RE = re.compile(r"[A-Za-z0-9:_.\\@-]+\.(service|socket|timer|mount|target|path|automount|swap|slice)")


def m_units(doc: dict, c: Ctx) -> list[str]:
    units = doc.get("units") or {}
    prev = c.previous.get("units") or {}
    enable, disable, mask = units.get("enable") or [], units.get("disable") or [], units.get("mask") or []
    changes, errors, start, stop = [], [], [], []
    etc = "/etc/systemd/system"
    for u in enable + disable + mask:
        if not UNIT_RE.fullmatch(u):
            raise ModuleError(f"invalid unit name {u[:60]!r}")
    for u in mask:
        if symlink_if_changed(c.path(f"{etc}/{u}"), "/dev/null"):
            changes.append(f"mask {u}")
            stop.append(u)
    for u in (prev.get("mask") or []):
        link = c.path(f"{etc}/{u}")
        if u not in mask and link.is_symlink() and os.readlink(link) == "/dev/null":
            link.unlink()
            changes.append(f"unmask {u}")
    for u in enable:
        src = _unit_file(c, u)
        if src is None:
            errors.append(f"{u}: no such unit in the image")
            continue
        try:
            text = c.path(src).read_text(errors="replace")
        except OSError as exc:
            errors.append(f"{u}: {exc}")
            continue
        targets = _wanted_by(text) or ["multi-user.target.wants"]
        for t in targets:
            if symlink_if_changed(c.path(f"{etc}/{t}/{u}"), src):
                changes.append(f"enable {u}")
                start.append(u)
    for u in disable + mask:
        base = c.path(etc)
        if not base.is_dir():
            continue
        for d in base.iterdir():
            link = d / u
            if d.is_dir() and d.name.endswith((".wants", ".requires")) and link.is_symlink():
                link.unlink()
                changes.append(f"disable {u}")
                if u not in stop:
                    stop.append(u)
    if changes:
        c.run("systemctl", "daemon-reload")
        for u in dict.fromkeys(stop):
            c.run("systemctl", "stop", "--no-block", u)
        for u in dict.fromkeys(start):
            c.run("systemctl", "start", "--no-block", u)
    if errors:
        raise ModuleError("; ".join(errors))
    return changes


def _sysctl_value(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def m_sysctl(doc: dict, c: Ctx) -> list[str]:
    values = doc.get("sysctl") or {}
    path = c.path(SYSCTL_FILE)
    if not values:
        if path.exists():
            path.unlink()
            return [f"-{SYSCTL_FILE}"]
        return []
    for k in values:
        if not re.fullmatch(r"[a-z0-9_]+([./][A-Za-z0-9_-]+)+", k):
            raise ModuleError(f"invalid sysctl key {k[:60]!r}")
    text = "# written by netslate-agent\n" + "".join(f"{k} = {_sysctl_value(v)}\n" for k, v in sorted(values.items()))
    changed = write_if_changed(path, text.encode())
    errors = []
    if c.live:  # write the running values too, also when the file did not change (fresh boot)
        for k, v in sorted(values.items()):
            p = Path("/proc/sys") / k.replace(".", "/")
            try:
                if p.read_text().split() != _sysctl_value(v).split():
                    p.write_text(_sysctl_value(v))
            except OSError as exc:
                errors.append(f"{k}: {exc.strerror or exc}")
    if errors:
        raise ModuleError("; ".join(errors))
    return [SYSCTL_FILE] if changed else []


def unit_escape_path(path: str) -> str:
    """systemd-escape --path."""
    p = path.strip("/")
    if not p:
        return "-"
    out = []
    for i, ch in enumerate(p):
        if ch == "/":
            out.append("-")
        elif ch.isascii() and (ch.isalnum() or ch in ":_") or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "sshfs", "glusterfs", "ceph", "9p")


def m_mounts(doc: dict, c: Ctx) -> list[str]:
    mounts = doc.get("mounts") or []
    etc = "/etc/systemd/system"
    changes, start = [], []
    wanted = set()
    for m in mounts:
        where = m["where"].rstrip("/") or "/"
        if where == "/" or ".." in where.split("/"):
            raise ModuleError(f"refusing to mount over {where!r} (the root is the image)")
        name = unit_escape_path(where) + ".mount"
        wanted.add(name)
        remote = m["type"] in NETWORK_FS
        lines = ["[Unit]", f"Description=netslate mount {where}", "Documentation=netslate config mounts"]
        if remote:
            lines += ["Wants=network-online.target", "After=network-online.target"]
        lines += ["", "[Mount]", f"What={m['what']}", f"Where={where}", f"Type={m['type']}"]
        if m.get("options"):
            lines.append(f"Options={m['options']}")
        lines += ["", "[Install]", f"WantedBy={'remote-fs.target' if remote else 'local-fs.target'}", ""]
        if write_if_changed(c.path(f"{etc}/{name}"), "\n".join(lines).encode()):
            changes.append(f"{etc}/{name}")
            start.append(name)
        target = "remote-fs.target.wants" if remote else "local-fs.target.wants"
        if symlink_if_changed(c.path(f"{etc}/{target}/{name}"), f"{etc}/{name}"):
            changes.append(f"enable {name}")
    for m in c.previous.get("mounts") or []:
        name = unit_escape_path(str(m.get("where", "")).rstrip("/")) + ".mount"
        if name not in wanted:
            for p in (f"{etc}/{name}", f"{etc}/remote-fs.target.wants/{name}", f"{etc}/local-fs.target.wants/{name}"):
                if c.path(p).is_file() or c.path(p).is_symlink():
                    c.path(p).unlink()
                    changes.append(f"-{p}")
    if changes:
        c.run("systemctl", "daemon-reload")
        for n in start:
            c.run("systemctl", "restart", n)
    return changes


def pool_as_static(net: dict, dns: dict) -> tuple[dict, dict]:
    """`mode: pool` with the server's lease → the same thing as static settings (pure).

    The leased address goes on the first interface (by name) that has no addresses of its own,
    or, with no interfaces listed, on the Ethernet interfaces (en*/eth*). The pool's DNS servers
    apply unless the document sets its own."""
    lease = net["lease"]
    itf = {"dhcp": False, "addresses": [lease["cidr"]]}
    if lease.get("gateway"):
        itf["gateway"] = lease["gateway"]
    interfaces = {k: dict(v or {}) for k, v in (net.get("interfaces") or {}).items()}
    target = next((k for k in sorted(interfaces) if not interfaces[k].get("addresses")), None)
    if target is not None:
        interfaces[target] = {**interfaces[target], **itf}
    elif not interfaces:
        interfaces["*"] = itf
    if lease.get("dns") and not (dns or {}).get("servers"):
        dns = {**(dns or {}), "servers": list(lease["dns"])}
    return {"mode": "static", "interfaces": interfaces}, dns


def network_files(net: dict | None, dns: dict | None) -> dict[str, str]:
    """systemd-networkd files (name → content) for a network + dns section (pure)."""
    net = net or {}
    dns = dns or {}
    if net.get("mode") == "pool" and net.get("lease"):
        net, dns = pool_as_static(net, dns)
    dns_lines = [f"DNS={s}" for s in dns.get("servers") or []]
    if dns.get("search"):
        dns_lines.append("Domains=" + " ".join(dns["search"]))
    files: dict[str, str] = {}
    interfaces = net.get("interfaces") or {}
    mode = net.get("mode") or ("static" if interfaces else "dhcp")
    if not interfaces:
        if not net and not dns_lines:
            return {}
        body = ["[Match]", "Type=ether", "Name=en* eth*", "", "[Network]", "DHCP=yes"] + dns_lines
        files[f"{NETWORK_PREFIX}default.network"] = "\n".join(body) + "\n"
        return files
    for name, itf in sorted(interfaces.items()):
        itf = itf or {}
        safe = "default" if name == "*" else re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        if name == "*":  # a pool lease with no interface named: the Ethernet interfaces
            match = ["Type=ether", "Name=en* eth*"]
        else:
            match = [f"MACAddress={itf['mac']}"] if itf.get("mac") else [f"Name={name}"]
        body = ["[Match]"] + match + ["", "[Network]"]
        dhcp = itf.get("dhcp")
        if dhcp is None:
            dhcp = mode == "dhcp" or not itf.get("addresses")
        body.append(f"DHCP={'yes' if dhcp else 'no'}")
        body += [f"Address={a}" for a in itf.get("addresses") or []]
        if itf.get("gateway"):
            body.append(f"Gateway={itf['gateway']}")
        body += dns_lines
        if itf.get("mtu"):
            body += ["", "[Link]", f"MTUBytes={itf['mtu']}"]
        files[f"{NETWORK_PREFIX}{safe}.network"] = "\n".join(body) + "\n"
    return files


def m_network(doc: dict, c: Ctx) -> list[str]:
    net, dns = doc.get("network"), doc.get("dns")
    if (net or {}).get("mode") == "pool" and not (net or {}).get("lease"):
        why = (net or {}).get("lease_error") or "the server sent no lease"
        raise ModuleError(f"network mode 'pool' ({(net or {}).get('pool')}) came without an address: {why}")
    d = c.path("/etc/systemd/network")
    want = network_files(net, dns)
    changes = []
    for name, text in want.items():
        if write_if_changed(d / name, text.encode()):
            changes.append(f"/etc/systemd/network/{name}")
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith(NETWORK_PREFIX) and p.name not in want:
                p.unlink()
                changes.append(f"-/etc/systemd/network/{p.name}")
    if changes:
        c.run("networkctl", "reload")
    return changes


def m_ntp(doc: dict, c: Ctx) -> list[str]:
    ntp = doc.get("ntp") or {}
    path = c.path("/etc/systemd/timesyncd.conf.d/50-netslate.conf")
    if not ntp.get("servers"):
        if path.exists():
            path.unlink()
            return ["-/etc/systemd/timesyncd.conf.d/50-netslate.conf"]
        return []
    text = "[Time]\nNTP=" + " ".join(ntp["servers"]) + "\n"
    if write_if_changed(path, text.encode()):
        c.run("systemctl", "try-restart", "systemd-timesyncd.service")
        return ["/etc/systemd/timesyncd.conf.d/50-netslate.conf"]
    return []


def m_kernel_args(doc: dict, c: Ctx) -> list[str]:
    """Kernel arguments come from the boot script; the agent can only say a reboot is needed."""
    missing = [a for a in doc.get("kernel_args") or [] if a not in c.kernel_cmdline]
    if missing:
        c.reboot_required.append("kernel_args")
        raise ModuleError("not on the running kernel's command line (takes effect at the next boot): " + " ".join(missing))
    return []


FUNCS = {
    "hostname": m_hostname, "timezone": m_timezone, "locale": m_locale, "users": m_users, "files": m_files,
    "secrets": m_secrets, "units": m_units, "sysctl": m_sysctl, "mounts": m_mounts, "network": m_network,
    "ntp": m_ntp, "kernel_args": m_kernel_args,
}


def _keys(module: str) -> tuple[str, ...]:
    return SECTION.get(module, (module,))


def changed_modules(old: dict, new: dict) -> list[str]:
    """Modules whose part of the document differs between two documents (pure)."""
    return [m for m in MODULES if any(canonical(old.get(k)) != canonical(new.get(k)) for k in _keys(m))]


def present(doc: dict, prev: dict) -> list[str]:
    return [m for m in MODULES if any(doc.get(k) not in (None, {}, []) or prev.get(k) not in (None, {}, []) for k in _keys(m))]


def apply_all(doc: dict, c: Ctx, only: list[str] | None = None) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Run every module the document (or the previous one) uses. Returns ({module: "ok" | "error: ..."},
    {module: changes})."""
    results: dict[str, str] = {}
    changes: dict[str, list[str]] = {}
    for m in present(doc, c.previous):
        if only is not None and m not in only:
            continue
        try:
            ch = FUNCS[m](doc, c)
            results[m] = "ok"
            if ch:
                changes[m] = ch
        except ModuleError as exc:
            results[m] = f"error: {exc}"
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a broken module never stops the others
            results[m] = f"error: {type(exc).__name__}: {exc}"
    return results, changes
