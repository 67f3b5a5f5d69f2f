"""Pools: validation and persistence. Everything is checked before the first write."""

from __future__ import annotations

from sqlalchemy import select

from netslate import audit
from netslate.errors import Conflict, UserError
from netslate.names import check_name

from netslate.desktops import addresses, golden
from netslate.desktops import diskless as dl
from netslate.desktops import states as S
from netslate.desktops.hosts import select_hosts
from netslate.desktops.models import Desktop, DesktopAddress, DesktopHost, DesktopPool
from netslate.desktops.records import desktop_dict, get_pool

MAX_POOL_NAME = 40


def pool_dict(p: DesktopPool, desktops: list[Desktop] | None = None, addresses_used: int | None = None) -> dict:
    out = {
        "name": p.name, "golden": p.golden, "golden_version": p.golden_version, "size": p.size, "spare": p.spare,
        "max": p.max, "vcpus": p.vcpus, "memory_mib": p.memory_mib, "display": p.display, "video": p.video,
        "usb_redirect": p.usb_redirect, "smartcard": p.smartcard,
        "persistence": "persistent" if p.persistent else "none",
        "assignment": "dedicated" if p.dedicated else "floating",
        "ip_range": f"{p.ip_first}-{p.ip_last}", "hosts": p.hosts_selector, "network": p.network,
        "grace_seconds": p.grace_seconds, "snapshot_every_hours": p.snapshot_every_hours,
        "snapshot_keep": p.snapshot_keep, "diskless": p.diskless,
        "allow_reset": bool(p.allow_reset), "allow_release": bool(p.allow_release), "created_at": p.created_at.isoformat() + "Z",
    }
    if desktops is not None:
        counts: dict[str, int] = {}
        for d in desktops:
            counts[d.state] = counts.get(d.state, 0) + 1
        out["desktops"] = len(desktops)
        out["states"] = counts
    if addresses_used is not None:
        out["addresses_used"] = addresses_used
        out["addresses_total"] = addresses.range_size(p.ip_first, p.ip_last)
    return out


def _check_network(network: str) -> str:
    kind, sep, value = network.partition(":")
    if network in ("none", "user"):
        return network
    if kind in ("bridge", "network") and sep and value:
        check_name(value, f"{kind} name")
        return network
    raise UserError(f"--network {network!r}: use bridge:NAME, network:NAME, user or none")


def _check_schedule(persistent: bool, every: float | None, keep: int) -> None:
    if every is None:
        return
    if not persistent:
        raise UserError("--snapshot-every needs --persistence persistent (other desktops are reset anyway)")
    if not 0 < every <= 24 * 365:
        raise UserError("--snapshot-every must be more than 0 and at most 8760 hours")
    if not 1 <= keep <= 100:
        raise UserError("--snapshot-keep must be between 1 and 100")


def _check_reset(persistent: bool, allow_reset: bool) -> None:
    if persistent and allow_reset:
        raise UserError("--allow-reset needs a non-persistent pool (a persistent desktop keeps its disk; "
                        "its user can revert a snapshot instead)")


def validate_sizes(size: int, spare: int, max_: int, ip_first: str, ip_last: str) -> None:
    if size < 0 or spare < 0:
        raise UserError("--size and --spare must be 0 or more")
    if max_ < 1:
        raise UserError("--max must be at least 1")
    if size > max_:
        raise UserError(f"--size {size} is above --max {max_}")
    if spare > max_:
        raise UserError(f"--spare {spare} is above --max {max_}")
    n = addresses.range_size(ip_first, ip_last)
    if n < max_:
        raise UserError(f"--ip-range has {n} addresses, fewer than --max {max_}")


