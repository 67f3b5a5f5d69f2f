"""Kill test (issue 11): `kill -9` at random moments during `image import`, `config publish` and
`image gc`, through the real CLI in a subprocess on a real data directory.

Afterwards: `image verify` reports nothing corrupt or missing, no version is half-made (list,
versions and show agree; every chunk of every version's manifest is in the store), no temporary
file outlives the next `image gc`, no child of a killed command survives (no process with the data
directory in its command line, no child seen before the kill still alive), and the config
generations are consistent (current = newest, numbers without gaps, the active generation loads,
its bundle verifies against the server's key).

Bounded: RUNS kills per operation (seeded RNG), each command bounded by a time-out.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from netslate.config import workingcopy
from netslate.context import Context
from netslate.crypto.envelope import open_envelope
from netslate.store.models import Machine

RUNS = 8  # kills per operation (docs/security.md)
SEED = 1107
TIMEOUT = 120.0  # seconds any one command may take


def _env(data_dir: Path) -> dict:
    env = dict(os.environ, NETSLATE_DATA_DIR=str(data_dir))
    env.pop("NETSLATE_SERVER", None)
    env.pop("NETSLATE_TOKEN", None)
    return env


def _start(data_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "netslate", *args], env=_env(data_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def _run(data_dir: Path, *args: str) -> tuple[int, str, str]:
    p = _start(data_dir, *args)
    out, err = p.communicate(timeout=TIMEOUT)
    return p.returncode, out.decode(), err.decode()


def _json(data_dir: Path, *args: str):
    code, out, err = _run(data_dir, *args, "--json")
    assert code == 0, (args, code, err[-2000:])
    return json.loads(out)


def _procs() -> dict[int, tuple[int, str, str]]:
    """pid → (parent pid, state, command line) of every process (zombies included)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        out[int(d)] = (int(rest[1]), rest[0], cmd)
    return out


def _descendants(pid: int) -> dict[int, str]:
    procs = _procs()
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for p, (ppid, _st, cmd) in procs.items():
            if ppid == parent and p not in found:
                found[p] = cmd
                todo.append(p)
    return found


def _alive(pid: int) -> bool:
    info = _procs().get(pid)
    return info is not None and info[1] not in ("Z", "X")


def _survivors(data_dir: Path, children: dict[int, str], wait: float = 0.5) -> list[str]:
    """Processes still running after a kill: children seen before it, or anything naming the data dir."""
    deadline = time.monotonic() + wait
    while True:
        left = [f"{p} {c[:200]}" for p, c in children.items() if _alive(p)]
        left += [f"{p} {cmd[:200]}" for p, (_pp, st, cmd) in _procs().items()
                 if str(data_dir) in cmd and st not in ("Z", "X") and p != os.getpid()]
        if not left or time.monotonic() > deadline:
            for pid in [*children, *(p for p, (_pp, _st, cmd) in _procs().items() if str(data_dir) in cmd)]:
                if pid != os.getpid() and _alive(pid):  # survivors would keep writing: the test ends them
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            return sorted(set(left))
        time.sleep(0.1)


def _kill_at(proc: subprocess.Popen, delay: float, freeze: bool = False) -> tuple[dict[int, str], bool]:
    """SIGKILL `proc` after `delay` seconds (or when it ended). Returns (its children just before, killed?).

    With `freeze`, its children are stopped (SIGSTOP) just before: a child that would die with its
    parent dies stopped too, and one that would not cannot finish its work in the meantime and
    escape the check (mksquashfs of a small tree ends within a second)."""
    deadline = time.monotonic() + delay
    children: dict[int, str] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        children.update(_descendants(proc.pid))
        time.sleep(0.02)
    if proc.poll() is not None:
        proc.communicate()
        return children, False
    now = _descendants(proc.pid)
    children.update(now)
    if freeze:
        for pid in now:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    return children, True


