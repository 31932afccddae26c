"""Request-body caps, enforced below every route: an unauthenticated client must not make the
service read (or hold) more than a small body, whatever the route does with it."""

from __future__ import annotations

from collections.abc import Callable

from profiler_service.errors import UploadTooLarge, problem


class BodyLimit:
    """Pure-ASGI: a declared Content-Length over the route's limit is answered 413 before a byte is
    read; a body without one (chunked) raises ``UploadTooLarge`` in the route the moment it passes the
    limit, so nothing past it is ever buffered."""

    def __init__(self, app, limit_for: Callable[[str], tuple[int, str]]) -> None:
        self.app, self.limit_for = app, limit_for  # path -> (bytes, the setting that sets it)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit_for(scope["path"])
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length and (not length.isdigit() or int(length) > limit):
            detail = f"request body of {length.decode('latin-1')[:20]} bytes; at most {limit} ({setting})"
            await problem(413, "Upload too large", detail, headers={"Connection": "close"})(scope, receive, send)
            return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise UploadTooLarge(f"request body over {limit} bytes ({setting})")
            return message

        await self.app(scope, limited, send)