def create_pool(ctx, name: str, golden_ref: str | None, size: int, spare: int, max_: int | None, vcpus: int, memory_mib: int,
                display: str, usb_redirect: int, smartcard: bool, persistence: str, assignment: str, ip_range: str,
                hosts: str, actor: str, network: str = "none", video: str = "qxl", grace_seconds: float = 60.0,
                snapshot_every_hours: float | None = None, snapshot_keep: int = 7, diskless: str | None = None,
                allow_reset: bool = False, allow_release: bool = True) -> dict:
    check_name(name, "pool name")
    if len(name) > MAX_POOL_NAME:
        raise UserError(f"pool name {name!r} is longer than {MAX_POOL_NAME} characters")
    if (golden_ref is None) == (diskless is None):
        raise UserError("give exactly one of --golden IMG[@VER] and --diskless IMAGE[@TAG|@VER]")
    if diskless is not None:
        iname, iref = dl.parse_ref(diskless)
        ctx.library.resolve(iname, iref)  # unknown image or ref → NotFound, before anything is written
        diskless = f"{iname}@{iref}"
        if network and network not in ("none", "user") and ":" not in network:
            network = f"bridge:{network}"  # --network BR is a bridge
        if not (network.startswith("bridge:") or network.startswith("network:")):
            raise UserError("a diskless pool boots from the network: give --network BRIDGE (or network:NAME)")
        if persistence != "none":
            raise UserError("diskless desktops have no disk to keep: --persistence must be none")
        gname, gver = "", None
    else:
        gname, gver = golden.parse_ref(golden_ref)
        golden.resolve(ctx, gname, gver)  # unknown golden → NotFound, before anything is written
    max_ = size + spare if max_ is None else max_
    first, last = addresses.parse_range(ip_range)
    validate_sizes(size, spare, max_, first, last)
    if not 1 <= vcpus <= 64:
        raise UserError("--vcpus must be between 1 and 64")
    if not 64 <= memory_mib <= 1024 * 1024:
        raise UserError("--memory must be between 64 and 1048576 MiB")
    if display not in ("spice", "vnc"):
        raise UserError(f"--display {display!r}: choose spice or vnc")
    if video not in ("qxl", "virtio"):
        raise UserError(f"--video {video!r}: choose qxl or virtio")
    if not 0 <= usb_redirect <= 8:
        raise UserError("--usb-redirect must be between 0 and 8 channels")
    if display != "spice" and (usb_redirect or smartcard):
        raise UserError("USB redirection and smart cards need --display spice")
    if persistence not in ("none", "persistent"):
        raise UserError(f"--persistence {persistence!r}: choose none or persistent")
    if assignment not in ("floating", "dedicated"):
        raise UserError(f"--assignment {assignment!r}: choose floating or dedicated")
    if grace_seconds < 0:
        raise UserError("--grace must be 0 or more seconds")
    network = _check_network(network)
    _check_schedule(persistence == "persistent", snapshot_every_hours, snapshot_keep)
    _check_reset(persistence == "persistent", allow_reset)
    with ctx.db.session() as s:
        if s.scalar(select(DesktopPool).where(DesktopPool.name == name)):
            raise Conflict(f"a pool named {name!r} already exists")
        all_hosts = list(s.scalars(select(DesktopHost)))
        if not select_hosts(hosts, all_hosts):
            raise UserError(f"--hosts {hosts!r} matches no registered host (add one with `netslate host add NAME URI`)")
        for other in s.scalars(select(DesktopPool)):
            if addresses.ranges_overlap((first, last), (other.ip_first, other.ip_last)):
                raise Conflict(f"--ip-range {first}-{last} overlaps pool {other.name} ({other.ip_first}-{other.ip_last})")
        p = DesktopPool(name=name, golden=gname, golden_version=gver, size=size, spare=spare, max=max_, vcpus=vcpus,
                        memory_mib=memory_mib, display=display, video=video, usb_redirect=usb_redirect,
                        smartcard=smartcard, persistent=persistence == "persistent", dedicated=assignment == "dedicated",
                        ip_first=first, ip_last=last, hosts_selector=hosts, network=network, grace_seconds=grace_seconds,
                        snapshot_every_hours=snapshot_every_hours, snapshot_keep=snapshot_keep, diskless=diskless,
                        allow_reset=allow_reset, allow_release=allow_release)
        s.add(p)
        audit.record(s, actor, "desktop.pool.create", f"pool:{name}", golden=golden_ref, diskless=diskless, size=size,
                     spare=spare, max=max_)
        s.flush()
        return pool_dict(p, [], 0)


