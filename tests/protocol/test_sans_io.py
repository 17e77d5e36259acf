"""The core stays sans-IO: it may import only the pure part of the standard library and itself.

An allow-list, not a deny-list: a new import of anything else (pydantic, loguru, a source module, or a
standard module that touches the clock, the network, processes or files) fails here until it is
justified by changing ``IO_MODULES``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import edgetftp.protocol

pytestmark = pytest.mark.unit

PROTOCOL_DIR = Path(edgetftp.protocol.__file__).parent
PROTOCOL_PACKAGE = "edgetftp.protocol"
# Standard modules that do I/O, read clocks or randomness, or load code: the core is handed bytes and `now`.
IO_MODULES = frozenset(
    {
        *("asyncio", "socket", "socketserver", "selectors", "select", "ssl", "signal", "mmap"),
        *("time", "datetime", "zoneinfo", "calendar", "sched", "random", "secrets", "uuid"),
        *("threading", "_thread", "multiprocessing", "concurrent", "subprocess", "queue"),
        *("os", "posix", "io", "pathlib", "shutil", "tempfile", "glob", "fcntl", "stat", "fileinput"),
        *("logging", "warnings", "builtins", "sys", "importlib", "pkgutil", "runpy", "ctypes", "gc"),
        *("http", "urllib", "email", "smtplib", "ftplib", "ipaddress", "xmlrpc", "wsgiref", "webbrowser"),
        *("sqlite3", "dbm", "shelve", "pickle", "tracemalloc", "faulthandler", "resource", "pty", "tty"),
        *("getpass", "platform", "locale", "sysconfig", "site", "atexit", "inspect", "pdb", "code"),
    }
)
ALLOWED_STDLIB = frozenset(sys.stdlib_module_names) - IO_MODULES


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (anywhere in it), absolute and dotted; relative ones resolved."""
    package = PROTOCOL_PACKAGE.split(".")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names.add(".".join([*base, *([node.module] if node.module else [])]))
    return names


def allowed(module: str) -> bool:
    top = module.split(".")[0]
    return (
        module == "__future__"
        or top in ALLOWED_STDLIB
        or module == PROTOCOL_PACKAGE
        or module.startswith(PROTOCOL_PACKAGE + ".")
    )


def test_protocol_package_imports_only_pure_stdlib_and_itself() -> None:
    files = sorted(PROTOCOL_DIR.rglob("*.py"))
    assert len(files) >= 6
    refused = {
        str(path.relative_to(PROTOCOL_DIR)): sorted(m for m in imported_modules(path) if not allowed(m))
        for path in files
    }
    assert not {name: modules for name, modules in refused.items() if modules}


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("import struct", True),
        ("from collections.abc import Mapping", True),
        ("from edgetftp.protocol.codes import Opcode", True),
        ("from .codes import Opcode", True),
        ("import pydantic", False),
        ("from loguru import logger", False),
        ("import time", False),
        ("from os import path", False),
        ("from edgetftp.settings import Settings", False),
        ("from .. import settings", False),
        ("def f():\n    import asyncio", False),
    ],
)
def test_the_guard_refuses_what_it_should(tmp_path: Path, source: str, ok: bool) -> None:
    module = tmp_path / "module.py"
    module.write_text(source + "\n")
    assert all(allowed(name) for name in imported_modules(module)) is ok
