"""Imports point one way: the numpy-only stages never pull in torch or Lightning, io imports no
later stage, and the io modules import one another without cycles."""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import mitoseg.io

IO = Path(mitoseg.io.__file__).parent
SRC = IO.parent.parent  # holds the mitoseg package
STAGES = ("datasets", "train", "predict", "decode", "evaluate", "analyze", "cli")

NUMPY_ONLY = (
    "io",
    "geometry",
    "datasets.synthetic",
    "datasets.synthetic_shapes",
    "datasets.synthetic_textures",
    "datasets.volumes",
    "datasets.fetch",
    "datasets.registry",
    "datasets.mitoem",
    "train.augment",
    "train.augment_intensity",
    "train.augment_spatial",
    "train.targets",
    "predict.blend",
    "files",
    "signals",
    "decode.base",
    "decode.masks",
    "decode.watershed",
    "decode.affinity",
    "decode.instances",
    "decode.run",
    "decode.blockwise",
    "evaluate.semantic",
    "evaluate.contingency",
    "evaluate.instance",
    "evaluate.blockwise",
    "evaluate.counts",
    "evaluate.objects",
    "evaluate.summary",
    "evaluate.inputs",
    "cli.evaluate",
    "analyze.boxes",
    "analyze.measure",
    "analyze.shape",
    "analyze.export",
    "analyze.report",
    "baselines",
)


def test_numpy_only_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        + "".join(f"import mitoseg.{name}\n" for name in NUMPY_ONLY)
        + "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def _module_level_imports(tree: ast.Module, package: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import run at import time (not inside functions, not under
    ``if TYPE_CHECKING``); ``names`` are those of ``from module import names``, else empty."""
    found: list[tuple[str, list[str]]] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((alias.name, []) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(p for p in (base, node.module) if p)
                found.append((module, [alias.name for alias in node.names]))
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
            elif isinstance(node, ast.ClassDef | ast.If | ast.Try | ast.With):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(tree.body)
    return found


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _io_imports() -> dict[str, set[str]]:
    """``mitoseg.io`` module -> the ``mitoseg`` modules it imports at module level.

    ``from mitoseg.io import ome`` counts as importing the package ``mitoseg.io`` (its
    ``__init__`` must have run to give the name) and ``mitoseg.io.ome``; ``import
    mitoseg.io.ome`` and ``from mitoseg.io.ome import x`` only ``mitoseg.io.ome``.
    """
    graph = {}
    for path in sorted(IO.glob("*.py")):
        name = "mitoseg.io" if path.stem == "__init__" else f"mitoseg.io.{path.stem}"
        edges = set()
        for module, names in _module_level_imports(ast.parse(path.read_text()), "mitoseg.io"):
            if module.split(".")[0] != "mitoseg":
                continue
            edges.add(module)
            edges.update(f"{module}.{n}" for n in names if _is_module(f"{module}.{n}"))
        graph[name] = edges
    return graph


def test_io_modules_import_without_cycles() -> None:
    graph = _io_imports()
    assert {"mitoseg.io", "mitoseg.io.store", "mitoseg.io.ome"} <= set(graph)
    io_graph = {name: {m for m in edges if m in graph} for name, edges in graph.items()}
    try:
        graphlib.TopologicalSorter(io_graph).prepare()
    except graphlib.CycleError as err:
        raise AssertionError(f"import cycle among the mitoseg.io modules: {err.args[1]}") from None


def test_io_imports_no_later_stage() -> None:
    for name, edges in _io_imports().items():
        later = sorted(m for m in edges if m.partition(".")[2].split(".")[0] in STAGES)
        assert not later, f"{name} imports {later}"
