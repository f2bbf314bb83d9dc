"""The package's layering: no import circle anywhere in asyncdicom/, type-only and
function-level imports included, and the driver names no specific DIMSE service.

Layers, bottom up: protocol -> (config, storage, transport, ...) -> association (the driver)
-> services -> ae -> testing / cli.  A lower layer that must call up defines a
``typing.Protocol`` (the driver's ``Dispatcher`` and ``Owner``) and is handed an object.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "asyncdicom"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every asyncdicom module that ``name`` imports, wherever the import statement is
    (module level, ``if TYPE_CHECKING:``, inside functions)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from . import errors`` depends on the module errors, not on the package
            submodules = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in known]
            targets = submodules if len(submodules) == len(node.names) else [prefix, *submodules]
        for target in targets:
            # the most specific asyncdicom module the target names
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("asyncdicom"):
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle() -> None:
    graph = _graph()
    assert "asyncdicom.association" in graph and graph["asyncdicom.services.base"]
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _reaches(graph: dict[str, set[str]], start: str, prefix: str) -> list[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return sorted(m for m in seen if m == prefix or m.startswith(prefix + "."))


def test_dependencies_point_down() -> None:
    graph = _graph()
    # the protocol core imports nothing of the layers above it
    for name, deps in graph.items():
        if name.startswith("asyncdicom.protocol"):
            assert all(d.startswith("asyncdicom.protocol") for d in deps), (name, deps)
    # the driver knows neither services, nor the AE, nor the CLI (not even for typing)
    for upper in ("asyncdicom.services", "asyncdicom.ae", "asyncdicom.cli", "asyncdicom.testing"):
        assert _reaches(graph, "asyncdicom.association", upper) == [], upper
        assert _reaches(graph, "asyncdicom.transport", upper) == [], upper
    # services sit below the AE and the CLI
    for upper in ("asyncdicom.ae", "asyncdicom.cli", "asyncdicom.testing"):
        assert _reaches(graph, "asyncdicom.services", upper) == [], upper
    assert _reaches(graph, "asyncdicom.ae", "asyncdicom.cli") == []
    # the Query/Retrieve matching engine is sans-IO: data sets in, answers out
    for upper in (
        "asyncdicom.association",
        "asyncdicom.transport",
        "asyncdicom.services",
        "asyncdicom.ae",
        "asyncdicom.cli",
    ):
        assert _reaches(graph, "asyncdicom.qr", upper) == [], upper


def _driver_trees() -> list[ast.Module]:
    files = sorted((PACKAGE / "association").glob("*.py"))
    assert files, "the driver package is missing"
    return [ast.parse(f.read_text()) for f in files]


def test_the_driver_names_no_specific_service() -> None:
    tree = ast.Module(body=[n for t in _driver_trees() for n in t.body], type_ignores=[])
    service_words = {"echo", "store", "find", "get", "move", "commit", "save_to"}
    defined = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    assert not defined & service_words, defined & service_words
    # no specific DIMSE message class is used by the driver's code (C-CANCEL's rule comes
    # from the protocol core's CANCELLABLE)
    specific = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "messages"
    }
    generic = {
        "Message",
        "Response",
        "Request",
        "RequestMessage",
        "ResponseMessage",
        "sop_class_uid",
    }
    assert specific <= generic, specific


def _runtime_imports(path: Path) -> set[str]:
    """The modules imported by ``path`` anywhere but under ``if TYPE_CHECKING:``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def test_only_the_codec_of_the_part10_modules_imports_pydicom() -> None:
    storage = PACKAGE / "storage"
    for name in ("names", "meta", "writer", "reader", "inflate", "tags", "files", "codec"):
        uses_pydicom = any(
            m.split(".")[0] == "pydicom" for m in _runtime_imports(storage / f"{name}.py")
        )
        assert uses_pydicom == (name == "codec"), name
