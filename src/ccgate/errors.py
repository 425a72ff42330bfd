"""One exception hierarchy: each error knows its HTTP status, its error type and what to do about it.

    CcgateError                    anything ccgate raises on purpose (500 api_error unless a subclass says)
    ├── ClientInputError           the caller's request or command is wrong: the same input fails the same way
    │   ├── InvalidRequestError    400  a request body ccgate cannot read (malformed JSON, missing fields)
    │   ├── UserInputError         400  a command-line argument or value
    │   ├── NotFoundError          404  no such path or thing
    │   └── RequestTooLargeError   413  a body past the configured maximum
    ├── RefusedError               a readable request ccgate will not forward: who asks, for what, at what cost
    │   ├── AuthenticationError    401  no local token (sidecar), no valid virtual key (gateway)
    │   ├── PermissionDeniedError  403  a foreign Host header, something not allowed
    │   ├── BudgetExceededError    402  a budget is spent (or fully reserved)
    │   ├── UnpricedModelError     402  a budget applies and the model has no price to bound its cost
    │   └── RateLimitedError       429  a rate limit; retry after `retry_after` seconds
    ├── UpstreamError              502  the provider could not be reached or answered unusably
    │   └── UpstreamTimeoutError   504  the provider did not answer in time
    └── LocalError                 this machine: a file, a process or the keyring; the operator fixes it
        ├── ConfigError            500  the config file or a setting in it
        ├── SidecarError           503  the local sidecar could not be started or reached
        ├── LedgerError            500  the ledger database could not be opened, migrated or read
        └── SecretStoreError       500  the keyring (or its file fallback)

The middle layers carry no status of their own: each leaf keeps its status, type and `should_retry`. How an
error is written on the wire (Anthropic's envelope for the proxy, another for an admin API) is the HTTP
layer's business (`ccgate.wire.envelope`); the CLI prints `full_message()` and the hint.
"""

from __future__ import annotations

from typing import ClassVar


class CcgateError(Exception):
    """Root of every error ccgate raises on purpose.

    The servers turn it into an error response; the CLI prints one line plus the hint and exits 1.
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


# ---- client input -----------------------------------------------------------------------------------------


class ClientInputError(CcgateError):
    """The caller sent or typed something ccgate cannot use; sending it again fails the same way."""

    status = 400
    error_type = "invalid_request_error"
    should_retry = False


class InvalidRequestError(ClientInputError):
    """The client sent a request ccgate cannot read (malformed JSON, missing fields)."""

    status = 400
    error_type = "invalid_request_error"
    should_retry = False


class UserInputError(ClientInputError):
    """A command-line argument or value the user typed is wrong."""

    error_type = "invalid_request_error"
    status = 400
    should_retry = False


class NotFoundError(ClientInputError):
    """The path or the named thing does not exist."""

    status = 404
    error_type = "not_found_error"
    should_retry = False


class RequestTooLargeError(ClientInputError):
    """The request body exceeds the configured maximum."""

    status = 413
    error_type = "request_too_large"
    should_retry = False


# ---- refused ----------------------------------------------------------------------------------------------


class RefusedError(CcgateError):
    """A readable request that ccgate declines: an unknown caller, something not allowed, or a limit reached.

    An `Admission` refuses with the spend-related ones (budget, unpriced, rate limit, not allowed).
    """

    status = 403
    error_type = "permission_error"
    should_retry = False


class AuthenticationError(RefusedError):
    """The request lacks the local token (sidecar) or a valid virtual key (gateway)."""

    status = 401
    error_type = "authentication_error"
    should_retry = False


class PermissionDeniedError(RefusedError):
    """The request came through a foreign Host header or asks for something not allowed."""

    status = 403
    error_type = "permission_error"
    should_retry = False


class BudgetExceededError(RefusedError):
    """A budget's spend has reached its limit; 402 makes Claude Code stop and show the message."""

    status = 402
    error_type = "billing_error"
    should_retry = False


class UnpricedModelError(RefusedError):
    """A budget applies but the routed model has no known price, so its cost cannot be bounded."""

    status = 402
    error_type = "billing_error"
    should_retry = False


class RateLimitedError(RefusedError):
    """A rate limit is reached; the client may retry after `retry_after` seconds."""

    status = 429
    error_type = "rate_limit_error"
    should_retry = True

    def __init__(self, message: str, *, retry_after: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


# ---- upstream ---------------------------------------------------------------------------------------------


class UpstreamError(CcgateError):
    """The provider could not be reached or answered with something unusable.

    `ccgate.proxy.upstream` is the one place that turns the HTTP client's exceptions into these.
    """

    status = 502
    error_type = "api_error"


class UpstreamTimeoutError(UpstreamError):
    """The provider did not answer in time."""

    status = 504
    error_type = "timeout_error"


# ---- this machine -----------------------------------------------------------------------------------------


class LocalError(CcgateError):
    """Something on this machine failed: a file, a process, the keyring. Retrying the request will not help
    until the operator fixes it (the sidecar's own start-up problems are the exception: see SidecarError)."""

    status = 500
    error_type = "api_error"
    should_retry = False


class ConfigError(LocalError):
    """The config file or a setting in it is invalid."""

    error_type = "invalid_request_error"
    status = 500
    should_retry = False


class SidecarError(LocalError):
    """The local sidecar could not be started or reached."""

    status = 503
    error_type = "overloaded_error"
    should_retry = True


class LedgerError(LocalError):
    """The ledger database could not be opened, migrated or read."""

    status = 500
    error_type = "api_error"
    should_retry = False


class SecretStoreError(LocalError):
    """The keyring (or its file fallback) could not be read or written."""

    status = 500
    error_type = "api_error"
    should_retry = False
