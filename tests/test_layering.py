"""The package layering, read from every module's imports with `ast` (imports inside functions included):

preprocessing (readers, image io, geometry, labeler) <- chex_model (the model) <- evaluation <- pipelines;
infra holds deployment only and nothing imports it. No import cycle between modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("preprocessing", "chex_model", "evaluation", "pipelines", "infra")
# package -> the other packages it may import
ALLOWED = {
    "preprocessing": set(),
    "chex_model": {"preprocessing"},
    "evaluation": {"preprocessing", "chex_model"},
    "pipelines": {"preprocessing", "chex_model", "evaluation"},
    "infra": set(),
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every dotted name an ``import`` / ``from ... import`` statement anywhere in ``source`` refers to (relative
    imports resolved against ``module``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a name is resolved to the longest module it names)."""
    files = {module_name(p, root): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path.read_text(), module, path.name == "__init__.py"):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(f"{name}."):
                targets.add(name)
        graph[module] = targets
    return graph


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        package = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                out.append(f"{module} imports {target}")
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of modules, or None (iterative depth-first search)."""
    state: dict[str, int] = {}   # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_packages_import_only_the_layers_below_them() -> None:
    assert layering_violations(import_graph(ROOT)) == []


def test_no_import_cycle() -> None:
    assert find_cycle(import_graph(ROOT)) is None


# --- the checks themselves catch what they are for ----------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


@pytest.mark.parametrize("text", [
    "from pipelines.train import run\n",
    "import evaluation.table\n",
    "def f():\n    from infra import mlflow_server\n",   # hidden inside a function
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipelines import train\n",
])
def test_a_forbidden_import_is_caught(tmp_path: Path, text: str) -> None:
    root = _tree(tmp_path, {"chex_model/sub/__init__.py": "", "chex_model/sub/mod.py": text,
                            "pipelines/train.py": "", "evaluation/table.py": "", "infra/mlflow_server.py": ""})
    assert layering_violations(import_graph(root)) != []


def test_an_allowed_import_is_not_caught(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"pipelines/a.py": "from chex_model.b import x\nfrom evaluation import c\n",
                            "chex_model/b.py": "from preprocessing.d import y\n", "preprocessing/d.py": "",
                            "evaluation/c.py": ""})
    assert layering_violations(import_graph(root)) == []


def test_a_cycle_hidden_in_a_function_is_caught(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"chex_model/a.py": "from chex_model.b import x\n",
                            "chex_model/b.py": "def f():\n    from chex_model import a\n"})
    assert find_cycle(import_graph(root)) in (["chex_model.a", "chex_model.b", "chex_model.a"],
                                              ["chex_model.b", "chex_model.a", "chex_model.b"])
