"""A small client of the gateway's admin API on the standard library's http.client (keeps the CLI fast).

Every failure becomes a `CcgateError` with a hint: the gateway unreachable, a bad token (401), a role that may
not (403), or what the gateway said was wrong with the request.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from ccgate import env
from ccgate.errors import (
    AuthenticationError,
    CcgateError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UserInputError,
)

URL_ENV = env.GATEWAY_URL
TOKEN_ENV = env.GATEWAY_ADMIN_TOKEN
DEFAULT_TIMEOUT_S = 30.0
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class GatewayUnreachableError(CcgateError):
    """The gateway did not answer (refused, timed out, TLS failed, or not an HTTP server)."""

    status = 503
    error_type = "api_error"


class GatewayAnswerError(CcgateError):
    """The gateway answered with an error we have no closer class for (5xx, 409, ...)."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.http_status = status


def name_path(*parts: str) -> str:
    """Path segments with every character a name may hold percent-encoded (`a/b` stays one segment)."""
    return "/".join(quote(part, safe="") for part in parts)


class AdminClient:
    """One gateway, one admin token; each call is one HTTP request (no retries: admin changes are not replayed)."""

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        parts = urlsplit(url.strip())
        if "@" in parts.netloc:  # checked first: the URL is echoed below, its credentials must not be
            raise UserInputError(
                "the gateway URL holds credentials (USER:PASSWORD@)",
                hint=f"give the bare URL; the admin token comes from {TOKEN_ENV} or --token-file",
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserInputError(
                f"{url!r} is not a gateway URL", hint=f"give --url or {URL_ENV} as http(s)://HOST[:PORT]"
            )
        if parts.query or parts.fragment:
            raise UserInputError(f"{url!r} has a query or fragment", hint="give the gateway's base URL only")
        try:
            port = parts.port
        except ValueError:
            raise UserInputError(f"{url!r} has a bad port", hint="e.g. http://127.0.0.1:8700") from None
        if not token or any(ord(c) < 33 or ord(c) == 127 for c in token):
            raise UserInputError(
                "the admin token is empty or has spaces or control characters",
                hint=f"set {TOKEN_ENV} or use --token-file with the token alone",
            )
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port
        self._base = parts.path.rstrip("/") + "/admin/v1"
        self._token = token
        self._timeout = timeout

    def get(self, path: str, query: Mapping[str, str | None] | None = None) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self.request("POST", path, body=body or {})

    def put(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PUT", path, body=body)

    def patch(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PATCH", path, body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str | None] | None = None,
    ) -> Any:
        """The answer's JSON, or a CcgateError saying what went wrong and what to do."""
        target = self._base + path
        given = {k: v for k, v in (query or {}).items() if v is not None}
        if given:
            target += "?" + urlencode(given)
        payload = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        status, raw = self._send(method, target, payload, headers)
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if 200 <= status < 300 and data is not None:
            return data
        raise self._error(status, data)

    def _send(self, method: str, target: str, payload: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read(MAX_ANSWER_BYTES)
        except (OSError, http.client.HTTPException) as error:
            raise GatewayUnreachableError(
                f"cannot reach the gateway at {self.url}: {_describe(error)}",
                hint=f"check --url / {URL_ENV} and that `ccgate gateway serve` runs there",
            ) from None
        finally:
            conn.close()

    def _error(self, status: int, data: Any) -> CcgateError:
        message, hint = _envelope(data)
        if message is None:
            message = f"{self.url} answered HTTP {status} with something that is not ccgate's admin API"
            hint = f"check that --url / {URL_ENV} points at a ccgate gateway (its base URL, without /admin)"
        if status == 401:
            return AuthenticationError(
                message, hint=f"check the admin token ({TOKEN_ENV} or --token-file); it may be wrong or revoked"
            )
        if status == 403:
            return PermissionDeniedError(message, hint=hint or "use a token with the admin role")
        if status == 404:
            return NotFoundError(message, hint=hint)
        if status in (400, 413, 422):
            return InvalidRequestError(message, hint=hint)
        return GatewayAnswerError(message, status=status, hint=hint)


def _envelope(data: Any) -> tuple[str | None, str | None]:
    """(message, hint) from the admin API's error envelope, without the "ccgate: " and "(hint)" decorations."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None, None
    message: str = error["message"].removeprefix("ccgate: ")
    hint = error.get("hint") if isinstance(error.get("hint"), str) else None
    if hint:
        message = message.removesuffix(f" ({hint})")
    return message, hint


def _describe(error: BaseException) -> str:
    if isinstance(error, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed ({error.reason or error})"
    return str(error) or error.__class__.__name__