def list_pools(ctx) -> list[dict]:
    with ctx.db.read_session() as s:  # reads only: the branch's standby (issue 15)
        out = []
        for p in s.scalars(select(DesktopPool).order_by(DesktopPool.name)):
            ds = list(s.scalars(select(Desktop).where(Desktop.pool_id == p.id)))
            used = len(list(s.scalars(select(DesktopAddress.id).where(DesktopAddress.pool_name == p.name))))
            out.append(pool_dict(p, ds, used))
        return out


def show_pool(ctx, name: str) -> dict:
    with ctx.db.session() as s:
        p = get_pool(s, name)
        ds = list(s.scalars(select(Desktop).where(Desktop.pool_id == p.id).order_by(Desktop.number)))
        used = len(list(s.scalars(select(DesktopAddress.id).where(DesktopAddress.pool_name == p.name))))
        out = pool_dict(p, ds, used)
        out["desktop_list"] = [desktop_dict(s, d) for d in ds]
        return out


def resize_pool(ctx, name: str, actor: str, size: int | None = None, spare: int | None = None, max_: int | None = None,
                golden_ref: str | None = None, grace_seconds: float | None = None,
                snapshot_every_hours: float | None = None, snapshot_keep: int | None = None,
                allow_reset: bool | None = None, allow_release: bool | None = None) -> dict:
    gname = gver = None
    if golden_ref is not None:
        gname, gver = golden.parse_ref(golden_ref)
        golden.resolve(ctx, gname, gver)
    with ctx.db.session() as s:
        p = get_pool(s, name)
        new_size = p.size if size is None else size
        new_spare = p.spare if spare is None else spare
        new_max = p.max if max_ is None else max_
        validate_sizes(new_size, new_spare, new_max, p.ip_first, p.ip_last)
        if golden_ref is not None and p.diskless:
            raise UserError(f"pool {name} is diskless: it has no golden image (it boots {p.diskless})")
        if grace_seconds is not None and grace_seconds < 0:
            raise UserError("--grace must be 0 or more seconds")
        p.size, p.spare, p.max = new_size, new_spare, new_max
        if golden_ref is not None:
            p.golden, p.golden_version = gname, gver
        if grace_seconds is not None:
            p.grace_seconds = grace_seconds
        if snapshot_every_hours is not None or snapshot_keep is not None:
            every = p.snapshot_every_hours if snapshot_every_hours is None else (snapshot_every_hours or None)
            keep = p.snapshot_keep if snapshot_keep is None else snapshot_keep
            _check_schedule(p.persistent, every, keep)  # --snapshot-every 0 turns the schedule off
            p.snapshot_every_hours, p.snapshot_keep = every, keep
        if allow_reset is not None:
            _check_reset(p.persistent, allow_reset)
            p.allow_reset = allow_reset
        if allow_release is not None:
            p.allow_release = allow_release
        audit.record(s, actor, "desktop.pool.resize", f"pool:{name}", size=new_size, spare=new_spare, max=new_max,
                     golden=golden_ref, allow_reset=allow_reset, allow_release=allow_release)
        ds = list(s.scalars(select(Desktop).where(Desktop.pool_id == p.id)))
        used = len(list(s.scalars(select(DesktopAddress.id).where(DesktopAddress.pool_name == p.name))))
        return pool_dict(p, ds, used)


def remove_pool(ctx, name: str, actor: str, force: bool = False) -> int:
    """Delete the pool; its desktops go to `destroying` in the same transaction (the reconciler finishes)."""
    with ctx.db.session() as s:
        p = get_pool(s, name)
        ds = list(s.scalars(select(Desktop).where(Desktop.pool_id == p.id)))
        claimed = [d.name for d in ds if d.state in S.CLAIMED]
        if claimed and not force:
            raise Conflict(f"pool {name} has desktops in use ({', '.join(claimed)}); use --force to destroy them anyway")
        for d in ds:
            d.prior_state = d.state
            d.state = S.DESTROYING
            d.pool_id = None
        was_diskless = bool(p.diskless)
        s.delete(p)
        audit.record(s, actor, "desktop.pool.rm", f"pool:{name}", desktops=len(ds))
    if was_diskless:
        dl.remove_boot(ctx, name)  # the desktops' inventory entries go as the reconciler destroys them
    return len(ds)
