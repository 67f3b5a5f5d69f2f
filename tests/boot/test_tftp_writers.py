"""The TFTP root's writers (boot/tftp and boot/secureboot) rewrite a file only when its bytes
changed, through one comparison, `tftp.same_content`."""

from __future__ import annotations

from netslate.boot import secureboot, tftp


def test_same_content(tmp_path):
    p = tmp_path / "f"
    assert not tftp.same_content(p, b"")  # missing
    p.write_bytes(b"abc")
    assert tftp.same_content(p, b"abc")
    assert not tftp.same_content(p, b"abd")  # same size, other bytes
    assert not tftp.same_content(p, b"abcd")
    assert not tftp.same_content(p, b"")


def test_secure_boot_loaders_rewritten_only_when_changed(tmp_path):
    root = tmp_path / "tftp"
    assert sorted(secureboot.install_loaders(root)) == sorted(secureboot.SOURCES)
    assert secureboot.install_loaders(root) == []
    shim = root / "shimx64.efi"
    data = bytearray(shim.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte off: a truncated-copy check by size alone would miss it
    shim.write_bytes(bytes(data))
    assert secureboot.install_loaders(root) == ["shimx64.efi"]
    assert shim.read_bytes() == secureboot.SOURCES["shimx64.efi"].read_bytes()
    # the generated grub/ files go through the same writer
    assert secureboot.write_grub(root, {"grub/a.cfg": "# netslate\n"}) == ["grub/a.cfg"]
    assert secureboot.write_grub(root, {"grub/a.cfg": "# netslate\n"}) == []
    assert not hasattr(secureboot, "_same")
