"""The architecture, checked: layers import only downwards, no module imports another's private names, no
import circle, and jobs/ stay thin entrypoints that moaa/ never imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MOAA = ROOT / "moaa"

# Lowest first: a module may import modules of its own layer or of a lower one, never of a higher one.
LAYERS = [
    ("moaa", "moaa.core", "moaa.embedded"),  # moaa.embedded itself holds only the embedded models' names
    ("moaa.engine.settings",),
    ("moaa.embedded.smollm", "moaa.embedded.tiny", "moaa.embedded.models"),
    ("moaa.engine",),
    ("moaa.judging", "moaa.benchmarks"),
    ("moaa.stages",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS"
    return rank


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) of every moaa/jobs import in ``path``, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in ("moaa", "jobs"):
                found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ("moaa", "jobs"):
                    found.append((a.name, [], node.lineno))
    return found


def resolve(module: str, name: str) -> str:
    """``from pkg import name``: the module ``pkg.name`` when that is a module, else ``pkg``."""
    candidate = f"{module}.{name}"
    path = ROOT / candidate.replace(".", "/")
    return candidate if path.with_suffix(".py").exists() or (path / "__init__.py").exists() else module


SOURCES = sorted(MOAA.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layers_import_only_downwards_and_moaa_never_imports_jobs(path: Path):
    here = module_name(path)
    for module, names, line in imports(path):
        assert not module.startswith("jobs"), f"{path}:{line}: moaa imports jobs/ ({module})"
        for target in {resolve(module, n) for n in names} or {module}:
            if target == "moaa":
                continue
            assert layer(target) <= layer(here), (
                f"{path}:{line}: {here} (layer {layer(here)}) imports {target} (layer {layer(target)}), a "
                "higher layer: move what both need down, or the import up"
            )


@pytest.mark.parametrize(
    "path", [*SOURCES, *sorted((ROOT / "jobs").glob("*.py")), *sorted((ROOT / "bench").glob("*.py"))]
)
def test_no_module_imports_another_modules_private_names(path: Path):
    for module, names, line in imports(path):
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, (
            f"{path}:{line}: imports {private} from {module}: what two modules share is a public name of a "
            "module of its own"
        )


@pytest.mark.parametrize(
    "path", [*SOURCES, *sorted((ROOT / "jobs").glob("*.py")), *sorted((ROOT / "bench").glob("*.py"))]
)
def test_no_module_uses_another_modules_private_attributes(path: Path):
    """``module._name`` of a moaa module imported by name (``from moaa.stages import train``)."""
    tree = ast.parse(path.read_text())
    aliases = {
        (a.asname or a.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("moaa")
        for a in node.names
        if resolve(node.module, a.name) != node.module
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            assert not (node.attr.startswith("_") and not node.attr.startswith("__")), (
                f"{path}:{node.lineno}: uses {node.value.id}.{node.attr}, a private name of another module"
            )


def test_no_import_circle_between_modules():
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        here = module_name(path)
        graph[here] = {
            t for module, names, _ in imports(path) for t in ({resolve(module, n) for n in names} or {module})
        } - {here, "moaa"}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, f"import circle: {' -> '.join([*trail, m])}"
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            visit(n, [*trail, m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


def test_the_checks_find_a_planted_case(tmp_path: Path):
    """Each check is shown to fail on code that breaks its rule."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from moaa.stages.train import _publish\nfrom jobs import cli\nfrom moaa.stages import train\n"
    )
    with pytest.raises(AssertionError, match="_publish"):
        test_no_module_imports_another_modules_private_names(bad)
    bad.write_text("from moaa.stages import train\ntrain._publish('a', 'b')\n")
    with pytest.raises(AssertionError, match="private name of another module"):
        test_no_module_uses_another_modules_private_attributes(bad)
    bad.write_text("from moaa.stages.train import _publish\nfrom jobs import cli\n")
    found = imports(bad)
    assert ("moaa.stages.train", ["_publish"], 1) in found and ("jobs", ["cli"], 2) in found
    assert layer("moaa.core.config") < layer("moaa.engine.settings") < layer("moaa.engine.vllm")
    assert layer("moaa.engine.vllm") < layer("moaa.stages.train")
    assert resolve("moaa.core", "config") == "moaa.core.config" and resolve("moaa.core.config", "Config") == (
        "moaa.core.config"
    )


def test_the_embedded_names_are_the_models_moaa_builds():
    from moaa import embedded
    from moaa.embedded import smollm, tiny

    assert embedded.SMOLLM_NAME == smollm.NAME
    assert embedded.TINY_NAMES == tuple(s.name for s in tiny.TINY_MODELS)
    assert embedded.is_embedded(f"/x/{smollm.PATH}") and not embedded.is_embedded("HuggingFaceTB/SmolLM2")
