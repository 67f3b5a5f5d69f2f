import shutil
from pathlib import Path

import os
import pytest

from images_trees import make_tree


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "tree")


@pytest.fixture
def kernel_file(tmp_path) -> Path:
    p = tmp_path / "vmlinuz"
    p.write_bytes(os.urandom(300_000))
    return p


@pytest.fixture
def copy_tree():
    def _copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst, symlinks=True)
        return dst

    return _copy
