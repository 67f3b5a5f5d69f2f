"""Regression: an unknown machine under a `boot-default` policy with a default profile gets a boot script."""

import urllib.request

from netslate.boot import store as bstore


def test_unknown_machine_boots_the_site_default_profile(live_server, tmp_path):
    ctx = live_server.ctx
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k" * 5000)
    ctx.library.import_files("lab", kernel=kernel, tag="stable")
    bstore.add_profile(ctx, "lab-ram", image="lab", ref="stable")
    bstore.set_policy(ctx, "boot-default", default_profile="lab-ram")
    url = f"{live_server.url}/boot/ipxe?mac=52:54:00:00:00:77&arch=x86_64&platform=pcbios"
    with urllib.request.urlopen(url, timeout=10) as r:
        script = r.read().decode()
    assert r.status == 200
    assert "netslate.image=lab@1" in script
    assert "default profile of site default" in script


def test_local_image_rm_refuses_a_pinned_version(cli, tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k" * 5000)
    assert cli("image", "import", "lab", "--kernel", str(kernel)).code == 0
    assert cli("image", "import", "lab", "--kernel", str(kernel)).code == 0
    assert cli("machine", "add", "--mac", "52:54:00:00:00:78", "--name", "pc1").code == 0
    assert cli("machine", "pin", "pc1", "lab@1").code == 0
    r = cli("image", "rm", "lab@1")
    assert r.code == 2 and "pinned" in r.stderr
    assert cli("machine", "unpin", "pc1").code == 0
    assert cli("image", "rm", "lab@1").code == 0
