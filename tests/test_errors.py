"""The error tree: every class keeps its status, type and retry advice; the envelope is the HTTP layer's."""

from __future__ import annotations

import json

import pytest

from ccgate import errors
from ccgate.errors import (
    AuthenticationError,
    BudgetExceededError,
    CcgateError,
    ClientInputError,
    ConfigError,
    InvalidRequestError,
    LedgerError,
    LocalError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RefusedError,
    RequestTooLargeError,
    SecretStoreError,
    SidecarError,
    UnpricedModelError,
    UpstreamError,
    UpstreamTimeoutError,
    UserInputError,
)
from ccgate.wire.envelope import envelope, error_headers, sse_error

# (class, middle layer, status, error type, should_retry) as they were before the middle layers came
LEAVES = [
    (InvalidRequestError, ClientInputError, 400, "invalid_request_error", False),
    (UserInputError, ClientInputError, 400, "invalid_request_error", False),
    (NotFoundError, ClientInputError, 404, "not_found_error", False),
    (RequestTooLargeError, ClientInputError, 413, "request_too_large", False),
    (AuthenticationError, RefusedError, 401, "authentication_error", False),
    (PermissionDeniedError, RefusedError, 403, "permission_error", False),
    (BudgetExceededError, RefusedError, 402, "billing_error", False),
    (UnpricedModelError, RefusedError, 402, "billing_error", False),
    (RateLimitedError, RefusedError, 429, "rate_limit_error", True),
    (UpstreamError, CcgateError, 502, "api_error", True),
    (UpstreamTimeoutError, UpstreamError, 504, "timeout_error", True),
    (ConfigError, LocalError, 500, "invalid_request_error", False),
    (SidecarError, LocalError, 503, "overloaded_error", True),
    (LedgerError, LocalError, 500, "api_error", False),
    (SecretStoreError, LocalError, 500, "api_error", False),
]


@pytest.mark.parametrize(("cls", "layer", "status", "error_type", "should_retry"), LEAVES)
def test_each_error_keeps_its_status_type_and_retry_advice(
    cls: type[CcgateError], layer: type[CcgateError], status: int, error_type: str, should_retry: bool
) -> None:
    assert issubclass(cls, layer)
    assert (cls.status, cls.error_type, cls.should_retry) == (status, error_type, should_retry)


def test_the_docstring_draws_every_class_in_the_module() -> None:
    drawn = errors.__doc__ or ""
    classes = [name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, Exception)]
    assert classes and all(name in drawn for name in classes)


def test_the_envelope_carries_type_message_and_hint() -> None:
    error = BudgetExceededError("daily budget reached", hint="raise it")
    assert envelope(error) == {
        "type": "error",
        "error": {"type": "billing_error", "message": "ccgate: daily budget reached (raise it)"},
    }
    assert error_headers(error) == {"x-should-retry": "false"}
    assert error_headers(UpstreamError("down")) == {}


def test_a_rate_limit_says_when_to_come_back_instead_of_stopping_the_client() -> None:
    assert error_headers(RateLimitedError("slow down", retry_after=7)) == {"retry-after": "7"}


def test_an_sse_error_event_is_one_event_with_the_envelope() -> None:
    event = sse_error("api_error", "ccgate: upstream broke off")
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n") and event.count(b"\n\n") == 1
    payload = json.loads(event.split(b"data: ", 1)[1])
    assert payload == {"type": "error", "error": {"type": "api_error", "message": "ccgate: upstream broke off"}}
