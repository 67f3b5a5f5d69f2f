"""Standard library only, proven: every module of the on-machine library, of the agent's zipapp and
of the initramfs's boot code imports in a Python started with `-I -S` (no site-packages, no
PYTHONPATH) whose only extra path is a copy of exactly the files that ship."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import netslate
from netslate.agent import install
from netslate.initramfs import build

PKG = Path(netslate.__file__).parent
THIRD_PARTY = ("cryptography", "pydantic", "fastapi", "sqlalchemy", "httpx", "zstandard", "pyfastcdc", "dnslib",
               "typer", "jinja2", "hypothesis", "pytest")

# Imports every module named in argv[2:] from the tree argv[1]; prints what was imported from
# outside the standard library, and which third-party packages this interpreter could find.
PROBE = r"""
import importlib, importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
for name in sys.argv[2:]:
    importlib.import_module(name)
outside = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names) - set(sys.builtin_module_names) - {"__main__"})
findable = [p for p in %r if importlib.util.find_spec(p) is not None]
print(json.dumps({"outside": outside, "findable": findable,
                  "files": sorted({getattr(sys.modules[n], "__file__", "") or "" for n in sys.argv[2:]})}))
""" % (THIRD_PARTY,)


def modules_of(tree: Path) -> list[str]:
    """Dotted names of every .py file under tree/netslate (but `__main__`, which runs on import)."""
    out = []
    for f in sorted((tree / "netslate").rglob("*.py")):
        parts = f.relative_to(tree).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def probe(tree: Path, modules: list[str]) -> dict:
    r = subprocess.run([sys.executable, "-I", "-S", "-c", PROBE, str(tree), *modules],
                       capture_output=True, text=True, timeout=120, cwd=tree)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout)
    assert info["findable"] == [], info  # the probe really has no third-party packages
    assert info["outside"] == ["netslate"], info  # nothing but the standard library and the copied files
    assert all(f.startswith(str(tree)) for f in info["files"]), info["files"]  # the copies, not the source tree
    return info


def copy_files(dest: Path, rels: list[str]) -> None:
    for rel in rels:
        target = dest / "netslate" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((PKG / rel).read_bytes())


def test_onmachine_imports_only_the_standard_library_and_itself():
    """A static check with a clear message, before the runtime proof below."""
    stdlib = set(sys.stdlib_module_names)
    for f in sorted((PKG / "onmachine").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{f.name}: use absolute imports"
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib or name == "__future__" or name.startswith("netslate.onmachine"), \
                    f"{f.name} imports {name}: the on-machine library is standard library only"


def test_onmachine_package_imports_without_site_packages(tmp_path):
    rels = ["__init__.py"] + [f"onmachine/{p.name}" for p in sorted((PKG / "onmachine").glob("*.py"))]
    copy_files(tmp_path, rels)
    modules = modules_of(tmp_path)
    assert "netslate.onmachine.srv" in modules and "netslate.onmachine.envelope" in modules
    probe(tmp_path, modules)


def test_agent_zipapp_tree_is_stdlib_only_and_carries_the_library(tmp_path):
    tree = tmp_path / "tree"
    files = install.stage(tree)
    assert "netslate/onmachine/srv.py" in files and "netslate/onmachine/fsutil.py" in files
    assert not any(f.startswith(("netslate/crypto/", "netslate/images/")) or f == "netslate/fsutil.py" for f in files)
    assert "netslate/agent/install.py" not in files
    modules = modules_of(tree)
    assert {"netslate.agent.runner", "netslate.agent.dnssrv", "netslate.onmachine.envelope"} <= set(modules)
    probe(tree, modules)
    # the zipapp itself: the same files, and it runs in a bare interpreter
    info = install.build_zipapp(tmp_path / "agent.pyz")
    with zipfile.ZipFile(info["output"]) as z:
        names = set(z.namelist())
    assert {"__main__.py", "netslate/onmachine/srv.py", "netslate/onmachine/ed25519.py", "netslate/agent/cli.py"} <= names
    assert not any(n.startswith("netslate/crypto/") for n in names) and "netslate/fsutil.py" not in names
    r = subprocess.run([sys.executable, "-I", "-S", info["output"], "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "run" in r.stdout, r.stderr


def test_initramfs_boot_code_is_stdlib_only(tmp_path):
    rels = build.netslate_files()
    assert "initramfs/build.py" not in rels  # the builder is host side
    assert {"onmachine/srv.py", "onmachine/manifest.py", "images/pull.py", "initramfs/bootargs.py",
            "initramfs/stage.py", "initramfs/localboot.py"} <= set(rels)
    copy_files(tmp_path, rels)
    modules = modules_of(tmp_path)
    probe(tmp_path, modules)
    # the pull client's optional accelerators are absent there, as in the initramfs
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import netslate.images.pull as p; "
            "import netslate.initramfs.stage as s; print(p._zstd, p._cut_file, sorted(s.MODES))")
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["None", "None", "['cache',", "'ram']"]
