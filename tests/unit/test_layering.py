"""The layout is the architecture: shared code knows no backend by name, and a backend
reaches another only through what `backend/` shares (issue 23).

- nothing outside `backend/<name>/` imports `claude_bottle.backend.<name>` (the registry
  names each backend's module as a string, and is the one place that does);
- no module outside `backend/<name>/` and the registry spells that module path either
  (an `importlib` of it is an import all the same);
- no class of one backend subclasses a class of another backend.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import claude_bottle
from claude_bottle.backend import registry

PACKAGE = Path(claude_bottle.__file__).resolve().parent
REGISTRY = PACKAGE / "backend" / "registry.py"
BACKENDS = registry.names()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _owner(module: str) -> str | None:
    """The backend a module (or an imported name) belongs to, if any."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["claude_bottle", "backend"] and parts[2] in BACKENDS:
        return parts[2]
    return None


def _imports(tree: ast.AST, module: str) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append(target)
            # `from claude_bottle.backend import docker` imports the backend too
            found += [f"{target}.{alias.name}" for alias in node.names]
    return found


def _violations(path: Path, tree: ast.AST) -> list[str]:
    module = _module_name(path)
    own = _owner(module)
    problems = []
    for target in _imports(tree, module):
        owner = _owner(target)
        if owner is not None and owner != own:
            problems.append(f"{module} imports {target}")
    if path != REGISTRY:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                owner = _owner(node.value.strip().split(":")[0])
                if owner is not None and owner != own:
                    problems.append(f"{module} names the module {node.value!r}")
    return problems


def test_nothing_outside_a_backend_imports_it() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        problems += _violations(path, ast.parse(path.read_text(), str(path)))
    assert problems == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("claude_bottle.cli.main", "from claude_bottle.backend.docker.backend import x\n"),
        ("claude_bottle.cli.main", "from claude_bottle.backend import docker\n"),
        (
            "claude_bottle.backend.smolmachines.prepare",
            "IMAGES = 'claude_bottle.backend.docker.images'\n",
        ),
        ("claude_bottle.backend.docker.bottle", "from ..namespace.bottle import NamespaceBottle\n"),
    ],
)
def test_the_check_sees_each_way_of_reaching_another_backend(module: str, source: str) -> None:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    assert _violations(path, ast.parse(source)) != []


def _backend_classes() -> list[tuple[str, type]]:
    found = []
    for name in BACKENDS:
        package = importlib.import_module(f"claude_bottle.backend.{name}")
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__:
                    found.append((name, cls))
    return found


def test_no_backend_class_subclasses_another_backends_class() -> None:
    classes = _backend_classes()
    assert len(classes) > 10  # every backend was walked
    problems = [
        f"{cls.__module__}.{cls.__qualname__} subclasses {base.__module__}.{base.__qualname__}"
        for name, cls in classes
        for base in cls.__mro__[1:]
        if _owner(base.__module__) not in (None, name)
    ]
    assert problems == []
