"""Anthropic's error envelope: how the proxy writes ccgate's errors, as JSON and as an SSE event.

Pure: the aiohttp response around it is `ccgate.proxy.responses.error_response`. The gateway's admin API
answers in its own envelope, which is why `ccgate.errors` knows nothing of this one.
"""

from __future__ import annotations

import json
from typing import Any

from ccgate.errors import CcgateError, RateLimitedError


def envelope(error: CcgateError) -> dict[str, Any]:
    """`{"type": "error", "error": {"type": ..., "message": "ccgate: ... (hint)"}}`."""
    return error_body(error.error_type, f"ccgate: {error.full_message()}")


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_headers(error: CcgateError) -> dict[str, str]:
    """`x-should-retry: false` when retrying cannot help (Claude Code retries 401/429 for minutes otherwise);
    a rate limit says when to come back instead."""
    if isinstance(error, RateLimitedError):
        return {"retry-after": str(error.retry_after)}
    return {} if error.should_retry else {"x-should-retry": "false"}


def sse_error(error_type: str, message: str) -> bytes:
    """An `error` event for a stream the client already receives (its status line went out as 200)."""
    return b"event: error\ndata: " + json.dumps(error_body(error_type, message)).encode() + b"\n\n"
