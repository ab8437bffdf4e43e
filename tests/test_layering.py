"""Dependencies point down: no module imports a layer above its own, at the top of the file or inside a function.

The layers, bottom to top. A layer may import any layer below it and its own; the base modules are the
artefacts and helpers every stage reads. Stage 1 (selection) calibrates on perplexity, so evaluation sits
below it; the multiple-choice format is data, below both.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "amoeba_search"

LAYERS = [
    {"__init__", "errors", "paths", "jsonfile", "shapes", "fingerprint", "strategy", "resources", "defaults",
     "compute", "distributed"},
    {"data"},
    {"models"},
    {"evaluation"},
    {"selection"},
    {"finetune"},
    {"profiling", "quality", "plots"},
    {"search"},
    {"session", "plan"},
    {"cli"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    """``amoeba_search.models.supernet`` -> ``models``; ``amoeba_search`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path):
    """Every ``amoeba_search`` module that ``path`` imports, with its line."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "amoeba_search":  # from amoeba_search import SubnetShape, __version__
                yield from ((f"amoeba_search.{alias.name}", node.lineno) for alias in node.names
                            if (PACKAGE / f"{alias.name}.py").exists() or (PACKAGE / alias.name).is_dir())
                yield "amoeba_search", node.lineno
            elif node.module.startswith("amoeba_search."):
                yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names if alias.name.startswith("amoeba_search."))


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert units - set(RANK) == set(), "give each new module or package a layer in LAYERS"


def test_dependencies_point_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _unit(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for module, line in _imports(path):
            there = _unit(module)
            if RANK[there] > RANK[here]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({here}) imports {module} ({there})")
    assert upward == []
