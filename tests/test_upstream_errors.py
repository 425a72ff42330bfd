"""One place maps the HTTP client's exceptions: what each failure means at each stage of an exchange."""

from __future__ import annotations

import ast
import asyncio
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

import ccgate.proxy.engine
from ccgate.core.providers import BUILTIN
from ccgate.errors import UpstreamError, UpstreamTimeoutError
from ccgate.proxy.upstream import (
    FAILURES,
    Stage,
    StreamCut,
    UpstreamBroke,
    UpstreamSilent,
    upstream_error,
    upstream_errors,
)

# a base URL with credentials in it: no message may show them
SPEC = replace(BUILTIN["groq"], base_url="https://user:secret@groq.example/openai/v1")
REFUSED = aiohttp.ClientConnectionError("refused")
TIMEOUT = aiohttp.ServerTimeoutError("read timed out")


@pytest.mark.parametrize(
    ("exc", "stage", "limit", "kind", "message"),
    [
        (REFUSED, Stage.CONNECT, None, UpstreamError, "cannot reach upstream groq at {where}: ClientConnectionError"),
        (TIMEOUT, Stage.CONNECT, None, UpstreamTimeoutError, "upstream groq ({where}) did not answer in time"),
        (TimeoutError(), Stage.CONNECT, 5.0, UpstreamTimeoutError, "sent no response headers within 5 s"),
        (TimeoutError(), Stage.FIRST_EVENT, 2.5, UpstreamSilent, "sent no stream event within 2.5 s"),
        (TIMEOUT, Stage.FIRST_EVENT, 2.5, UpstreamSilent, "sent no stream event within 2.5 s"),
        (REFUSED, Stage.FIRST_EVENT, 2.5, UpstreamBroke, "({where}) broke off its reply: ClientConnectionError"),
        (TIMEOUT, Stage.BODY, None, UpstreamBroke, "({where}) broke off its reply: ServerTimeoutError"),
        (TIMEOUT, Stage.STREAM, 120.0, StreamCut, "upstream groq sent nothing for 120 s; the stream was ended"),
        (aiohttp.ClientPayloadError("cut"), Stage.STREAM, 120.0, StreamCut, "broke off the stream: ClientPayloadError"),
    ],
)
def test_each_stage_gives_a_failure_its_meaning(
    exc: BaseException, stage: Stage, limit: float | None, kind: type[UpstreamError], message: str
) -> None:
    assert isinstance(exc, FAILURES)
    error = upstream_error(exc, stage, SPEC, limit=limit)
    assert type(error) is kind
    assert message.format(where="https://groq.example") in error.message
    assert "secret" not in error.full_message()


def test_failures_before_the_client_saw_a_byte_allow_failover_and_a_running_stream_does_not() -> None:
    assert issubclass(UpstreamSilent, UpstreamBroke) and issubclass(UpstreamSilent, UpstreamTimeoutError)
    assert not issubclass(StreamCut, UpstreamBroke)


async def test_the_context_manager_counts_our_limit_only_when_its_timer_fired() -> None:
    timer = asyncio.timeout(None)  # never fires: the session's own timeout ended the wait
    with pytest.raises(UpstreamTimeoutError) as caught, upstream_errors(SPEC, Stage.CONNECT, limit=5.0, timer=timer):
        async with timer:
            raise aiohttp.ServerTimeoutError("connect timed out")
    assert "did not answer in time" in caught.value.message
    assert isinstance(caught.value.__cause__, aiohttp.ServerTimeoutError)
    fired = asyncio.timeout(0)
    with pytest.raises(UpstreamTimeoutError) as caught, upstream_errors(SPEC, Stage.CONNECT, limit=5.0, timer=fired):
        async with fired:
            await asyncio.sleep(1)
    assert "sent no response headers within 5 s" in caught.value.message


def test_other_exceptions_pass_through_unmapped() -> None:
    with pytest.raises(ValueError, match="not the network"), upstream_errors(SPEC, Stage.BODY):
        raise ValueError("not the network")


def test_only_the_upstream_module_names_the_http_clients_failures() -> None:
    """The proxy's other modules catch `FAILURES` (or go through `upstream_errors`), never the classes."""
    offenders = []
    for path in Path(ccgate.proxy.engine.__file__).parent.glob("*.py"):
        if path.name == "upstream.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = ast.unparse(node.type)
                if "ClientError" in caught or "TimeoutError" in caught:
                    offenders.append(f"{path.name}:{node.lineno}: except {caught}")
    assert offenders == []
