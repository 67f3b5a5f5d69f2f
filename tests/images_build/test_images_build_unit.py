"""Pure parts of image build/edit: recipe validation, host mirror, mmdebstrap command, kernel pick, prepare."""

import os
from pathlib import Path

import pytest

from netslate.errors import UserError
from netslate.images import build as b


def test_recipe_defaults():
    r = b.parse_recipe("packages: [less, file]\n")
    assert (r.suite, r.variant, r.mirror, r.components) == ("bookworm", "minbase", None, ["main"])
    assert r.packages == ["less", "file"]


def test_recipe_full_and_customize_alias():
    r = b.parse_recipe(
        "suite: trixie\nvariant: apt\nmirror: http://m.example/debian\n"
        "files:\n  - {path: /etc/a, content: hi, mode: '0600'}\n  - {path: /etc/b, source: b.txt}\n"
        "customize: echo hi\n")
    assert r.suite == "trixie" and r.files[0].mode == 0o600 and r.files[1].mode == 0o644
    assert r.customise == "echo hi"


@pytest.mark.parametrize("text,needle", [
    ("variant: tiny\n", "variant"),
    ("packages: ['rm -rf /']\n", "not a Debian package name"),
    ("suite: ../x\n", "suite"),
    ("mirror: ftp://x\n", "mirror"),
    ("files:\n  - {path: etc/x, content: a}\n", "absolute path"),
    ("files:\n  - {path: /etc/../x, content: a}\n", "absolute path"),
    ("files:\n  - {path: /etc/x}\n", "exactly one of"),
    ("files:\n  - {path: /etc/x, content: a, mode: '999'}\n", "octal"),
    ("colour: blue\n", "colour"),
    ("- a list\n", "YAML mapping"),
    ("suite: [unclosed\n", "not valid YAML"),
])
def test_recipe_errors_are_one_clear_line(text, needle):
    with pytest.raises(UserError) as e:
        b.parse_recipe(text, "r.yaml")
    msg = str(e.value)
    assert needle in msg and msg.startswith("r.yaml") and "\n" not in msg


