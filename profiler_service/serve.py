"""Starting a profiler service from the command line: settings checked, store probed, worker up, uvicorn.

``halp serve`` is a thin wrapper over ``run``: every user mistake here (a bad setting, an unusable
store, a backend this machine lacks) is a ``ServeError`` with one line to show, found before the
server binds its port.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any


class ServeError(RuntimeError):
    """The service cannot start as configured; the message is the one line for the user."""


def option_help(name: str, text: str) -> str:
    """Help text of a `halp serve` option: what it does, its default and its variable, from Settings itself."""
    from profiler_service.settings import Settings

    field = Settings.model_fields[name]
    default = field.default if field.default_factory is None else None
    shown = f"default {default}; " if default not in (None, "") else ""
    return f"{text} ({shown}env HALP_{name.upper()})"


def run(overrides: dict[str, Any], log_level: str, say: Callable[[str], None]) -> None:
    """Serve until interrupted; ``overrides`` (None values ignored) beat HALP_* environment variables."""
    import uvicorn
    from pydantic import ValidationError

    from profiler_service.app import create_app, start_worker
    from profiler_service.backends import BackendUnavailable
    from profiler_service.db import StoreUnavailable, open_store
    from profiler_service.settings import Settings

    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        open_store(settings.db_url).dispose()  # a read-only store is one line here, not a traceback later
        worker = start_worker(settings)
    except ValidationError as e:
        problems = "; ".join(f"HALP_{'_'.join(map(str, x['loc'])).upper()}: {x['msg']}" for x in e.errors())
        raise ServeError(f"bad setting: {problems}") from None
    except (BackendUnavailable, StoreUnavailable) as e:
        raise ServeError(str(e)) from None
    url = f"http://{settings.host}:{settings.port}"
    say(
        f"HALP profiler: backend [bold]{worker.device['backend']}[/], store {settings.db_url}\n"
        f"  open in a browser: {url}/  (the device, its tables and staircases, the queue)\n"
        f"  try: curl {url}/device   |   halp lut conv2d-k3x3-s1x1-p1x1-d1x1-g1-h28w28-b1-fp32 "
        f"--target {url} --cin 64 --cout 8..128:8   |   docs: {url}/docs"
    )
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    halp_log = logging.getLogger("halp")
    halp_log.addHandler(handler)
    halp_log.setLevel(log_level.upper())
    try:
        uvicorn.run(
            create_app(settings, worker), host=settings.host, port=settings.port, log_level=log_level,
            timeout_graceful_shutdown=3,  # SIGTERM: in-flight requests get 3 s, then the worker is killed
        )  # fmt: skip
    finally:
        worker.close()
