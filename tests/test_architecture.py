"""The house stays in layers: every import of a pixelwise module points down the list below (or
stays inside its own package), and none hides inside a function. Read from the source with
``ast``; nothing is imported, so a violation is reported even where it would not run."""
from __future__ import annotations

import ast
from pathlib import Path

import pixelwise

LAYERS: list[tuple[str, ...]] = [
    ("errors", "openmp"),
    ("config", "registry", "progress", "io"),
    ("geometry",),
    ("layers",),
    ("encoders",),
    ("models",),
    ("data",),
    ("losses", "metrics", "analysis"),
    ("runtimes",),
    ("inference",),
    ("training",),
    ("export",),
    ("serve", "superres", "demo"),
    ("cli",),
    ("__main__", "__init__"),
]
"""From the bottom: a unit (a top-level module or subpackage of ``pixelwise``) imports only units
of lower layers, and modules of its own package."""
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
PACKAGE = Path(pixelwise.__file__).parent


def _unit(module: str) -> str:
    """``pixelwise.inference.logits`` → ``inference``; the package itself → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, pixelwise module imported, whether inside a function)`` for one source file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    in_function = {id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for inner in ast.walk(node) if inner is not node}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("pixelwise"):
            found.append((node.lineno, node.module, id(node) in in_function))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, id(node) in in_function) for alias in node.names
                      if alias.name.split(".")[0] == "pixelwise"]
    return found


def _own_unit(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 or path.name != "__init__.py" \
        else "__init__"


def test_every_unit_has_a_layer() -> None:
    units = {_own_unit(path) for path in PACKAGE.rglob("*.py")}
    assert units <= set(RANK), f"place {sorted(units - set(RANK))} in LAYERS"


def test_imports_point_down_and_none_hides_in_a_function() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _own_unit(path)
        for line, module, hidden in _imports(path):
            other = _unit(module)
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
            if hidden:
                wrong.append(f"{where} inside a function (import at the top; only optional third-party "
                             f"packages are imported where they are used)")
            elif other != me and RANK[other] >= RANK[me]:
                wrong.append(f"{where}, a unit of layer {RANK[other]} from one of layer {RANK[me]} ({me})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_what_it_must(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text("from pixelwise.models import create_model\nimport pixelwise.cli\n\n\ndef f():\n"
                      "    from pixelwise.export import export_checkpoint\n")
    assert _imports(source) == [(1, "pixelwise.models", False), (2, "pixelwise.cli", False),
                                (6, "pixelwise.export", True)]
