"""docs/ARCHITECTURE.md ("Who may import whom") for server/: only names from `model` (model/__init__.py), never a model
submodule, never torch, never clients."""
from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server"


def imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def test_server_imports_only_the_model_package_api() -> None:
    files = sorted(SERVER.rglob("*.py"))
    assert len(files) > 15
    for path in files:
        for module in imports(path):
            root = module.split(".")[0]
            assert root not in ("torch", "clients"), f"{path.relative_to(SERVER.parent)} imports {module}"
            assert module == "model" or root != "model", f"{path.relative_to(SERVER.parent)} imports {module}"
