"""SPEC 2: the client imports nothing server-side; the wire models are the one shared module."""

from __future__ import annotations

import subprocess
import sys

CLIENT_MODULES = [
    "pruning_client", "pruning_client.cli", "pruning_client.workflow", "pruning_client.remote",
    "pruning_client.pruner", "pruning_client.demo", "pruning_client.local", "pruning_client.report",
]  # fmt: skip


def test_client_never_imports_the_server_stack():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CLIENT_MODULES)
        + "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'alembic', 'uvicorn', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
