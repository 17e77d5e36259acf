"""The core stays sans-IO: no sockets, no asyncio, no clock, nothing outside the standard library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import edgetftp.protocol

pytestmark = pytest.mark.unit

FORBIDDEN = {"asyncio", "socket", "selectors", "time", "datetime", "threading", "uvloop", "loguru", "os"}
PROTOCOL_DIR = Path(edgetftp.protocol.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0] if node.level == 0 else "")
            if node.module.startswith("edgetftp.") and not node.module.startswith("edgetftp.protocol"):
                names.add(node.module)
    return names


def test_protocol_package_imports_nothing_that_does_io() -> None:
    files = sorted(PROTOCOL_DIR.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        modules = imported_modules(path)
        assert not modules & FORBIDDEN, (path.name, modules & FORBIDDEN)
        outside = {m for m in modules if m.startswith("edgetftp.")}
        assert not outside, (path.name, outside)
