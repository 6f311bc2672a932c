"""The package's shape (docs/architecture.md): no import circles, counting the imports inside
functions; no module-private name imported from another module; no public name that shadows
a submodule; ``__init__`` modules only re-export."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from pathlib import Path

import actbridge

ROOT = Path(actbridge.__file__).parent


def modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def imports(name: str, f: Path, known: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``(module imported, names taken from it)`` for every import statement, anywhere."""
    package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if not base.startswith("actbridge"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full, []) if full in known else (base, [alias.name]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("actbridge")]
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {m for m, _ in imports(name, f, known) if m in known and m != name and m != "actbridge"}
        for name, f in known.items()
    }


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(g[u]):
            if state.get(v) == 1:
                return [*path[path.index(v) :], v]
            if v not in state and (found := visit(v)):
                return found
        path.pop()
        state[u] = 2
        return None

    for u in sorted(g):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_the_import_graph_has_no_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_planted_cycle():
    g = graph()
    g["actbridge.store"] = g["actbridge.store"] | {"actbridge.maps.training"}  # training imports store
    assert find_cycle(g) is not None


def is_module(name: str) -> bool:
    """Whether ``name`` is a module (a private module such as ``_native`` may be imported)."""
    return importlib.util.find_spec(name) is not None if name.rsplit(".", 1)[0] in modules() else False


def test_no_module_imports_another_modules_private_names():
    known = modules()
    bad = [
        f"{name} imports {n} from {m}"
        for name, f in known.items()
        for m, names in imports(name, f, known)
        for n in names
        if n.startswith("_") and not n.startswith("__") and not is_module(f"{m}.{n}")
    ]
    assert not bad, bad


def test_no_module_reaches_into_another_modules_private_attributes():
    """``x._name`` only for attributes the module itself sets on its own objects
    (``self._name = ...``), or on ``self``/``cls``."""
    known = modules()
    bad = []
    for name, f in known.items():
        tree = ast.parse(f.read_text())
        own = {
            t.attr
            for n in ast.walk(tree)
            if isinstance(n, (ast.Assign, ast.AnnAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Attribute)
            and isinstance(t.value, ast.Name)
            and t.value.id in ("self", "obj")
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in own
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and not is_module(f"actbridge.{node.attr}")
            ):
                bad.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    assert not bad, bad


def test_no_public_name_shadows_a_submodule():
    import importlib

    packages = [importlib.import_module(n) for n, f in modules().items() if f.name == "__init__.py"]
    assert len(packages) >= 6
    for pkg in packages:
        subs = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
        for name in pkg.__all__:
            if name in subs:
                obj = getattr(pkg, name)
                assert getattr(obj, "__name__", None) == f"{pkg.__name__}.{name}", (
                    f"{pkg.__name__}.{name} is {obj!r}, not the submodule of that name"
                )


def test_init_modules_only_re_export():
    for f in ROOT.rglob("__init__.py"):
        defs = [
            n.name for n in ast.parse(f.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
        ]
        assert not defs, f"{f} defines {defs}; define them in a module and re-export"


def test_every_map_kind_satisfies_the_map_protocol(tmp_path):
    import numpy as np
    from actbridge._typing import Map

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((200, 6)).astype(np.float32), rng.standard_normal((200, 4)).astype(np.float32)
    affine = actbridge.AffineMap.fit(x, y)
    ae = actbridge.AutoencoderMap(
        *(rng.standard_normal(s).astype(np.float32) for s in [(5, 6), (5,), (4, 5), (4,)])
    )
    for m in (affine, ae):
        assert isinstance(m, Map), type(m)
        m.save(tmp_path / m.kind)
        assert isinstance(actbridge.load_map(tmp_path / m.kind), Map)
    assert not isinstance(object(), Map)
