"""The developer side's client of an org gateway (`/healthz`, `/v1/me`, `/v1/usage`) on the standard library.

`http.client` keeps `ccgate login`, `whoami` and `sync` fast to start (no aiohttp import). Every failure is a
`CcgateError` whose message never holds the virtual key: the gateway unreachable, something that is not a
ccgate gateway, the key refused, or a batch the gateway could not take.
"""

from __future__ import annotations

import gzip
import http.client
import ipaddress
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ccgate.errors import AuthenticationError, CcgateError, UserInputError

DEFAULT_TIMEOUT_S = 15.0
MAX_ANSWER_BYTES = 16 * 1024 * 1024
GATEWAY_SERVICE = "ccgate-gateway"


class GatewayUnreachableError(CcgateError):
    """The gateway did not answer: refused, timed out, TLS failed, or the connection broke."""

    status = 503


class NotAGatewayError(CcgateError):
    """Something answered at the URL, but not a ccgate gateway."""

    status = 502
    should_retry = False


class KeyRefusedError(AuthenticationError):
    """The gateway refused the virtual key (unknown, revoked or expired): retrying cannot help."""


class GatewayAnswerError(CcgateError):
    """The gateway answered with an error that is neither about the key nor a transport failure (4xx, 5xx)."""

    def __init__(self, message: str, *, http_status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.http_status = http_status


@dataclass(frozen=True, slots=True)
class GatewayUrl:
    """A validated gateway base URL (no credentials, query or fragment; no trailing slash)."""

    url: str
    https: bool
    host: str
    port: int | None
    path: str

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def in_clear(self) -> bool:
        """A key sent here would cross a network unencrypted."""
        return not self.https and not self.loopback


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_gateway_url(text: str) -> GatewayUrl:
    """The URL as a user typed it, or a UserInputError that says what a gateway URL looks like."""
    example = "give the gateway's base URL, e.g. https://gateway.example.com"
    text = text.strip()
    parts = urlsplit(text)
    if "@" in parts.netloc:  # checked first: the URL is echoed below, its credentials must not be
        raise UserInputError("the gateway URL holds credentials (USER:PASSWORD@)", hint=example)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserInputError(f"{text!r} is not a gateway URL (http:// or https:// and a host)", hint=example)
    if parts.query or parts.fragment:
        raise UserInputError(f"{text!r} has a query or fragment", hint=example)
    if not text.isascii() or any(ch.isspace() or not ch.isprintable() for ch in text):
        raise UserInputError("the gateway URL has spaces, control or non-ASCII characters", hint=example)
    try:
        port = parts.port
    except ValueError:
        raise UserInputError(f"{text!r} has a bad port", hint=example) from None
    path = parts.path.rstrip("/")
    return GatewayUrl(f"{parts.scheme}://{parts.netloc}{path}", parts.scheme == "https", parts.hostname, port, path)


def check_key_text(key: str) -> str:
    """The key as typed, stripped; refused (without echoing it) when it cannot be a virtual key."""
    key = key.strip()
    if not key:
        raise UserInputError("no key given", hint="paste the virtual key your platform team gave you (sk-cg-...)")
    if not key.isascii() or any(ord(ch) < 33 or ord(ch) == 127 for ch in key):
        raise UserInputError(
            "the key has spaces, control or non-ASCII characters", hint="pass the key alone, on one line"
        )
    if len(key) > 512:
        raise UserInputError("the key is too long to be a virtual key", hint="pass the key alone, on one line")
    return key


def _describe(error: BaseException) -> str:
    if isinstance(error, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed ({error.reason or type(error).__name__})"
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__


def _redacted(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class GatewayClient:
    """One gateway and (optionally) one virtual key; each call is one HTTP request, no retries."""

    def __init__(self, url: GatewayUrl, key: str | None, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        self._key = key
        self._timeout = timeout
        # the last answer's Date header, for `doctor`'s clock-skew check
        self.last_date: str | None = None

    def health(self) -> dict[str, Any]:
        """`/healthz`, checked to be a ccgate gateway's (a sidecar or any other server is not)."""
        status, data = self._request("GET", "/healthz", None, {})
        if status != 200 or not isinstance(data, dict) or data.get("service") != GATEWAY_SERVICE:
            raise self._not_a_gateway(status)
        return data

    def me(self) -> dict[str, Any]:
        """Who the key is, its mode and budgets (`GET /v1/me`)."""
        status, data = self._request("GET", "/v1/me", None, self._auth())
        if status == 200 and isinstance(data, dict) and isinstance(data.get("mode"), str):
            return data
        raise self._error(status, data)

    def post_usage(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """One batch of finished ledger rows, gzip-compressed; the gateway's {"sent","known","rejected":[...]}."""
        body = gzip.compress(json.dumps({"rows": rows}, separators=(",", ":")).encode("utf-8"), compresslevel=6)
        headers = {**self._auth(), "Content-Type": "application/json", "Content-Encoding": "gzip"}
        status, data = self._request("POST", "/v1/usage", body, headers)
        if status == 200 and isinstance(data, dict) and isinstance(data.get("sent"), int):
            return data
        raise self._error(status, data)

    # ---- plumbing ---------------------------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"x-api-key": self._key} if self._key else {}

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
        url = self.url
        conn: http.client.HTTPConnection
        if url.https:
            context = ssl.create_default_context()
            conn = http.client.HTTPSConnection(url.host, url.port, timeout=self._timeout, context=context)
        else:
            conn = http.client.HTTPConnection(url.host, url.port, timeout=self._timeout)
        sent = {"Accept": "application/json", "User-Agent": "ccgate-sidecar", **headers}
        try:
            conn.request(method, url.path + path, body=body, headers=sent)
            response = conn.getresponse()
            raw = response.read(MAX_ANSWER_BYTES)
            status = response.status
            self.last_date = response.getheader("Date")
        except (OSError, http.client.HTTPException) as error:
            raise GatewayUnreachableError(
                f"cannot reach the gateway at {url.url}: {_describe(error)}",
                hint="check the URL and your network; `ccgate doctor` checks the gateway",
            ) from None
        finally:
            conn.close()
        try:
            return status, json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            return status, None

    def _not_a_gateway(self, status: int) -> NotAGatewayError:
        return NotAGatewayError(
            f"{self.url.url} is not a ccgate gateway (it answered HTTP {status} without a gateway's health check)",
            hint="check the URL your platform team gave you: the gateway's base URL, without /v1",
        )

    def _error(self, status: int, data: Any) -> CcgateError:
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str):
            return self._not_a_gateway(status)
        message = _redacted(message, self._key).removeprefix("ccgate: ")
        if status in (401, 403):
            return KeyRefusedError(
                f"the gateway refused the key: {message}",
                hint="ask your platform team for a valid key, then run `ccgate login` again",
            )
        return GatewayAnswerError(
            f"the gateway answered HTTP {status}: {message}",
            http_status=status,
            hint="try again later; `ccgate doctor` checks the gateway",
        )
