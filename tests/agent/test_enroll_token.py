"""The agent's side of one-time enrollment tokens (issue 13 §3, §4): SMBIOS type 11 parsing from the
raw bytes the kernel exposes, token files on the NETSLATE disk / ESP / /etc/netslate, and the
exchange against a real server over HTTP (once; a spent token file is discarded)."""

import os

import pytest

from netslate import inventory
from netslate.agent import enroll, enroll_token as et
from netslate.config import credentials
from netslate.enrollment import tokens

# A type 11 structure exactly as QEMU builds it for `-smbios type=11,value=A,value=B` (handle 0x0B00,
# formatted area of 5 bytes: type, length, handle, count; then the string set ending in a double NUL).
TOK = "nse_" + "A" * 20 + "-_" + "b" * 21
QEMU_TYPE11 = bytes.fromhex("0b05000b02") + b"netslate-enroll:" + TOK.encode() + b"\0" + b"other=1\0" + b"\0"


def test_parse_type11_bytes():
    assert et.parse_smbios_strings(QEMU_TYPE11) == (11, ["netslate-enroll:" + TOK, "other=1"])
    assert et.oem_strings_of(QEMU_TYPE11) == ["netslate-enroll:" + TOK, "other=1"]
    assert et.token_in(et.oem_strings_of(QEMU_TYPE11)) == TOK
    # no strings at all: the set is just two NULs
    assert et.parse_smbios_strings(bytes.fromhex("0b05000b00") + b"\0\0") == (11, [])
    for bad in (b"\x0b", bytes.fromhex("0b09000b01") + b"x\0\0", bytes.fromhex("0b05000b01") + b"x\0"):
        try:
            et.oem_strings_of(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"accepted {bad!r}")
    try:
        et.oem_strings_of(bytes.fromhex("0105000100") + b"\0\0")  # type 1 is not OEM strings
    except ValueError as exc:
        assert "not 11" in str(exc)
    # a malformed token after the prefix is ignored
    assert et.token_in(["netslate-enroll:nse_short", "x"]) is None


def test_find_token_smbios_first_then_files(tmp_path):
    root = tmp_path / "root"
    assert et.find_token(root) == (None, None, [])
    lkg = root / "netslate" / "lkg"
    lkg.mkdir(parents=True)
    f = root / "netslate" / et.TOKEN_FILE  # on the NETSLATE disk (cache mode)
    other = "nse_" + "c" * 43
    f.write_text(other + "\n")
    assert et.find_token(root, lkg) == (other, str(f), [f])
    esp = root / "boot" / "efi"
    esp.mkdir(parents=True)
    (esp / et.TOKEN_FILE).write_text("netslate-enroll:" + other)
    f.unlink()
    assert et.find_token(root, lkg)[0] == other
    entry = root / "sys/firmware/dmi/entries/11-0"
    entry.mkdir(parents=True)
    (entry / "raw").write_bytes(QEMU_TYPE11)
    assert et.find_token(root, lkg) == (TOK, "smbios", [])


def test_enroll_with_token_against_a_real_server(ctx, live_server, tmp_path):
    mid = inventory.add_machine(ctx, ["52:54:00:00:13:31"], name="pc1", actor="local:test")["id"]
    t = tokens.create(ctx, "local:test", machine=mid)["token"]
    root = tmp_path / "root"
    (root / "etc/netslate").mkdir(parents=True)
    tf = root / "etc/netslate" / et.TOKEN_FILE  # typed at the console
    tf.write_text(t + "\n")
    facts = {"dmi": {"product_uuid": None}, "net": {"interfaces": []}}
    answer = et.enroll_with_token(live_server.url, facts, root, root / "run/netslate/lkg", timeout=10)
    assert answer["machine_id"] == mid and answer["trust"] == "token"
    assert answer["source"] == str(tf) and not tf.exists()  # spent: the file is gone
    assert credentials.authenticate(ctx, answer["credential"]).machine_id == mid
    # nothing left: nothing to do
    assert et.enroll_with_token(live_server.url, facts, root, None) is None
    # the same token again (say, still in the SMBIOS strings of a VM that rebooted): refused, clearly
    tf.write_text(t)
    with pytest.raises(et.EnrollTokenRefused, match="used already"):
        et.enroll_with_token(live_server.url, facts, root, None, timeout=10)
    assert not tf.exists()
    # a host token bound to a domain UUID, from the SMBIOS strings, refused from another UUID
    uuid = "0d6f3c1a-9b8e-4c7d-a6f5-e4d3c2b1a090"
    h = tokens.create(ctx, "local:test", domain_uuid=uuid, kind="host")["token"]
    entry = root / "sys/firmware/dmi/entries/11-0"
    entry.mkdir(parents=True)
    (entry / "raw").write_bytes(bytes.fromhex("0b05000b01") + f"netslate-enroll:{h}".encode() + b"\0\0")
    os.chmod(entry / "raw", 0o400)  # root only, as in the kernel
    with pytest.raises(et.EnrollTokenRefused, match="another machine"):
        et.enroll_with_token(live_server.url, {"dmi": {"product_uuid": "0d6f3c1a-9b8e-4c7d-a6f5-000000000000"}}, root, None, timeout=10)
    answer = et.enroll_with_token(live_server.url, {"dmi": {"product_uuid": uuid}}, root, None, timeout=10)
    assert answer["trust"] == "host" and answer["source"] == "smbios"
    # the agent's Enroller: no TPM here, so the token path (a fresh admin token in a file) → the credential is saved
    lkg = root / "run/netslate/lkg"
    (root / "etc/netslate" / et.TOKEN_FILE).write_text(tokens.create(ctx, "local:test", machine=mid)["token"])
    e = enroll.Enroller(root, lkg, 10)
    assert e.method == "token" and e.due()
    assert e.step(live_server.url, facts) is None and e.state == "enrolled"
    cred = (lkg / "credential").read_text().strip()
    assert oct((lkg / "credential").stat().st_mode & 0o777) == "0o600"
    assert credentials.authenticate(ctx, cred).trust == "token" and not e.due()
    # a later start with the credential in place spends nothing
    (root / "etc/netslate" / et.TOKEN_FILE).write_text(tokens.create(ctx, "local:test", machine=mid)["token"])
    e = enroll.Enroller(root, lkg, 10)
    assert e.step(live_server.url, facts) is None and e.state == "enrolled"
    assert (root / "etc/netslate" / et.TOKEN_FILE).exists() and (lkg / "credential").read_text().strip() == cred