def test_load_recipe_checks_source_files(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("files:\n  - {path: /etc/x, source: missing.txt}\n")
    with pytest.raises(UserError, match="missing.txt does not exist"):
        b.load_recipe(p)
    with pytest.raises(UserError, match="does not exist"):
        b.load_recipe(tmp_path / "nope.yaml")


def test_mirror_from_deb822_skips_security():
    sec = "Types: deb\nURIs: http://security.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n"
    main = "Types: deb deb-src\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n"
    assert b.mirror_from_sources({"a.sources": sec + "\n" + main}, []) == "http://mirror.example/debian"
    assert b.mirror_from_sources({"a.sources": sec}, []) is None


def test_mirror_from_sources_list():
    text = "# comment\ndeb-src http://x/debian bookworm main\ndeb [arch=amd64 signed-by=/k] http://y/debian bookworm main\n"
    assert b.mirror_from_sources({}, [text]) == "http://y/debian"
    assert b.mirror_from_sources({}, ["deb http://s/debian-security bookworm-security main\n"]) is None


def test_host_mirror_falls_back(tmp_path):
    assert b.host_mirror(tmp_path) == b.DEFAULT_MIRROR
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text("Types: deb\nURIs: http://z/debian\nSuites: bookworm\n")
    assert b.host_mirror(tmp_path) == "http://z/debian"


def test_mmdebstrap_command():
    r = b.parse_recipe("packages: [less, file]\nvariant: minbase\n")
    cmd = b.mmdebstrap_command(r, "http://m/debian", Path("/t/tree"))
    assert cmd[0] == "mmdebstrap" and "--variant=minbase" in cmd and "--include=less,file" in cmd
    assert cmd[-3:] == ["bookworm", "/t/tree", "http://m/debian"]
    assert not any(c.startswith("--include") for c in b.mmdebstrap_command(b.parse_recipe(""), "http://m", Path("/t")))


def test_pick_boot_files_newest_by_version():
    names = ["vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-9-amd64",
             "initrd.img-6.1.0-10-amd64", "config-6.1.0-10-amd64", "System.map-6.1.0-10-amd64"]
    assert b.pick_boot_files(names) == ("vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-10-amd64")
    assert b.pick_boot_files(["vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-9-amd64"]) == ("vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-9-amd64")
    assert b.pick_boot_files(["config-1"]) == (None, None)


def test_find_boot_files_absent(tmp_path):
    assert b.find_boot_files(tmp_path) == (None, None)
    (tmp_path / "boot").mkdir()
    assert b.find_boot_files(tmp_path) == (None, None)


def _tree(root: Path) -> None:
    for d in ("etc/ssh", "var/lib/dbus", "var/log/apt", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "tmp/sub", "var/tmp", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/machine-id").write_text("0123456789abcdef\n")
    (root / "var/lib/dbus/machine-id").write_text("0123\n")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("k")
    (root / "etc/ssh/ssh_host_ed25519_key.pub").write_text("k")
    (root / "etc/ssh/sshd_config").write_text("keep")
    (root / "var/log/apt/history.log").write_text("x")
    (root / "var/log/dpkg.log").write_text("x")
    (root / "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease").write_text("x")
    (root / "var/cache/apt/pkgcache.bin").write_text("x")
    (root / "var/cache/apt/archives/less.deb").write_text("x")
    (root / "tmp/sub/f").write_text("x")
    (root / "var/tmp/f").write_text("x")
    (root / "root/.bash_history").write_text("ls\n")


def test_prepare_tree(tmp_path):
    _tree(tmp_path)
    done = b.prepare_tree(tmp_path)
    assert (tmp_path / "etc/machine-id").read_bytes() == b""
    assert not (tmp_path / "var/lib/dbus/machine-id").exists()
    assert sorted(p.name for p in (tmp_path / "etc/ssh").iterdir()) == ["sshd_config"]
    assert (tmp_path / "var/log/apt").is_dir() and not list((tmp_path / "var/log").rglob("*.log"))
    assert (tmp_path / "var/lib/apt/lists/partial").is_dir() and not any(p.is_file() for p in (tmp_path / "var/lib/apt/lists").rglob("*"))
    assert not any(p.is_file() for p in (tmp_path / "var/cache/apt").rglob("*"))
    assert list((tmp_path / "tmp").iterdir()) == [] and list((tmp_path / "var/tmp").iterdir()) == []
    assert not (tmp_path / "root/.bash_history").exists()
    assert done["ssh_host_keys"] == 2 and done["machine_id"] and done["log_files"] == 2
    # Idempotent: a prepared tree is left alone (no overlay copy-ups for nothing).
    st = os.stat(tmp_path / "etc/machine-id")
    again = b.prepare_tree(tmp_path)
    assert again == {"machine_id": False, "ssh_host_keys": 0, "log_files": 0, "apt_files": 0, "tmp_entries": 0}
    assert os.stat(tmp_path / "etc/machine-id").st_mtime_ns == st.st_mtime_ns


def test_prepare_tree_never_follows_symlinks_out(tmp_path):
    outside = tmp_path / "host"
    (outside / "ssh").mkdir(parents=True)
    (outside / "ssh" / "ssh_host_rsa_key").write_text("host key")
    (outside / "log").mkdir()
    (outside / "log" / "syslog").write_text("host log")
    (outside / "machine-id").write_text("host id\n")
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "var").mkdir()
    os.symlink(outside / "ssh", root / "etc" / "ssh")
    os.symlink(outside / "log", root / "var" / "log")
    os.symlink(outside / "machine-id", root / "etc" / "machine-id")
    b.prepare_tree(root)
    assert (outside / "ssh" / "ssh_host_rsa_key").read_text() == "host key"
    assert (outside / "log" / "syslog").read_text() == "host log"
    assert (outside / "machine-id").read_text() == "host id\n"
    assert not (root / "etc" / "machine-id").is_symlink() and (root / "etc" / "machine-id").read_bytes() == b""


def test_write_extra_files_refuses_symlink_escape(tmp_path):
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    os.symlink(tmp_path, root / "etc" / "evil")
    r = b.parse_recipe("files:\n  - {path: /etc/new/dir/f, content: hi, mode: '0640'}\n")
    b.write_extra_files(root, r.files, tmp_path)
    f = root / "etc/new/dir/f"
    assert f.read_text() == "hi" and (f.stat().st_mode & 0o7777) == 0o640
    bad = b.parse_recipe("files:\n  - {path: /etc/evil/x, content: hi}\n")
    with pytest.raises(UserError, match="symlink"):
        b.write_extra_files(root, bad.files, tmp_path)
    assert not (tmp_path / "x").exists()


def test_pull_plan_fetches_runs_and_singles():
    from netslate.images.pull import plan_fetches

    ids = [f"{i:064x}" for i in range(10)]
    chunks = [[i * 10, 10, ids[i]] for i in range(10)]
    # cold: one long run, split at max_bytes
    runs, singles = plan_fetches(chunks, set(ids), 3, 40)
    assert [[c[2] for c in r] for r in runs] == [ids[0:4], ids[4:8]] and singles == ids[8:10]
    # delta: scattered chunks stay single (compressed /chunks fetches); a long enough gap-free stretch is a run
    runs, singles = plan_fetches(chunks, {ids[1], ids[3], ids[5], ids[6], ids[7]}, 3, 1000)
    assert [[c[2] for c in r] for r in runs] == [ids[5:8]] and singles == [ids[1], ids[3]]
    # a chunk id repeated in the artifact is fetched once
    dup = chunks[:3] + [[30, 10, ids[0]]]
    runs, singles = plan_fetches(dup, {ids[0], ids[1], ids[2]}, 2, 1000)
    assert [[c[2] for c in r] for r in runs] == [ids[0:3]] and singles == []
