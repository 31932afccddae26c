"""SPEC 2: the client imports nothing server-side; the wire models are the one shared module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pruning_client

WIRE = {"profiler_service.shapes", "profiler_service.schemas"}  # what client and service share
LAUNCHER = ("pruning_client/cli/serve.py", "profiler_service.serve")  # `halp serve` starts the service
CLIENT = Path(pruning_client.__file__).parent


def client_modules() -> list[str]:
    root = CLIENT.parent
    return [
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for p in sorted(CLIENT.rglob("*.py"))
        if p.name != "__main__.py"
    ]


def test_client_imports_only_the_wire_modules_of_the_service_package():
    found = []
    for path in sorted(CLIENT.rglob("*.py")):
        where = path.relative_to(CLIENT.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] == "profiler_service" and name not in WIRE and (where, name) != LAUNCHER:
                    found.append(f"{where}: {name}")
    assert found == []


def test_client_never_imports_the_server_stack():
    modules = [m for m in client_modules() if m != "pruning_client.cli.serve"]
    assert "pruning_client.workflow" in modules and "pruning_client.cli.run" in modules
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'alembic', 'uvicorn', 'starlette', 'onnxruntime')"
        + " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
