"""The kdlab package's import graph, read from the source (no import runs): modules and their sizes, import
circles, the longest import chain, function-level imports, and imports of another module's private names.

    python scripts/import_graph.py [--src src/kdlab] [--json]

Every ``import`` statement counts, those inside functions included; ``if TYPE_CHECKING:`` blocks do not (they
never run). ``from kdlab.a.b import c`` is an edge to ``kdlab.a.b`` (and to ``kdlab.a.b.c`` when that is a
module); a submodule's package ``__init__`` runs too, so it is an edge as well.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path


def module_files(src: Path) -> dict[str, Path]:
    """Dotted name -> file, for every .py file of the package at ``src``."""
    root = src.name
    out = {}
    for f in sorted(src.rglob("*.py")):
        parts = [root, *f.relative_to(src).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """(node, inside a function) for every import statement that can run."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for c in child.orelse:
                    yield from walk(c, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                     ast.Lambda)))
    yield from walk(tree, False)


def _absolute(mod: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_package else mod.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def graph(src: Path) -> dict:
    files = module_files(src)
    root = src.name
    edges: dict[str, set[str]] = {m: set() for m in files}
    function_level, private = [], []
    for mod, f in files.items():
        tree = ast.parse(f.read_text(), str(f))
        is_package = f.name == "__init__.py"
        for node, in_function in _imports(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            else:
                base = _absolute(mod, node, is_package)
                for a in node.names:
                    targets.append((f"{base}.{a.name}", None) if f"{base}.{a.name}" in files else (base, a.name))
            for target, name in targets:
                if not target.split(".")[0] == root:
                    continue
                hit = [t for t in (target, *_parents(target)) if t in files and t != root and t != mod]
                if not hit:
                    continue
                edges[mod].update(hit)
                if in_function:
                    function_level.append(f"{mod} -> {target}" + (f".{name}" if name else ""))
                leaf = name or target.rsplit(".", 1)[-1]
                if leaf.startswith("_") and not leaf.startswith("__") and hit[0] != mod:
                    if not (hit[0].startswith(mod + ".") or mod.startswith(hit[0] + ".")):  # a package and its own
                        private.append(f"{mod} -> {target}" + (f".{name}" if name else ""))
    return {"files": files, "edges": edges, "function_level": function_level, "private": private}


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def longest_chain(edges: dict[str, set[str]]) -> list[str]:
    """The longest chain of imports with no module twice (modules, importer first)."""
    best: list[str] = []
    memo: dict[str, list[str]] = {}
    acyclic = not circles(edges)

    def from_(v, seen):
        if acyclic and v in memo:
            return memo[v]
        longest = [v]
        for w in edges[v]:
            if w not in seen:
                chain = [v, *from_(w, seen | {w})]
                if len(chain) > len(longest):
                    longest = chain
        if acyclic:
            memo[v] = longest
        return longest

    for v in sorted(edges):
        chain = from_(v, {v})
        if len(chain) > len(best):
            best = chain
    return best


def summary(src: Path) -> dict:
    g = graph(src)
    chain = longest_chain(g["edges"])
    return {
        "modules": len(g["files"]),
        "lines": {m: len(f.read_text().splitlines()) for m, f in g["files"].items()},
        "circles": circles(g["edges"]),
        "depth": len(chain),
        "longest_chain": chain,
        "function_level_imports": g["function_level"],
        "private_imports": g["private"],
        "edges": {m: sorted(e) for m, e in g["edges"].items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src" / "kdlab"))
    ap.add_argument("--json", action="store_true", help="print everything as JSON")
    a = ap.parse_args()
    s = summary(Path(a.src))
    if a.json:
        print(json.dumps(s, indent=1))
        return
    print(f"{s['modules']} modules, {sum(s['lines'].values())} lines; largest: "
          + ", ".join(f"{m} {n}" for m, n in sorted(s["lines"].items(), key=lambda x: -x[1])[:6]))
    print(f"longest import chain: {s['depth']} modules: " + " -> ".join(s["longest_chain"]))
    print(f"circles: {len(s['circles'])}" + "".join(f"\n  {' <-> '.join(c)}" for c in s["circles"]))
    print(f"function-level imports of kdlab modules: {len(s['function_level_imports'])}")
    print(f"imports of another module's private names: {len(s['private_imports'])}"
          + "".join(f"\n  {x}" for x in s["private_imports"]))


if __name__ == "__main__":
    main()
