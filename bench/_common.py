"""Helpers shared by the image benchmarks: machine facts, result files, image builders, a server."""

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WORK = Path(os.environ.get("NETSLATE_BENCH_DIR", "/var/tmp/netslate-bench"))


def machine() -> dict:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    osr = {}
    try:
        for line in open("/etc/os-release"):
            k, _, v = line.strip().partition("=")
            osr[k] = v.strip('"')
    except OSError:
        pass
    cpu = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1), "os": osr.get("PRETTY_NAME", ""),
            "kernel": platform.release(), "cpu": cpu, "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def record(name: str, result: dict) -> dict:
    """Print the result as JSON and append it to bench/results/<name>.json (a list of runs)."""
    result = {"benchmark": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(), **result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    runs = []
    if path.exists():
        try:
            runs = json.loads(path.read_text())
        except ValueError:
            runs = []
    runs.append(result)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs, indent=2) + "\n")
    os.replace(tmp, path)
    print(json.dumps(result, indent=2))
    return result


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed: {proc.stderr[-2000:]}")
    return proc


def squashfs(sources: list[Path], out: Path, compressed: bool = False) -> Path:
    out.unlink(missing_ok=True)
    flags = [] if compressed else ["-noI", "-noD", "-noF", "-noX"]
    run(["mksquashfs", *map(str, sources), str(out), *flags, "-mkfs-time", "0", "-no-progress", "-quiet", "-noappend"])
    return out


def erofs(source: Path, out: Path) -> Path:
    out.unlink(missing_ok=True)
    run(["mkfs.erofs", "--quiet", "-U5b6f1e0c-4c1b-4d7e-9a53-6e657473c1a7", "--preserve-mtime", str(out), str(source)])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def netslate(*args: str, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, NETSLATE_DATA_DIR=str(data_dir))
    env.pop("NETSLATE_SERVER", None)
    proc = subprocess.run([sys.executable, "-m", "netslate", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise SystemExit(f"netslate {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return proc


class Server:
    """`netslate serve` in its own process on loopback."""

    def __init__(self, data_dir: Path, extra_args: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, NETSLATE_DATA_DIR=str(data_dir))
        self.log = open(data_dir / "serve.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "netslate", "serve", "--listen", f"127.0.0.1:{self.port}", *extra_args],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise SystemExit(f"netslate serve did not start; see {data_dir / 'serve.log'}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


V1_PACKAGES = ["python3-minimal", "systemd", "systemd-sysv", "netbase", "iproute2"]
V2_EXTRA = ["less", "file", "bzip2"]


def debian_trees() -> tuple[Path, Path]:
    """Two prepared Debian trees built with mmdebstrap: v1, and v2 = v1 + less, file, bzip2.
    Cached under WORK/trees (delete it to rebuild)."""
    from netslate.images.build import DEFAULT_SOURCE_DATE_EPOCH, host_mirror, prepare_tree

    trees = WORK / "trees"
    out = []
    for label, pkgs in (("v1", V1_PACKAGES), ("v2", V1_PACKAGES + V2_EXTRA)):
        t = trees / label
        if not (t / ".done").exists():
            shutil.rmtree(t, ignore_errors=True)
            t.parent.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, SOURCE_DATE_EPOCH=str(DEFAULT_SOURCE_DATE_EPOCH))
            run(["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={','.join(pkgs)}", "bookworm", str(t), host_mirror()], env=env)
            prepare_tree(t)
            (t / ".done").write_text("")
        out.append(t)
    return out[0], out[1]
