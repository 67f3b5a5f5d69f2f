"""`netslate image build`: a Debian tree from a YAML recipe with mmdebstrap, prepared and imported.

Pipeline: recipe (pydantic) → mmdebstrap into a temp dir → install_agent hook → extra files →
customise script (chrooted) → prepare_tree (machine-id, SSH host keys, logs, apt lists) →
kernel/initrd from /boot → `library.import_files`.

The recipe, mirror and command-line logic are pure; running mmdebstrap, chroot and the tree
clean-up are the I/O edges.
"""

import collections
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path, PurePosixPath
from typing import Callable, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from netslate.errors import UserError
from netslate.images import children, mounts, workdirs

DEFAULT_MIRROR = "http://deb.debian.org/debian"
# A fixed default epoch: mmdebstrap and dpkg use it for generated timestamps, so two builds of one
# recipe differ less and share more chunks.
DEFAULT_SOURCE_DATE_EPOCH = 1704067200
_PKG = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?([=/][A-Za-z0-9.+~:_-]+)?\Z")
_SUITE = re.compile(r"^[a-z][a-z0-9.-]{0,40}\Z")
_MIRROR = re.compile(r"^(https?|file)://[^\s'\"]+\Z")

Log = Callable[[str], None]


# ---------- recipe (pure) ----------


class ExtraFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    content: str | None = None
    source: str | None = None
    mode: int = 0o644

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not p.is_absolute() or ".." in p.parts or str(p) == "/" or "\x00" in v:
            raise ValueError(f"must be an absolute path inside the image without '..', got {v!r}")
        return str(p)

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v) -> int:
        try:
            m = int(v, 8) if isinstance(v, str) else int(v)
        except ValueError:
            raise ValueError(f"must be an octal mode such as '0644', got {v!r}") from None
        if not 0 <= m <= 0o7777:
            raise ValueError(f"must be between 0000 and 7777, got {v!r}")
        return m

    @model_validator(mode="after")
    def _one_source(self):
        if (self.content is None) == (self.source is None):
            raise ValueError("give exactly one of 'content' or 'source'")
        return self


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    suite: str = "bookworm"
    variant: Literal["extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important", "debootstrap", "standard"] = "minbase"
    mirror: str | None = None
    components: list[str] = Field(default_factory=lambda: ["main"])
    packages: list[str] = Field(default_factory=list)
    files: list[ExtraFile] = Field(default_factory=list)
    customise: str | None = Field(default=None, validation_alias=AliasChoices("customise", "customize"))
    source_date_epoch: int | None = Field(default=None, ge=0)

    @field_validator("suite")
    @classmethod
    def _suite(cls, v: str) -> str:
        if not _SUITE.match(v):
            raise ValueError(f"not a Debian suite name: {v!r}")
        return v

    @field_validator("mirror")
    @classmethod
    def _mirror(cls, v):
        if v is not None and not _MIRROR.match(v):
            raise ValueError(f"must be an http(s):// or file:// URL, got {v!r}")
        return v

    @field_validator("components")
    @classmethod
    def _components(cls, v: list[str]) -> list[str]:
        for c in v:
            if not re.match(r"^[a-z0-9-]+(/[a-z0-9-]+)?\Z", c):
                raise ValueError(f"not a component name: {c!r}")
        return v or ["main"]

    @field_validator("packages")
    @classmethod
    def _packages(cls, v: list[str]) -> list[str]:
        for p in v:
            if not isinstance(p, str) or not _PKG.match(p):
                raise ValueError(f"not a Debian package name: {p!r}")
        return v


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "recipe"
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_recipe(text: str, where: str = "recipe") -> Recipe:
    """YAML text → Recipe, or a one-line UserError naming every bad field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: a recipe is a YAML mapping (suite, variant, packages, files, customise)")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{where}: {_format_errors(exc)}") from None


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"recipe {path} does not exist") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as exc:
        raise UserError(f"cannot read recipe {path}: {exc}") from None
    recipe = parse_recipe(text, str(path))
    for i, f in enumerate(recipe.files):
        if f.source is not None:
            src = (path.parent / f.source)
            if not src.is_file():
                raise UserError(f"{path}: files.{i}.source: {src} does not exist")
    return recipe


def mirror_from_sources(deb822: dict[str, str], one_line: list[str]) -> str | None:
    """The host's main Debian mirror from its apt sources: deb822 files (name → text) first, then
    one-line sources.list texts. Security and backports/updates entries are skipped."""

    def usable(uri: str) -> bool:
        return bool(_MIRROR.match(uri)) and "security" not in uri

    for _name, text in sorted(deb822.items()):
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            suites = fields.get("suites", "").split()
            if suites and all("security" in s for s in suites):
                continue
            for uri in fields.get("uris", "").split():
                if usable(uri):
                    return uri.rstrip("/")
    for text in one_line:
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            words = words[1:]
            if words and words[0].startswith("["):
                while words and not words[0].endswith("]"):
                    words = words[1:]
                words = words[1:]
            if len(words) >= 2 and usable(words[0]) and "security" not in words[1]:
                return words[0].rstrip("/")
    return None


def host_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    deb822: dict[str, str] = {}
    one_line: list[str] = []
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        for p in sorted(d.iterdir()):
            try:
                if p.suffix == ".sources":
                    deb822[p.name] = p.read_text()
                elif p.suffix == ".list":
                    one_line.append(p.read_text())
            except OSError:
                continue
    try:
        one_line.insert(0, (etc_apt / "sources.list").read_text())
    except OSError:
        pass
    return mirror_from_sources(deb822, one_line) or DEFAULT_MIRROR


def mmdebstrap_command(recipe: Recipe, mirror: str, target: Path) -> list[str]:
    cmd = ["mmdebstrap", "--mode=root", "--format=directory", f"--variant={recipe.variant}",
           f"--components={','.join(recipe.components)}"]
    if recipe.packages:
        cmd.append(f"--include={','.join(recipe.packages)}")
    return cmd + [recipe.suite, str(target), mirror]


def _version_key(name: str) -> list:
    """Natural sort: vmlinuz-6.1.0-10-amd64 sorts after vmlinuz-6.1.0-9-amd64."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|[^\d]+", name)]