def _wait_child(proc: subprocess.Popen, name: str, limit: float = 60.0) -> bool:
    """Wait until `proc` has a child whose command is `name` (e.g. mksquashfs running)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if any(c.split(" ", 1)[0].endswith(name) for c in _descendants(proc.pid).values()):
            return True
        time.sleep(0.01)
    return False


def _make_tree(root: Path, files: int = 40, size: int = 256 * 1024, seed: int = 0) -> Path:
    rnd = random.Random(seed)
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("kill-test\n")
    (root / "usr" / "lib").mkdir(parents=True)
    for i in range(files):
        (root / "usr" / "lib" / f"f{i:03d}").write_bytes(rnd.randbytes(size))
    # a sparse file: mksquashfs reads 1 GiB of holes (about a second) and stores them in a few KiB,
    # so a kill lands while it runs without filling the disk
    with open(root / "usr" / "lib" / "sparse", "wb") as f:
        f.truncate(1 << 30)
    return root


def _temp_leftovers(data_dir: Path) -> list[str]:
    """Temporary files of the images part: work dirs and their leases, chunk temp files, import leases."""
    left = []
    tmp = data_dir / "tmp"
    if tmp.is_dir():
        left += [f"tmp/{p.name}" for p in tmp.iterdir() if p.name.startswith(("import-", "build-"))]
    chunks = data_dir / "chunks"
    if chunks.is_dir():
        left += [str(p.relative_to(data_dir)) for p in chunks.glob("*/.tmp-*")]
    imports = data_dir / "imports"
    if imports.is_dir():
        left += [f"imports/{p.name}" for p in imports.iterdir()]
    return sorted(left)


def _check_images(data_dir: Path) -> None:
    v = _json(data_dir, "image", "verify")
    assert v["ok"] and v["corrupt"] == [] and v["missing"] == [], v
    listed = _json(data_dir, "image", "list")
    ctx = Context(data_dir).init()
    for img in listed:
        versions = _json(data_dir, "image", "versions", img["name"])
        numbers = sorted(x["version"] for x in versions)
        assert numbers == sorted(img["versions"]) and img["latest"] == max(numbers), (img, numbers)
        for n in numbers:
            shown = ctx.library.show(img["name"], n) if n not in (numbers[0], numbers[-1]) else \
                _json(data_dir, "image", "show", f"{img['name']}@{n}")  # the CLI for two, to bound the time
            assert shown["version"] == n and shown["artifacts"], shown
            resolved = ctx.library.resolve(img["name"], n)
            for art, rec in resolved.artifacts.items():
                assert shown["artifacts"][art]["size"] == rec["size"]
                total = 0
                for _off, size, cid in rec["chunks"]:
                    assert ctx.chunks.locate(cid) is not None, f"{img['name']}@{n}:{art} lacks chunk {cid}"
                    total += size
                assert total == rec["size"], f"{img['name']}@{n}:{art}: chunks add up to {total}, not {rec['size']}"


def _check_config(data_dir: Path) -> None:
    st = _json(data_dir, "config", "status")
    assert st["current"] == st["latest"] and st["canary"] is None, st
    history = _json(data_dir, "config", "history")
    assert [g["generation"] for g in history] == list(range(st["latest"], 0, -1)), history
    assert [g["generation"] for g in history if g["current"]] == [st["current"]]
    node = _json(data_dir, "config", "show", "/", "--generation", str(st["current"]))
    assert node["document"].get("extra", {}).get("motd", "").startswith("round "), node
    code, out, err = _run(data_dir, "config", "bundle", "pc1")
    assert code == 0, err
    ctx = Context(data_dir).init()
    payload = open_envelope(json.loads(out), ctx.signing_key.public_bytes)
    assert payload["generation"] == st["current"] and payload["document"]["extra"] == node["document"]["extra"]


def test_kill_9_during_import_publish_and_gc(tmp_path):
    rnd = random.Random(SEED)
    data = tmp_path / "data"
    ctx = Context(data).init()
    with ctx.db.session() as s:
        s.add(Machine(name="pc1", tree_path="/", labels={}, status={}))
    tree = _make_tree(tmp_path / "tree")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(random.Random(1).randbytes(300_000))

    # one complete run of each, for the time window the kills are drawn from
    t0 = time.monotonic()
    code, _out, err = _run(data, "image", "import", "kt", "--rootfs", str(tree), "--kernel", str(kernel), "--tag", "stable")
    assert code == 0, err
    import_time = time.monotonic() - t0
    workingcopy.set_value(ctx, "/", "extra.motd", "round base", "test")
    t0 = time.monotonic()
    assert _run(data, "config", "publish", "-m", "base")[0] == 0
    publish_time = time.monotonic() - t0
    t0 = time.monotonic()
    assert _run(data, "image", "gc", "--grace", "0")[0] == 0
    gc_time = time.monotonic() - t0

    figures = {"import": [0, 0], "publish": [0, 0], "gc": [0, 0]}  # [runs, killed]
    with_child = 0
    failures: list[str] = []
    for i in range(RUNS):
        # image import: every other run is killed while mksquashfs runs, the others at a random moment
        (tree / "usr" / "lib" / f"f{i % 7:03d}").write_bytes(rnd.randbytes(200_000))
        p = _start(data, "image", "import", "kt", "--rootfs", str(tree), "--kernel", str(kernel))
        if i % 2 == 0:
            assert _wait_child(p, "mksquashfs"), "the import never ran mksquashfs"
            delay = rnd.uniform(0.0, 0.2)
        else:
            delay = rnd.uniform(0.05, import_time * 1.1)
        children, killed = _kill_at(p, delay, freeze=i % 2 == 0)
        figures["import"][0] += 1
        figures["import"][1] += killed
        with_child += killed and any("mksquashfs" in c for c in children.values())
        left = _survivors(data, children)
        if left:
            failures.append(f"import run {i}: survived the kill: {left}")

        # config publish
        workingcopy.set_value(ctx, "/", "extra.motd", f"round {i}", "test")
        p = _start(data, "config", "publish", "-m", f"round {i}")
        children, killed = _kill_at(p, rnd.uniform(0.05, publish_time * 1.1))
        figures["publish"][0] += 1
        figures["publish"][1] += killed
        left = _survivors(data, children)
        if left:
            failures.append(f"publish run {i}: survived the kill: {left}")

        # image gc, with something to collect: the newest untagged version goes
        versions = ctx.library.list_versions("kt")
        untagged = [v["version"] for v in versions if not v["tags"]]
        if untagged:
            ctx.library.remove_version("kt", max(untagged), actor="test")
        p = _start(data, "image", "gc", "--grace", "0")
        children, killed = _kill_at(p, rnd.uniform(0.05, gc_time * 1.1))
        figures["gc"][0] += 1
        figures["gc"][1] += killed
        left = _survivors(data, children)
        if left:
            failures.append(f"gc run {i}: survived the kill: {left}")

    print(f"baseline: import {import_time:.1f} s, publish {publish_time:.1f} s, gc {gc_time:.1f} s")
    print("kill figures (runs, killed):", figures, "killed while mksquashfs ran:", with_child)
    assert with_child >= RUNS // 2 - 1, f"only {with_child} kills landed while mksquashfs ran"
    assert sum(k for _r, k in figures.values()) >= RUNS, figures
    assert not failures, failures

    # publishing still works after the killed ones
    workingcopy.set_value(ctx, "/", "extra.motd", "round final", "test")
    code, _out, err = _run(data, "config", "publish", "-m", "final")
    assert code == 0, err

    # the next gc removes every temporary file the killed commands left
    g = _json(data, "image", "gc", "--grace", "0")
    assert _temp_leftovers(data) == [], (_temp_leftovers(data), g)
    _check_images(data)
    _check_config(data)
    # and an import still works afterwards
    code, _out, err = _run(data, "image", "import", "kt", "--rootfs", str(tree))
    assert code == 0, err
    assert _temp_leftovers(data) == []
