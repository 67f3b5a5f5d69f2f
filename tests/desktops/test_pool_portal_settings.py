"""The portal's pool settings (allow_reset, allow_release) through the real CLI, locally and over a
real server; and the self-service checks that need no running desktop."""

import pytest

from desktops_fixtures import traversable
from netslate.composition import Parts
from netslate.desktops import pools
from netslate.identity.caller import Caller
from netslate.services.desktops import LocalDesktops
from netslate.services.framework import Forbidden
from netslate.services.pools import LocalDesktopPools


def test_pool_settings_in_both_modes(cli, data_dir, desktop_guest):
    traversable(data_dir)
    assert cli("host", "add", "local", "qemu:///system", "--accel", "tcg").code == 0
    assert cli("desktop", "image", "import", "tiny", str(desktop_guest["v1"])).code == 0
    base = ["pool", "create", "--golden", "tiny", "--size", "0", "--spare", "0", "--max", "2", "--memory", "128"]
    p = cli(*base[:2], "lab", *base[2:], "--ip-range", "10.79.1.1-10.79.1.9", "--json").json()
    assert (p["allow_reset"], p["allow_release"]) == (False, True)  # the defaults
    p = cli(*base[:2], "lab2", *base[2:], "--ip-range", "10.79.2.1-10.79.2.9", "--allow-reset", "--no-allow-release",
            "--json").json()
    assert (p["allow_reset"], p["allow_release"]) == (True, False)
    p = cli("pool", "resize", "lab", "--allow-reset", "--no-allow-release", "--json").json()
    assert (p["allow_reset"], p["allow_release"]) == (True, False)
    assert cli("pool", "show", "lab", "--json").json()["allow_reset"] is True
    p = cli("pool", "resize", "lab", "--size", "1", "--json").json()  # other changes keep them
    assert (p["allow_reset"], p["allow_release"]) == (True, False)
    r = cli(*base[:2], "keep", *base[2:], "--ip-range", "10.79.3.1-10.79.3.9", "--persistence", "persistent",
            "--allow-reset")
    assert r.code == 2 and "--allow-reset needs a non-persistent pool" in r.stderr and "Traceback" not in r.stderr
    assert cli("pool", "show", "keep").code == 2  # nothing written


def test_self_service_is_for_people_and_entitled_pools(dctx):
    pools.create_pool(dctx, "lab", "tiny", 0, 0, 1, 1, 128, "spice", 0, False, "none", "floating",
                      "10.79.4.1-10.79.4.9", "*", "test")
    parts = Parts(dctx)
    for who in (Caller("anonymous", "-"), Caller("token", "ops", "admin"), Caller("machine", "7")):
        with pytest.raises(Forbidden):
            LocalDesktopPools(parts, who).mine()
        with pytest.raises(Forbidden):
            LocalDesktopPools(parts, who).request_mine("lab")
        with pytest.raises(Forbidden):
            LocalDesktops(parts, who).reset_mine("1")
    # a person without a session has no entitlements: nothing to see, and no desktop of lab
    person = Caller("user", "zoe")
    assert LocalDesktopPools(parts, person).mine() == []
    with pytest.raises(Forbidden, match="not entitled"):
        LocalDesktopPools(parts, person).request_mine("lab")
