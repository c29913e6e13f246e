"""docs/ARCHITECTURE.md import rules for model/train: never the server, fastapi, the clients or the engine."""
from __future__ import annotations

import ast
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[2] / "model" / "train"
FORBIDDEN = ("server", "fastapi", "uvicorn", "clients", "model.engine")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_train_imports_no_server_clients_or_engine() -> None:
    files = sorted(TRAIN.rglob("*.py"))
    assert len(files) >= 10
    for path in files:
        bad = {m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)}
        assert not bad, f"{path.name} imports {bad}"


def test_train_files_stay_small() -> None:
    for path in TRAIN.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 300, path.name