def pick_boot_files(names: list[str]) -> tuple[str | None, str | None]:
    """(kernel, initrd) file names from a /boot listing: the newest vmlinuz-VER, and the initrd of
    that same version if present (else the newest initrd)."""
    kernels = sorted((n for n in names if n.startswith("vmlinuz-")), key=_version_key)
    initrds = sorted((n for n in names if n.startswith("initrd.img-")), key=_version_key)
    kernel = kernels[-1] if kernels else None
    initrd = None
    if kernel:
        same = "initrd.img-" + kernel.removeprefix("vmlinuz-")
        initrd = same if same in initrds else None
    if initrd is None and initrds:
        initrd = initrds[-1]
    return kernel, initrd


# ---------- the tree (I/O) ----------


def inside(root: Path, rel: str) -> Path | None:
    """root/rel, or None when a parent component is a symlink or not a directory: prepared paths
    must never escape the tree (an absolute symlink would point at the build host)."""
    cur = Path(root)
    parts = [p for p in PurePosixPath(rel).parts if p not in ("/", "")]
    for p in parts[:-1]:
        if p == "..":
            return None
        cur = cur / p
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
    return cur / parts[-1] if parts else cur


def _remove(p: Path) -> bool:
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(p)
    else:
        os.unlink(p)
    return True


def _clear_dir(d: Path | None, keep_dirs: bool) -> int:
    """Remove the contents of d (files only when keep_dirs). Never follows symlinks."""
    if d is None or d.is_symlink() or not d.is_dir():
        return 0
    n = 0
    for dirpath, dirnames, filenames in os.walk(d, topdown=False):
        for f in filenames:
            os.unlink(os.path.join(dirpath, f))
            n += 1
        for sub in dirnames:
            full = os.path.join(dirpath, sub)
            if os.path.islink(full):
                os.unlink(full)
                n += 1
            elif not keep_dirs:
                os.rmdir(full)
                n += 1
    return n


