"""The package's shape (shared/DESIGN.md): imports point one way, leaves stay leaves, one training step."""
import ast
import sys
from pathlib import Path

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import import_graph  # noqa: E402

SRC = REPO / "src" / "kdlab"


def _summary():
    return import_graph.summary(SRC)


def test_no_import_circle_and_at_most_ten_levels():
    s = _summary()
    assert s["circles"] == [], s["circles"]
    assert s["depth"] <= 10, " -> ".join(s["longest_chain"])


#: the package's layers, lowest first (shared/DESIGN.md): a module imports from its own layer and those below it
LAYERS = ("kdlab.infra", "kdlab.core", "kdlab.distill", "kdlab.pipeline", "kdlab.analysis")


def _layer(module: str) -> int:
    """A module's layer: the index of its folder in LAYERS; the package itself is below them all, and the
    modules beside the folders (cli, __main__, the warm launcher) above them all."""
    if module == "kdlab":
        return -1
    return next((i for i, pkg in enumerate(LAYERS) if module == pkg or module.startswith(pkg + ".")), len(LAYERS))


def test_imports_point_down_the_layers_and_every_module_is_in_one():
    edges = _summary()["edges"]
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if _layer(b) > _layer(a))
    assert upward == [], upward
    top = sorted(m for m in edges if _layer(m) == len(LAYERS))
    assert top == ["kdlab.__main__", "kdlab.cli", "kdlab.warm", "kdlab.warm_server"], top
    for pkg in LAYERS:  # each layer says what it is
        assert (SRC / pkg.split(".")[1] / "__init__.py").read_text().startswith('"""Layer')


def test_no_module_imports_another_modules_private_names():
    assert _summary()["private_imports"] == []


def test_the_leaves_import_nothing_from_kdlab():
    edges = _summary()["edges"]
    for leaf in ("kdlab.infra.schema", "kdlab.analysis.present", "kdlab.infra.io"):
        assert edges[leaf] == [], (leaf, edges[leaf])


def _imported_top_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_mlflow_is_imported_by_tracking_alone():
    """The client, that is: infra/ui_app.py is `kdlab ui`'s server app and imports MLflow's server app alone."""
    users = sorted(f.relative_to(SRC).as_posix() for f in SRC.rglob("*.py") if "mlflow" in _imported_top_names(f))
    assert users == ["infra/tracking.py", "infra/ui_app.py"], users
    tree = ast.parse((SRC / "infra/ui_app.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in mods if m.startswith("mlflow")} == {"mlflow.server.fastapi_app"}, mods


def test_one_training_step():
    """Every backward pass of the package and of the GPU script is the one in kdlab.core.train.step, but for the
    Taylor importance score in kdlab.core.channels (gradients only: no optimizer there)."""
    calls = []
    for f in [*SRC.rglob("*.py"), REPO / "scripts" / "gpu_bench.py"]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "backward":
                calls.append(f.relative_to(REPO).as_posix())
    assert calls == ["src/kdlab/core/channels.py", "src/kdlab/core/train.py"], calls
    assert "optim" not in (SRC / "core" / "channels.py").read_text()
    steps = [n.name for n in ast.parse((SRC / "core" / "train.py").read_text()).body if isinstance(n, ast.FunctionDef)]
    assert "step" in steps


def test_the_graph_tool_finds_a_circle_and_a_private_import(tmp_path):
    """scripts/import_graph.py itself, on a tiny package: a circle through a function-level import, a private
    name imported across modules, and a TYPE_CHECKING import that does not count."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.c import _hidden\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
                              "def g():\n    import pkg.a\n_hidden = 1\n")
    s = import_graph.summary(pkg)
    assert s["circles"] == [["pkg.a", "pkg.b", "pkg.c"]]
    assert s["private_imports"] == ["pkg.b -> pkg.c._hidden"]
    assert s["depth"] == 3 and len(s["function_level_imports"]) == 2
