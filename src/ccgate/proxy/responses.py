"""ccgate's own errors as aiohttp responses, in Anthropic's envelope (`ccgate.wire.envelope`)."""

from __future__ import annotations

from aiohttp import web

from ccgate.errors import CcgateError
from ccgate.wire.envelope import envelope, error_headers


def error_response(error: CcgateError) -> web.Response:
    """ccgate's own errors in Anthropic's envelope, with `x-should-retry: false` when retrying cannot help."""
    return web.json_response(envelope(error), status=error.status, headers=error_headers(error))
