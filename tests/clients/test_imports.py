"""docs/ARCHITECTURE.md: clients/ import neither `model` nor `server` and need no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
FORBIDDEN = ("model", "server", "torch")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_client_sources_import_no_model_server_or_torch() -> None:
    files = sorted(CLIENTS.rglob("*.py"))
    assert len(files) >= 5
    for path in files:
        bad = imported_roots(path) & set(FORBIDDEN)
        assert not bad, f"{path.relative_to(CLIENTS.parent)} imports {bad}"


def test_importing_every_client_loads_no_torch() -> None:
    """Also catches an indirect import through a third-party package."""
    code = ("import sys, clients.chat, clients.bench, clients.tasks, clients.api; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in %r))" % (FORBIDDEN,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=CLIENTS.parent)
    assert out.stdout.strip() == "[]"