def prepare_tree(root: Path) -> dict:
    """Make a tree fit to boot many machines: each boot must be unique and start clean.

    Idempotent: a path already in its prepared state is not touched (so an overlay working copy
    gets no needless copy-ups). Returns counts of what changed.
    """
    root = Path(root)
    done = {"machine_id": False, "ssh_host_keys": 0, "log_files": 0, "apt_files": 0, "tmp_entries": 0}
    mid = inside(root, "etc/machine-id")
    if mid is not None and (mid.parent.is_dir()):
        try:
            st = os.lstat(mid)
            needs = not stat.S_ISREG(st.st_mode) or st.st_size != 0
        except FileNotFoundError:
            needs = True
        if needs:
            _remove(mid)
            mid.write_bytes(b"")  # empty: systemd generates a fresh id at every boot
            os.chmod(mid, 0o444)
            done["machine_id"] = True
    dbus_mid = inside(root, "var/lib/dbus/machine-id")
    if dbus_mid is not None and _remove(dbus_mid):
        done["machine_id"] = True
    ssh = inside(root, "etc/ssh/x")
    if ssh is not None and ssh.parent.is_dir():
        for p in sorted(ssh.parent.glob("ssh_host_*")):
            _remove(p)
            done["ssh_host_keys"] += 1
    done["log_files"] = _clear_dir(inside(root, "var/log"), keep_dirs=True)
    done["apt_files"] += _clear_dir(inside(root, "var/lib/apt/lists"), keep_dirs=True)
    done["apt_files"] += _clear_dir(inside(root, "var/cache/apt"), keep_dirs=True)
    for rel in ("tmp", "var/tmp"):
        done["tmp_entries"] += _clear_dir(inside(root, rel), keep_dirs=False)
    hist = inside(root, "root/.bash_history")
    if hist is not None:
        _remove(hist)
    return done


def write_extra_files(root: Path, files: list[ExtraFile], recipe_dir: Path) -> None:
    for f in files:
        target = inside(root, f.path)
        if target is None:
            parent = PurePosixPath(f.path).parent
            mkdir_inside(root, str(parent))
            target = inside(root, f.path)
        if target is None:
            raise UserError(f"files: cannot write {f.path}: a parent in the image is a symlink or a file")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = f.content.encode() if f.content is not None else (recipe_dir / f.source).read_bytes()
        if target.is_symlink():
            target.unlink()
        target.write_bytes(data)
        os.chmod(target, f.mode)


def mkdir_inside(root: Path, rel: str) -> None:
    cur = Path(root)
    for p in PurePosixPath(rel).parts:
        if p in ("/", ""):
            continue
        cur = cur / p
        if cur.is_symlink():
            raise UserError(f"cannot create /{rel} in the image: /{cur.relative_to(root)} is a symlink")
        cur.mkdir(exist_ok=True)


def run_logged(cmd: list[str], log: Log, env: dict | None = None, tail_lines: int = 40, input_: bytes | None = None) -> tuple[int, list[str]]:
    """Run a chatty tool, passing each output line to `log` and keeping the last lines for errors."""
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    proc = children.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          env=env, text=True, errors="replace")  # dies with us (issue 11 #6)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        log(line)
    return proc.wait(), list(tail)


class BuildError(UserError):
    """A step failed; `tail` holds the last lines of its output for the user."""

    def __init__(self, message: str, tail: list[str]):
        super().__init__(message)
        self.tail = tail


def run_chrooted_script(root: Path, script: str, log: Log, what: str = "customise script") -> None:
    """Run a shell script inside `root` with /proc, /sys and /dev mounted; always unmounted after."""
    tmp = inside(root, "tmp")
    if tmp is None or not tmp.is_dir():
        mkdir_inside(root, "tmp")
    path = Path(root) / "tmp" / "netslate-script.sh"
    path.write_text(script)
    os.chmod(path, 0o755)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "TERM": os.environ.get("TERM", "dumb")}
    try:
        with mounts.api_filesystems(root):
            rc, tail = run_logged(mounts.chroot_command(root, ["/bin/sh", "-e", "/tmp/netslate-script.sh"]), log, env=env)
    finally:
        path.unlink(missing_ok=True)
    if rc != 0:
        raise BuildError(f"{what} failed with exit code {rc}", tail)


