"""The package tree follows the data flow: a module imports only from its own subpackage or from one
below it in ``LAYERS`` (down the flow, then the shared layers). Imports inside functions and under
TYPE_CHECKING count too: they are dependencies all the same."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.processes import REPO

PACKAGE = REPO / "cds_daemon"

#: Top to bottom. Entry points assemble everything; ingest -> analysis -> reports -> egress is the flow,
#: review (decisions on referred cases) sits beside it above the report builders it uses; ops, the store
#: and the shared vocabulary/config/manifest are underneath.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__main__"}),
    frozenset({"cli"}),
    frozenset({"service"}),
    frozenset({"web"}),
    frozenset({"ingest"}),
    frozenset({"analysis"}),
    frozenset({"review"}),
    frozenset({"reports"}),
    frozenset({"egress"}),
    frozenset({"ops"}),
    frozenset({"store"}),
    frozenset({"common"}),
)


def _layer(part: str) -> int:
    for rank, names in enumerate(LAYERS):
        if part in names:
            return rank
    raise AssertionError(f"cds_daemon.{part} is in no layer: add it to LAYERS (and docs/architecture.md)")


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("cds_daemon.")]


def test_imports_point_down_the_flow() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for line, module in _imports(path):
            target = module.split(".")[1]
            if target != own and _layer(target) <= _layer(own):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module} ({own} -> {target})")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_every_subpackage_has_a_layer() -> None:
    for entry in PACKAGE.iterdir():
        if entry.name.startswith("_") and entry.name != "__main__.py":
            continue
        if (entry.is_dir() and (entry / "__init__.py").exists()) or entry.suffix == ".py":
            _layer(entry.name.removesuffix(".py"))


def test_only_the_store_holds_sql() -> None:
    keywords = ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", "CREATE TABLE")
    outside = [
        str(path.relative_to(REPO))
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] != "store"
        and any(k in path.read_text(encoding="utf-8") for k in keywords)
    ]
    assert not outside, f"SQL outside cds_daemon/store: {outside}"
