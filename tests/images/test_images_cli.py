"""The real `netslate` command: local and --server modes, --json, one-line errors with exit code 2."""

import json
import os
import stat

from nstest import start_server


def test_cli_local_flow(cli, tree, kernel_file, tmp_path):
    r = cli("image", "import", "desk", "--rootfs", str(tree), "--kernel", str(kernel_file), "--tag", "stable", "--note", "v1", "--json")
    assert r.code == 0, r.stderr
    out = r.json()
    assert {"name", "version", "artifacts", "bytes_new", "bytes_total"} <= out.keys()
    assert out["version"] == 1
    r = cli("image", "list", "--json")
    assert r.json()[0]["tags"] == {"stable": 1}
    r = cli("image", "show", "desk@stable", "--json")
    assert r.json()["note"] == "v1" and r.json()["artifacts"]["kernel"]["size"] == kernel_file.stat().st_size
    r = cli("image", "import", "desk", "--rootfs", str(tree), "--json")
    assert r.json()["bytes_new"] == 0  # identical content stores nothing new
    r = cli("image", "diff", "desk", "1", "2", "--json")
    assert r.json()["chunks_new"] == 0
    r = cli("image", "tag", "desk", "2", "testing", "-m", "try it", "--json")
    assert r.json() == {"name": "desk", "tag": "testing", "version": 2}
    r = cli("image", "verify", "--json")
    assert r.code == 0 and r.json()["ok"]
    r = cli("key", "show", "--json")
    assert r.json()["fingerprint"].startswith("sha256:")
    r = cli("image", "rm", "desk@2")
    assert r.code == 2 and "in use" in r.stderr  # tagged testing


def test_cli_errors_are_one_line_exit_2(cli, tmp_path):
    cases = [
        ("image", "show", "nosuch"),
        ("image", "import", "../evil", "--rootfs", str(tmp_path)),
        ("image", "import", "x", "--rootfs", str(tmp_path / "missing")),
        ("image", "tag", "nosuch", "1", "stable"),
        ("image", "pull", "http://127.0.0.1:1", "x@1", "--cache", str(tmp_path / "c"), "--output", str(tmp_path / "o")),
        ("image", "bogus-subcommand"),
    ]
    for args in cases:
        r = cli(*args)
        assert r.code == 2, (args, r.code, r.stderr)
        assert "Traceback" not in r.stderr
        assert r.stderr.strip().count("\n") == 0 or args[-1] == "bogus-subcommand", r.stderr


def test_first_start_creates_admin_token_and_key_with_mode_0600(ctx):
    from netslate.server.auth import ensure_admin_token

    path, created = ensure_admin_token(ctx)
    assert created
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ctx.data_dir / "keys" / "signing.key").st_mode) == 0o600
    assert ensure_admin_token(ctx) == (path, False)


def test_cli_remote_mode_through_the_api(ctx, tree, kernel_file, tmp_path, cli):
    srv = start_server(ctx)
    try:
        env = {"NETSLATE_SERVER": srv.url, "NETSLATE_TOKEN": srv.admin_token}
        other = tmp_path / "unused-local"
        r = cli("image", "import", "remote", "--rootfs", str(tree), "--kernel", str(kernel_file), "--tag", "stable", "--json", env=env, data_dir=other)
        assert r.code == 0, r.stderr
        assert r.json()["version"] == 1
        assert ctx.library.resolve("remote", "stable").version == 1  # landed on the server
        r = cli("image", "import", "remote", "--rootfs", str(tree), "--json", env=env, data_dir=other)
        assert r.json()["version"] == 2 and r.json()["bytes_new"] == 0
        r = cli("image", "list", "--json", env=env, data_dir=other)
        assert r.json()[0]["versions"] == [1, 2]
        r = cli("image", "tag", "remote", "2", "stable", "--json", env=env, data_dir=other)
        assert r.json()["version"] == 2
        r = cli("image", "pull", srv.url, "remote@stable", "--cache", str(tmp_path / "cache"), "--output", str(tmp_path / "root.img"), "--json")
        assert r.code == 0 and r.json()["version"] == 2
        # Without a token, mutations are refused with a clear error.
        r = cli("image", "tag", "remote", "1", "stable", env={"NETSLATE_SERVER": srv.url}, data_dir=other)
        assert r.code == 2 and "401" in r.stderr
        assert not other.exists() or not (other / "netslate.db").exists()
    finally:
        srv.stop()
