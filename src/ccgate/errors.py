"""One exception hierarchy: each error knows its HTTP status, Anthropic error type and what to do about it."""

from __future__ import annotations

from typing import Any, ClassVar


class CcgateError(Exception):
    """Root of every error ccgate raises on purpose.

    The servers turn it into Anthropic's error envelope; the CLI prints one line plus the hint and exits 1.
    """

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"
    # Errors that a retry cannot fix tell Claude Code to stop (it retries 401/429 for minutes otherwise).
    should_retry: ClassVar[bool] = True

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def full_message(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def envelope(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.error_type, "message": f"ccgate: {self.full_message()}"}}

    def headers(self) -> dict[str, str]:
        return {} if self.should_retry else {"x-should-retry": "false"}


class ConfigError(CcgateError):
    """The config file or a setting in it is invalid."""

    error_type = "invalid_request_error"
    status = 500
    should_retry = False


class UserInputError(CcgateError):
    """A command-line argument or value the user typed is wrong."""

    error_type = "invalid_request_error"
    status = 400
    should_retry = False


class InvalidRequestError(CcgateError):
    """The client sent a request ccgate cannot read (malformed JSON, missing fields)."""

    status = 400
    error_type = "invalid_request_error"
    should_retry = False


class AuthenticationError(CcgateError):
    """The request lacks the local token (sidecar) or a valid virtual key (gateway)."""

    status = 401
    error_type = "authentication_error"
    should_retry = False


class PermissionDeniedError(CcgateError):
    """The request came through a foreign Host header or asks for something not allowed."""

    status = 403
    error_type = "permission_error"
    should_retry = False


class NotFoundError(CcgateError):
    """The path or the named thing does not exist."""

    status = 404
    error_type = "not_found_error"
    should_retry = False


class RequestTooLargeError(CcgateError):
    """The request body exceeds the configured maximum."""

    status = 413
    error_type = "request_too_large"
    should_retry = False


class BudgetExceededError(CcgateError):
    """A budget's spend has reached its limit; 402 makes Claude Code stop and show the message."""

    status = 402
    error_type = "billing_error"
    should_retry = False


class RateLimitedError(CcgateError):
    """A rate limit is reached; the client may retry after `retry_after` seconds."""

    status = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class UnpricedModelError(CcgateError):
    """A budget applies but the routed model has no known price, so its cost cannot be bounded."""

    status = 402
    error_type = "billing_error"
    should_retry = False


class UpstreamError(CcgateError):
    """The provider could not be reached or answered with something unusable."""

    status = 502
    error_type = "api_error"


class UpstreamTimeoutError(UpstreamError):
    """The provider did not answer in time."""

    status = 504
    error_type = "timeout_error"


class SidecarError(CcgateError):
    """The local sidecar could not be started or reached."""

    status = 503
    error_type = "overloaded_error"


class LedgerError(CcgateError):
    """The ledger database could not be opened, migrated or read."""

    status = 500
    error_type = "api_error"
    should_retry = False


class SecretStoreError(CcgateError):
    """The keyring (or its file fallback) could not be read or written."""

    status = 500
    error_type = "api_error"
    should_retry = False
