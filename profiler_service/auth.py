"""Bearer-token dependencies: writes need the token when one is set; reads when HALP_PROTECT_READS."""

from __future__ import annotations

import hmac

from fastapi import Request

from profiler_service.errors import Unauthorized
from profiler_service.settings import Settings


def check_token(settings: Settings, authorization: str | None) -> None:
    """Exact match: the scheme is case-insensitive (RFC 9110), the credential is not, and nothing trails it."""
    if settings.api_token is None:
        return
    scheme, space, given = (authorization or "").partition(" ")
    expected = settings.api_token.get_secret_value().encode()
    if not space or scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
        raise Unauthorized("this service needs 'Authorization: Bearer <token>' (HALP_API_TOKEN)")


def _settings(request: Request) -> Settings:
    return request.app.state.halp_settings


async def require_write(request: Request) -> None:
    check_token(_settings(request), request.headers.get("authorization"))


async def require_read(request: Request) -> None:
    settings = _settings(request)
    if settings.protect_reads:
        check_token(settings, request.headers.get("authorization"))
