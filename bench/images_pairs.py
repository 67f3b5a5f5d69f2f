"""The two image pairs the image benchmarks use (issue 14), built once and cached under WORK/pairs:

  * "bench":  Debian bookworm minbase + python3-minimal systemd systemd-sysv netbase iproute2 (v1),
              the same + less file bzip2 (v2) — the pair bench/images_update.py always used;
  * "issue":  minbase + openssh-server curl vim-tiny (v1); minbase + openssh-server curl git htop
              tmux (v2: adds three packages, removes vim-tiny, and edits a few /etc files).

Each tree is an mmdebstrap build (SOURCE_DATE_EPOCH fixed) prepared like `image build` does, then
an uncompressed squashfs made exactly as `netslate image import DIR` makes it.
Run directly to build them: `python bench/images_pairs.py`.
"""

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import V1_PACKAGES, V2_EXTRA, WORK, run  # noqa: E402

PAIRS = {
    "bench": (V1_PACKAGES, V1_PACKAGES + V2_EXTRA, {}),
    "issue": (["openssh-server", "curl", "vim-tiny"], ["openssh-server", "curl", "git", "htop", "tmux"], {
        "etc/motd": "Managed by netslate. Lab image v2.\n",
        "etc/hostname": "lab-v2\n",
        "etc/ssh/sshd_config.d/lab.conf": "PasswordAuthentication no\nPermitRootLogin prohibit-password\n",
        "etc/environment": "EDITOR=nano\n",
    }),
}


def _tree(dest: Path, packages: list[str], edits: dict[str, str]) -> Path:
    from netslate.images.build import DEFAULT_SOURCE_DATE_EPOCH, host_mirror, prepare_tree

    if (dest / ".done").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(DEFAULT_SOURCE_DATE_EPOCH))
    run(["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={','.join(packages)}", "bookworm", str(dest), host_mirror()], env=env)
    for rel, text in edits.items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    prepare_tree(dest)
    (dest / ".done").write_text("")
    return dest


def pair(label: str) -> tuple[Path, Path]:
    """(v1.img, v2.img): uncompressed squashfs files of the pair, built once."""
    from netslate.images.rootfs import build_squashfs

    v1_pkgs, v2_pkgs, edits = PAIRS[label]
    out = []
    for v, pkgs, ed in (("v1", v1_pkgs, {}), ("v2", v2_pkgs, edits)):
        img = WORK / "pairs" / label / f"{v}.img"
        if not img.exists():
            tree = _tree(WORK / "pairs" / label / f"{v}-tree", pkgs, ed)
            tmp = img.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            build_squashfs(tree, tmp)
            os.replace(tmp, img)
        out.append(img)
    return out[0], out[1]


if __name__ == "__main__":
    for lab in sys.argv[1:] or list(PAIRS):
        print(lab, *pair(lab))
