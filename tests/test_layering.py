"""Stages never import upwards: an AST check of every module under qtoolkit/.

Ranks (a module may import its own rank and lower ones):
  0 foundation  errors, atomic, paths, cache (keys, get-or-build, staging), runtime (sessions, runners,
                CPU/device detection)
  1 lower       data, models, export, train, report, deploy
  2 quantize
  3 evaluate
  4 peers       comparisons with onnxruntime's quantizer (build, quantize, export, evaluate)
  5 tasks, recipe (the schema every task reads), configs (recipe -> configs, used by tasks too)
  6 pipeline, analyze (recipe-level commands)
  7 tune        accuracy-aware tuning (runs pipeline and analyze per trial)
  8 front       cli, __main__, the package facade (qtoolkit/__init__.py)
An import from a lower rank to a higher one fails the test unless its statement carries a comment
``# layering: <why>``. Imports under ``if TYPE_CHECKING:`` never run and are not counted.

``python tests/test_layering.py [QTOOLKIT_DIR]`` prints every upward import of a tree (justified ones
marked), e.g. of another checkout.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qtoolkit"
RANKS = {
    **dict.fromkeys(("errors", "atomic", "paths", "cache", "runtime"), 0),
    **dict.fromkeys(("data", "models", "export", "train", "report", "deploy"), 1),
    "quantize": 2,
    "evaluate": 3,
    "peers": 4,
    **dict.fromkeys(("tasks", "recipe", "configs"), 5),
    **dict.fromkeys(("pipeline", "analyze"), 6),
    "tune": 7,
    **dict.fromkeys(("cli", "__main__", "__init__"), 8),
}
JUSTIFIED = "# layering:"


def stage_of_file(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return parts[0]


def stage_of_import(name: str, root: Path) -> str | None:
    """Stage of ``qtoolkit.X...``: X; the bare package is its facade."""
    parts = name.split(".")
    if parts[0] != "qtoolkit":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def upward_imports(root: Path = PACKAGE) -> list[tuple[str, int, str, str, bool]]:
    """(file, line, from stage, to stage, justified) for every import that runs up the ranks."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source, str(path))
        skipped = _type_checking_lines(tree)
        here = stage_of_file(path, root)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.level or not node.module:
                continue  # relative imports stay inside their package
            elif node.module == "qtoolkit":  # from qtoolkit import X: X is a stage, or a facade name
                targets = [f"qtoolkit.{a.name}" if a.name in RANKS else "qtoolkit" for a in node.names]
            else:
                targets = [node.module]
            for target in targets:
                there = stage_of_import(target, root)
                if there is None or there == here:
                    continue
                if there not in RANKS or here not in RANKS:
                    raise AssertionError(f"{path}: stage {here!r} or {there!r} has no rank; add it to RANKS")
                if RANKS[there] > RANKS[here]:
                    statement = lines[node.lineno - 1 : node.end_lineno]
                    justified = any(JUSTIFIED in line for line in statement)
                    found.append((str(path.relative_to(root.parent)), node.lineno, here, there, justified))
    return found


def test_no_unjustified_upward_import() -> None:
    bad = [f"{file}:{line} {src} -> {dst}" for file, line, src, dst, ok in upward_imports() if not ok]
    assert not bad, "imports that run up the stages (add '# layering: why' if one must):\n" + "\n".join(bad)


def test_the_check_can_fail(tmp_path) -> None:
    root = tmp_path / "qtoolkit"
    (root / "train").mkdir(parents=True)
    (root / "train" / "engine.py").write_text(
        "from qtoolkit.evaluate.accuracy import resolve_device\n"
        "def f():\n    from qtoolkit.tasks import base  # layering: test\n"
    )
    assert upward_imports(root) == [
        ("qtoolkit/train/engine.py", 1, "train", "evaluate", False),
        ("qtoolkit/train/engine.py", 3, "train", "tasks", True),
    ]


if __name__ == "__main__":
    tree = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else PACKAGE
    rows = upward_imports(tree)
    for file, line, src, dst, ok in rows:
        print(f"{file}:{line}  {src} -> {dst}{'  (justified)' if ok else ''}")
    print(f"{len(rows)} upward imports, {sum(not r[4] for r in rows)} unjustified")