def install_agent(tree: Path, log: Log) -> bool:
    """Hook for the netslate agent: install it into the tree when the agent package exists.

    The agent part (`netslate.agent`) fills this in; until then it only logs. Returns True when
    an agent was installed.
    """
    agent_pkg = Path(__file__).resolve().parent.parent / "agent"
    if not agent_pkg.is_dir():
        log("netslate agent package not present (src/netslate/agent); image built without the agent")
        return False
    try:
        from netslate.agent import install as agent_install  # type: ignore[import-not-found]
    except ImportError:
        log("netslate agent package present but has no installer (netslate.agent.install); skipped")
        return False
    agent_install.install_into(Path(tree))
    log(f"installed the netslate agent ({agent_install.PYZ_PATH}, {agent_install.UNIT_NAME} enabled)")
    return True


def find_boot_files(root: Path) -> tuple[Path | None, Path | None]:
    boot = inside(root, "boot/x")
    if boot is None or not boot.parent.is_dir():
        return None, None
    names = [p.name for p in boot.parent.iterdir() if p.is_file() and not p.is_symlink()]
    kernel, initrd = pick_boot_files(names)
    return (boot.parent / kernel if kernel else None), (boot.parent / initrd if initrd else None)


def build_image(
    ctx,
    name: str,
    recipe_path: Path,
    tag: str | None = None,
    note: str = "",
    phase: Callable[[str], None] = lambda s: None,
    log: Log = lambda s: None,
    warn: Log = print,
    progress=None,
) -> dict:
    """Build NAME from a recipe and import it as a new version. Returns import_files' dict plus
    build details (mirror, seconds, prepare counts, warnings)."""
    import time

    from netslate.names import check_name

    check_name(name, "image name")
    if tag:
        check_name(tag, "tag")
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    if shutil.which("mmdebstrap") is None:
        raise UserError("mmdebstrap not found: install it (scripts/install-deps.sh does)")
    if os.geteuid() != 0:
        raise UserError("image build needs root (mmdebstrap --mode=root, chroot)")
    mirror = recipe.mirror or host_mirror()
    started = time.monotonic()
    warnings: list[str] = []
    work_root = ctx.data_dir / "tmp"
    workdirs.sweep(work_root)  # what killed imports and builds left behind (issue 11 #6)
    workdir = workdirs.WorkDir(work_root, "build")  # leased: gc spares it while we run
    work = workdir.path
    tree = work / "tree"
    try:
        phase(f"mmdebstrap {recipe.suite} ({recipe.variant}, {len(recipe.packages)} extra packages) from {mirror}")
        env = dict(os.environ)
        env["SOURCE_DATE_EPOCH"] = str(recipe.source_date_epoch if recipe.source_date_epoch is not None
                                       else os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_SOURCE_DATE_EPOCH))
        env.setdefault("LC_ALL", "C.UTF-8")
        rc, tail = run_logged(mmdebstrap_command(recipe, mirror, tree), log, env=env)
        if rc != 0:
            raise BuildError(f"mmdebstrap failed with exit code {rc}", tail)
        install_agent(tree, lambda m: phase(f"agent: {m}"))
        if recipe.files:
            phase(f"writing {len(recipe.files)} extra files")
            write_extra_files(tree, recipe.files, recipe_path.parent)
        if recipe.customise:
            phase("running the customise script (chrooted)")
            run_chrooted_script(tree, recipe.customise, log)
        phase("preparing the tree (machine-id, SSH host keys, logs, apt lists, /tmp)")
        prepared = prepare_tree(tree)
        kernel, initrd = find_boot_files(tree)
        if kernel is None:
            msg = "warning: no kernel in /boot (add a linux-image package to the recipe); the version has no kernel artifact"
            warnings.append(msg)
            warn(msg)
            if initrd is not None:
                initrd = None
        phase("importing (filesystem image, chunk, hash, compress)")
        result = ctx.library.import_files(
            name, rootfs=tree, kernel=kernel, initrd=initrd, tag=tag, note=note,
            source=f"build:{recipe_path.resolve()}", progress=progress, warn=warn,
        )
    finally:
        workdir.close()  # unmounts first (safe_rmtree), then drops the lease
    result.update({"mirror": mirror, "suite": recipe.suite, "variant": recipe.variant, "packages": recipe.packages,
                   "prepared": prepared, "kernel_file": kernel.name if kernel else None,
                   "initrd_file": initrd.name if initrd else None, "warnings": warnings,
                   "seconds": round(time.monotonic() - started, 1)})
    return result
