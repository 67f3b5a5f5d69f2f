"""A real mmdebstrap build, then the edit workflow on it: edit → commit → v2, abort, conflicts.

One build per module (about 20-40 s); each edit test works on its own copy of the built version,
imported under another name (all its chunks are shared, so that is quick).
"""

import contextlib
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from netslate.context import Context
from netslate.images import manifest as mf
from nstest import run_cli

RECIPE = """\
suite: bookworm
variant: minbase
packages: [netbase]
files:
  - path: /etc/netslate/hello
    content: "hello from the recipe\\n"
    mode: "0600"
customise: |
  echo customise-ran
  mkdir -p /etc/ssh
  echo fake-key > /etc/ssh/ssh_host_ed25519_key
  echo fake-key > /etc/ssh/ssh_host_ed25519_key.pub
  echo a log line > /var/log/custom.log
  echo 0123456789abcdef0123456789abcdef > /etc/machine-id
  echo kernel-9 > /boot/vmlinuz-6.1.0-9-amd64
  echo kernel-10 > /boot/vmlinuz-6.1.0-10-amd64
  echo initrd-10 > /boot/initrd.img-6.1.0-10-amd64
"""


def _mounted_under(path: Path) -> list[str]:
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=True).stdout
    base = str(Path(path).resolve())
    return [m for m in out.split() if m.startswith(base)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    data = root / "data"
    recipe = root / "small.yaml"
    recipe.write_text(RECIPE)
    r = run_cli("image", "build", "base", "--recipe", str(recipe), "--tag", "stable", "--json", data_dir=data, timeout=900)
    assert r.code == 0, r.stderr[-3000:]
    info = r.json()
    ctx = Context(data).init()
    yield {"data": data, "ctx": ctx, "info": info, "recipe": recipe, "stderr": r.stderr, "root": root}
    assert _mounted_under(data) == []


def _artifact_file(ctx, name, ref, art, out: Path) -> Path:
    record = ctx.library.resolve(name, ref).artifacts[art]
    with open(out, "wb") as f:
        for part in ctx.library.read_range(record, 0, record["size"]):
            f.write(part)
    return out


@contextlib.contextmanager
def mounted_rootfs(ctx, name, ref, tmp_path: Path):
    img = _artifact_file(ctx, name, ref, "rootfs", tmp_path / f"{name}-{ref}.img")
    mp = tmp_path / f"mnt-{name}-{ref}"
    mp.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", str(img), str(mp)], check=True)
    try:
        yield mp
    finally:
        subprocess.run(["umount", str(mp)], check=True)


@pytest.fixture
def copy_of_base(built, tmp_path, request):
    """A fresh image (its own name) whose v1 is the built version, so edit tests are independent."""
    ctx = built["ctx"]
    name = "e-" + request.node.name.removeprefix("test_")[:40].replace("_", "-")
    base = ctx.library.resolve("base", "1").artifacts
    records = {k: mf.ArtifactRecord(a["size"], a["sha256"], a["chunks"], a.get("format")) for k, a in base.items()}
    res = ctx.library.register_version(name, records, source="test copy of base@1")
    assert res["version"] == 1
    yield name
    assert _mounted_under(built["data"]) == []


def cli(built, *args, **kw):
    return run_cli(*args, data_dir=built["data"], **kw)


def test_build_result(built):
    info = built["info"]
    assert info["name"] == "base" and info["version"] == 1 and info["tag"] == "stable"
    assert info["packages"] == ["netbase"] and info["suite"] == "bookworm" and info["variant"] == "minbase"
    assert info["kernel_file"] == "vmlinuz-6.1.0-10-amd64" and info["initrd_file"] == "initrd.img-6.1.0-10-amd64"
    assert info["artifacts"]["rootfs"]["size"] > 50 * 2**20 and info["warnings"] == []
    assert info["prepared"]["ssh_host_keys"] == 2 and info["prepared"]["machine_id"] is True
    shown = cli(built, "image", "show", "base@stable", "--json").json()
    assert shown["source"] == f"build:{built['recipe'].resolve()}"
    ctx = built["ctx"]
    kernel = b"".join(ctx.library.read_range(ctx.library.resolve("base", "1").artifacts["kernel"], 0, 10))
    assert kernel == b"kernel-10\n"


def test_built_tree_is_prepared(built, tmp_path):
    with mounted_rootfs(built["ctx"], "base", "1", tmp_path) as root:
        assert (root / "etc/machine-id").read_bytes() == b""
        assert not (root / "var/lib/dbus/machine-id").exists()
        assert list((root / "etc/ssh").glob("ssh_host_*")) == []
        assert (root / "var/log").is_dir() and [p for p in (root / "var/log").rglob("*") if p.is_file()] == []
        assert (root / "var/log/apt").is_dir()  # directories are kept
        assert [p for p in (root / "var/lib/apt/lists").rglob("*") if p.is_file()] == []
        assert list((root / "tmp").iterdir()) == []
        hello = root / "etc/netslate/hello"
        assert hello.read_text() == "hello from the recipe\n" and (hello.stat().st_mode & 0o777) == 0o600
        assert (root / "etc/services").is_file()  # from the netbase package
        assert (root / "usr/bin/dpkg").is_file()
        # install_agent hook: the agent goes in whenever the netslate.agent package exists
        agent_pkg = Path(__import__("netslate").__file__).parent / "agent" / "install.py"
        assert (root / "usr/lib/netslate/netslate-agent.pyz").is_file() == agent_pkg.is_file()
        assert (root / "etc/systemd/system/multi-user.target.wants/netslate-agent.service").is_symlink() == agent_pkg.is_file()


def test_bad_recipe_is_one_line_exit_2(built, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("variant: huge\npackages: ['a b']\n")
    r = cli(built, "image", "build", "x", "--recipe", str(bad))
    assert r.code == 2 and "variant" in r.stderr and "not a Debian package name" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_build_failure_shows_tail(built, tmp_path):
    rec = tmp_path / "fail.yaml"
    rec.write_text("packages: [netbase]\nmirror: http://127.0.0.1:9/debian\n")  # nothing listens on port 9
    r = cli(built, "image", "build", "broken", "--recipe", str(rec), timeout=300)
    assert r.code == 2 and "mmdebstrap failed" in r.stderr and "last lines of output" in r.stderr
    assert not any((built["data"] / "tmp").glob("build-*"))
    assert cli(built, "image", "show", "broken").code == 2


EDIT_SCRIPT = """\
echo running-edit
echo "added by the edit" > /etc/netslate/edited
mkdir -p /etc/apt/sources.list.d
echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/backports.list
printf 'Package: netslate-demo\\nStatus: install ok installed\\nVersion: 1.0\\n\\n' >> /var/lib/dpkg/status
rm -f /etc/services
echo 99999999999999999999999999999999 > /etc/machine-id
echo new-key > /etc/ssh/ssh_host_rsa_key
echo log > /var/log/edit.log
"""


def test_edit_commit_stores_only_changes(built, copy_of_base, tmp_path):
    name, ctx = copy_of_base, built["ctx"]
    script = tmp_path / "edit.sh"
    script.write_text(EDIT_SCRIPT)
    r = cli(built, "image", "edit", name, "--script", str(script), "--json")
    assert r.code == 0, r.stderr
    assert r.json()["base_version"] == 1 and r.json()["changed_paths"] >= 5
    assert _mounted_under(built["data"]) == []  # nothing stays mounted between edit and commit
    state = json.loads((built["data"] / "edit" / name / "state.json").read_text())
    assert state["base_version"] == 1
    r = cli(built, "image", "commit", name, "-m", "add backports source", "--tag", "testing", "--json")
    assert r.code == 0, r.stderr
    c = r.json()
    assert c["version"] == 2 and c["parent_version"] == 1 and c["boot_changed"] is False
    assert c["prepared"]["machine_id"] is True and c["prepared"]["ssh_host_keys"] == 1
    d = cli(built, "image", "diff", name, "1", "2", "--json").json()
    assert d["bytes_new"] == c["bytes_new"] and d["bytes_new"] < 4 * 2**20
    assert d["new_fraction"] < 0.05 and d["chunks_shared"] > 10 * d["chunks_new"]
    assert not (built["data"] / "edit" / name).exists()
    shown = cli(built, "image", "show", f"{name}@testing", "--json").json()
    assert shown["version"] == 2 and shown["parent_version"] == 1 and shown["note"] == "add backports source"
    assert shown["source"] == f"edit:{name}@1"
    v1, v2 = ctx.library.resolve(name, "1").artifacts, ctx.library.resolve(name, "2").artifacts
    assert v2["kernel"]["sha256"] == v1["kernel"]["sha256"] and v2["initrd"]["sha256"] == v1["initrd"]["sha256"]
    with mounted_rootfs(ctx, name, "2", tmp_path) as root:
        assert (root / "etc/netslate/edited").read_text() == "added by the edit\n"
        assert "bookworm-backports" in (root / "etc/apt/sources.list.d/backports.list").read_text()
        assert "netslate-demo" in (root / "var/lib/dpkg/status").read_text()
        assert not (root / "etc/services").exists()
        assert (root / "etc/machine-id").read_bytes() == b""
        assert list((root / "etc/ssh").glob("ssh_host_*")) == []
        assert not (root / "var/log/edit.log").exists()
        assert not (root / "tmp/netslate-script.sh").exists()
        assert (root / "etc/netslate/hello").read_text() == "hello from the recipe\n"


def test_abort_discards_and_unmounts(built, copy_of_base, tmp_path):
    name = copy_of_base
    script = tmp_path / "s.sh"
    script.write_text("echo x > /etc/aborted\n")
    assert cli(built, "image", "edit", name, "--script", str(script)).code == 0
    assert (built["data"] / "edit" / name / "state.json").exists()
    r = cli(built, "image", "edit", name, "--abort", "--json")
    assert r.code == 0 and r.json()["aborted"] is True
    assert not (built["data"] / "edit" / name).exists() and _mounted_under(built["data"]) == []
    assert [v["version"] for v in cli(built, "image", "versions", name, "--json").json()] == [1]
    r = cli(built, "image", "commit", name, "-m", "nothing")
    assert r.code == 2 and "no edit" in r.stderr
    r = cli(built, "image", "edit", name, "--abort")
    assert r.code == 2 and "no edit" in r.stderr


def test_second_edit_refused_then_resume(built, copy_of_base, tmp_path):
    name = copy_of_base
    s1, s2 = tmp_path / "1.sh", tmp_path / "2.sh"
    s1.write_text("echo one > /etc/one\n")
    s2.write_text("echo two > /etc/two\n")
    assert cli(built, "image", "edit", name, "--script", str(s1)).code == 0
    r = cli(built, "image", "edit", name, "--script", str(s2))
    assert r.code == 2 and "already open" in r.stderr and "base version 1" in r.stderr and "Traceback" not in r.stderr
    assert cli(built, "image", "edit", name, "--script", str(s2), "--resume").code == 0
    c = cli(built, "image", "commit", name, "-m", "both", "--json")
    assert c.code == 0, c.stderr
    with mounted_rootfs(built["ctx"], name, "2", tmp_path) as root:
        assert (root / "etc/one").read_text() == "one\n" and (root / "etc/two").read_text() == "two\n"


def test_commit_refused_when_image_moved_on(built, copy_of_base, tmp_path):
    name, ctx = copy_of_base, built["ctx"]
    script = tmp_path / "s.sh"
    script.write_text("echo x > /etc/x\n")
    assert cli(built, "image", "edit", name, "--script", str(script)).code == 0
    other = tmp_path / "other"
    (other / "etc").mkdir(parents=True)
    (other / "etc" / "hostname").write_text("other\n")
    assert ctx.library.import_files(name, rootfs=other, source="concurrent")["version"] == 2
    r = cli(built, "image", "commit", name, "-m", "late")
    assert r.code == 2 and "newer than this edit's base version 1" in r.stderr
    assert [v["version"] for v in ctx.library.list_versions(name)] == [1, 2]
    assert (built["data"] / "edit" / name / "state.json").exists()  # the edit is kept until aborted
    assert cli(built, "image", "edit", name, "--abort").code == 0


def test_failing_script_unmounts_and_keeps_edit(built, copy_of_base, tmp_path):
    name = copy_of_base
    script = tmp_path / "fail.sh"
    script.write_text("echo before > /etc/partial\necho about-to-fail\nexit 3\n")
    r = cli(built, "image", "edit", name, "--script", str(script))
    assert r.code == 2 and "exit code 3" in r.stderr and "--abort" in r.stderr
    assert "about-to-fail" in r.stderr
    assert _mounted_under(built["data"]) == []
    assert (built["data"] / "edit" / name / "upper" / "etc" / "partial").exists()
    assert cli(built, "image", "edit", name, "--abort").code == 0


def test_commit_takes_new_kernel_when_boot_changed(built, copy_of_base, tmp_path):
    name, ctx = copy_of_base, built["ctx"]
    script = tmp_path / "k.sh"
    script.write_text("echo kernel-11 > /boot/vmlinuz-6.1.0-11-amd64\necho initrd-11 > /boot/initrd.img-6.1.0-11-amd64\n")
    assert cli(built, "image", "edit", name, "--script", str(script)).code == 0
    c = cli(built, "image", "commit", name, "-m", "kernel 11", "--json")
    assert c.code == 0, c.stderr
    assert c.json()["boot_changed"] is True
    art = ctx.library.resolve(name, "2").artifacts
    assert art["kernel"]["sha256"] == hashlib.sha256(b"kernel-11\n").hexdigest()
    assert art["initrd"]["sha256"] == hashlib.sha256(b"initrd-11\n").hexdigest()


def test_edit_errors(built, tmp_path):
    r = cli(built, "image", "edit", "nosuch", "--script", "/dev/null")
    assert r.code == 2 and "no image named" in r.stderr
    r = cli(built, "image", "edit", "base", input="")  # no --script and stdin is a pipe, not a terminal
    assert r.code == 2 and "--script" in r.stderr
    r = cli(built, "image", "edit", "../etc", "--abort")
    assert r.code == 2 and "invalid image name" in r.stderr
    assert not (built["data"] / "edit" / "base").exists()
