"""Small root trees for image tests."""

import os
import random
from pathlib import Path


def make_tree(root: Path, seed: int = 1, files: int = 40, size: int = 60_000) -> Path:
    """A small root filesystem tree with varied, compressible and incompressible files."""
    rnd = random.Random(seed)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "hostname").write_text("template\n")
    (root / "usr" / "lib").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        if i % 2:
            data = bytes(rnd.getrandbits(8) for _ in range(size))
        else:
            data = ("".join(rnd.choice("abcdefgh \n") for _ in range(size))).encode()
        (root / "usr" / "lib" / f"file{i:03d}").write_bytes(data)
    os.symlink("usr/lib", root / "lib")
    return root


def change_tree(root: Path, seed: int = 2) -> None:
    """Change ~5% of the files: one modified, one added."""
    rnd = random.Random(seed)
    (root / "usr" / "lib" / "file004").write_bytes(b"changed " * 5000)
    (root / "usr" / "lib" / "added").write_bytes(bytes(rnd.getrandbits(8) for _ in range(40_000)))


