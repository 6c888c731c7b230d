"""The architecture, checked: layers import only downwards, no module imports another's private names, no
import circle, jobs/ stay thin entrypoints that moaa/ never imports, and only moaa/benchmarks/ names a
benchmark."""

from __future__ import annotations

import ast
import re
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


def benchmark_spellings() -> tuple[set[str], set[str]]:
    """(registry names, squashed spellings) of the registry's benchmarks: a squashed spelling is lowercase
    without underscores, so that ``mt_bench``, ``MTBench`` and ``score_mt_bench`` all hold ``mtbench``."""
    from moaa.benchmarks import registry

    spelled = {
        n
        for b in registry.BENCHMARKS
        for n in (b.name, type(b).__module__.rsplit(".", 1)[-1], b.config.__name__)
    }
    return set(registry.NAMES), {n.lower().replace("_", "") for n in spelled}


def benchmark_mentions(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every place the code of ``path`` names a benchmark: an identifier (a name, attribute,
    import, argument, keyword, def or class) holding one in any spelling (``mt_bench``, ``MTBench``,
    ``score_mt_bench``), or a string holding its registry name (``"mt_bench"``, ``f"{x}.mt_bench.limit"``).
    Left out: docstrings and comments (prose), and other spellings inside strings ("MT-Bench", "AlpacaEval"
    in a config field's description are text for people, not something the code dispatches on)."""
    names, squashed = benchmark_spellings()
    in_string = re.compile(
        r"(?<![A-Za-z0-9])(" + "|".join(map(re.escape, sorted(names))) + r")(?![A-Za-z0-9])"
    )
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
        and isinstance(node.body[0].value.value, str)
    }
    found = []
    for node in ast.walk(tree):
        idents: list[str] = []
        if isinstance(node, ast.Name):
            idents = [node.id]
        elif isinstance(node, ast.Attribute):
            idents = [node.attr]
        elif isinstance(node, ast.alias):
            idents = [*node.name.split("."), *([node.asname] if node.asname else [])]
        elif isinstance(node, ast.ImportFrom):
            idents = (node.module or "").split(".")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            idents = [node.name]
        elif isinstance(node, ast.arg):
            idents = [node.arg]
        elif isinstance(node, ast.keyword) and node.arg:
            idents = [node.arg]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found += [(node.lineno, m.group(1)) for m in in_string.finditer(node.value)]
        for ident in idents:
            flat = ident.lower().replace("_", "")
            found += [(getattr(node, "lineno", 0), ident) for s in squashed if s in flat]
    return sorted(set(found))


NO_BENCHMARK_NAMES = [p for p in SOURCES if not p.is_relative_to(MOAA / "benchmarks")] + sorted(
    (ROOT / "jobs").glob("*.py")
)


@pytest.mark.parametrize("path", NO_BENCHMARK_NAMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_benchmark_modules_name_a_benchmark(path: Path):
    """A benchmark is its module in moaa/benchmarks/ plus its registry entry: the code elsewhere (the evaluate
    stage, the pipeline, the report, the jobs) goes through ``moaa.benchmarks.registry``."""
    found = benchmark_mentions(path)
    assert not found, (
        f"{path}:{found[0][0]}: names the benchmark {found[0][1]!r} (all: {found}): go through "
        "moaa.benchmarks.registry (BENCHMARKS, get(name)) and its Benchmark interface "
        "(moaa/benchmarks/base.py)"
    )


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
    for code in (
        'if state["benchmark"] == "arena_hard":\n    pass\n',
        "from moaa.benchmarks import mt_bench\n",
        "from moaa.benchmarks.mt_bench import parse_rating\n",
        "cfg = EvaluateConfig(alpaca_eval=None)\n",
        "section = AlpacaEval(limit=4)\n",
        "def score_mt_bench(finals):\n    return cfg.mt_bench\n",
        'key = f"{prefix}.arena_hard.limit"\n',
    ):
        bad.write_text(code)
        with pytest.raises(AssertionError, match="names the benchmark"):
            test_only_the_benchmark_modules_name_a_benchmark(bad)
    # prose is not code: a docstring, a comment, a description that spells a benchmark for people
    bad.write_text(
        '"""Scores mt_bench."""\n# arena_hard too\ndef f():\n    """MTBench."""\n    return "MT-Bench"\n'
    )
    test_only_the_benchmark_modules_name_a_benchmark(bad)


def test_the_embedded_names_are_the_models_moaa_builds():
    from moaa import embedded
    from moaa.embedded import smollm, tiny

    assert embedded.SMOLLM_NAME == smollm.NAME
    assert embedded.TINY_NAMES == tuple(s.name for s in tiny.TINY_MODELS)
    assert embedded.is_embedded(f"/x/{smollm.PATH}") and not embedded.is_embedded("HuggingFaceTB/SmolLM2")
