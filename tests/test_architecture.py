"""The layering written in ARCHITECTURE.md holds: import contracts pass and no file-level import cycle exists."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_pass():
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "broken" not in r.stdout.split("Contracts:")[-1].lower().replace("0 broken", "")


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm over module → directly imported modules (function-local imports included)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        work = [(v, iter(sorted(graph.find_modules_directly_imported_by(v))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return out


def test_no_file_level_import_cycles():
    graph = grimp.build_graph("netslate", cache_dir=None)
    # A package's __init__ importing its own modules is not a cycle between files of code.
    for module in list(graph.modules):
        for imported in list(graph.find_modules_directly_imported_by(module)):
            if imported.startswith(module + "."):
                graph.remove_import(importer=module, imported=imported)
    cycles = strongly_connected(graph)
    assert cycles == [], "import cycles: " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert strongly_connected(graph) == [["p.a", "p.b"]]


def test_cli_commands_never_branch_on_local_or_remote():
    """The CLI picks local or --server once (cli/common.py: CliState.services); commands never branch."""
    offenders = []
    for path in sorted((ROOT / "src/netslate/cli").glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "st.remote" in line or ".api()" in line and path.name != "common.py":
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == []


def test_class_names_are_unique_across_the_package():
    """One word, one meaning (issue 10 #6): no two classes in src/netslate share a name (private `_Names`
    excepted). ORM models keep the noun; a service record of the same noun is `NounRecord`."""
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted((ROOT / "src/netslate").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                where[node.name].append(f"{path.relative_to(ROOT / 'src/netslate')}:{node.lineno}")
    duplicates = {name: places for name, places in sorted(where.items()) if len(places) > 1}
    assert duplicates == {}
